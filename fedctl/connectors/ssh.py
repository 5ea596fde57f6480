"""SSH connector over paramiko: one persistent connection per host, verified host keys, SFTP transfers.

Where it connects is resolved by ``ssh_config`` (the inventory over ``~/.ssh/config``, ProxyJump and
ProxyCommand included); ssh-agent and the default keys (``~/.ssh/id_*``) are tried too, as ``ssh``
would. Which host keys it trusts is ``hostkeys``'s job (``HostInfo.host_key_policy``: accept-new,
strict or off); how a started command's channel is read and timed out is ``ssh_channel``'s.

Only this module and those three import paramiko, and nothing imports them before a connector is
built, so ``import fedctl.connectors`` stays cheap.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import socket
import threading
import time
import uuid
from typing import BinaryIO, Callable, Mapping

import paramiko

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.connectors.hostkeys import (
    DEFAULT_KNOWN_HOSTS,
    POLICIES,
    KnownHosts,
    PinningPolicy,
    changed_key_error,
    host_entry,
)
from fedctl.connectors.ssh_channel import collect_result
from fedctl.connectors.ssh_config import Target, jump_hops, resolve_target
from fedctl.errors import ConnectError, HostKeyError, RemoteError
from fedctl.fsutil import atomic_writer
from fedctl.shell import ENV_NAME, export_prefix

log = logging.getLogger("fedctl.ssh")



class SSHConnector(Connector):
    """Run commands and move files on one host over a single persistent paramiko connection.

    ``known_hosts`` is fedctl's own pin file (default ``.fedctl/known_hosts``). ``HostInfo.extra`` may
    carry ``proxy_jump`` / ``proxy_command`` to override ssh_config per host. Thread-safe for use
    from several threads (each command gets its own channel); connect is serialised.
    """

    def __init__(
        self,
        host: HostInfo,
        known_hosts: str | None = None,
        *,
        connect_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        ssh_config: str | None = "~/.ssh/config",
        user_known_hosts: str | None = "~/.ssh/known_hosts",
        keepalive: int = 15,
    ) -> None:
        super().__init__(host)
        if host.host_key_policy not in POLICIES:
            raise ConnectError(
                f"host {host.name}: unknown host_key_policy {host.host_key_policy!r} (valid: {', '.join(POLICIES)})"
            )
        self.known = KnownHosts(known_hosts or DEFAULT_KNOWN_HOSTS, user_known_hosts)
        self.connect_timeout = connect_timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.ssh_config = ssh_config
        self.keepalive = keepalive
        self.connects = 0  # how many connections were actually opened (tests assert reuse)
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._hops: list[paramiko.SSHClient] = []  # jump-host clients, outermost first
        self._sftp: paramiko.SFTPClient | None = None
        self._sleep: Callable[[float], None] = time.sleep

    # ---- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def target(self) -> Target:
        """Where this connector goes, after merging the inventory over ssh_config."""
        h = self.host
        return resolve_target(
            h.address,
            user=h.user,
            port=h.port,
            identity_file=h.identity_file,
            proxy_jump=h.extra.get("proxy_jump"),
            proxy_command=h.extra.get("proxy_command"),
            ssh_config=self.ssh_config,
        )

    def connect(self) -> None:
        """Open the connection if it is not open. Retries network errors with jittered backoff;
        authentication and host-key failures are raised at once (retrying cannot fix them)."""
        with self._lock:
            if self.connected:
                return
            self._close_quietly()
            target = self.target()
            self._check_key_files(target)
            password = self._password()
            attempt = 0
            while True:
                try:
                    self._open(target, password)
                    self.connects += 1
                    return
                except (HostKeyError, ConnectError):
                    self._close_quietly()
                    raise
                except paramiko.AuthenticationException as e:
                    self._close_quietly()
                    raise ConnectError(
                        f"host {self.host.name}: authentication failed as {target.user!r} at"
                        f" {target.hostname}:{target.port}: {e}",
                        hint="check user, identity_file (or ssh-agent) and password_env in the inventory",
                    ) from e
                except (OSError, EOFError, paramiko.SSHException) as e:  # network-ish: worth retrying
                    self._close_quietly()
                    if attempt >= self.retries:
                        raise ConnectError(
                            f"host {self.host.name}: cannot connect to {target.hostname}:{target.port}"
                            f" after {attempt + 1} attempt(s): {_describe(e)}",
                            hint="is the host up and sshd listening? check address/port in the inventory",
                        ) from e
                    delay = self.backoff * (2**attempt) * random.uniform(0.5, 1.5)
                    log.debug("host %s: connect attempt %d failed (%s); retry in %.2fs",
                              self.host.name, attempt + 1, _describe(e), delay)
                    attempt += 1
                    self._sleep(delay)

    def _check_key_files(self, target: Target) -> None:
        """A key file the inventory names must be readable before any connect: paramiko would
        raise an OSError that looks like a network failure and is retried (a typo in
        ``identity_file`` was reported as "cannot connect ... after 3 attempt(s)")."""
        named = self.host.identity_file
        if not named:
            return  # ssh_config's IdentityFile entries that do not exist are skipped, as ssh does
        path = os.path.expanduser(named)
        why = None
        if not os.path.exists(path):
            why = "does not exist"
        elif not os.path.isfile(path):
            why = "is not a file"
        else:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                why = f"cannot be read ({e.strerror or e})"
        if why:
            raise ConnectError(
                f"host {self.host.name}: identity_file {named} {why}",
                hint="fix identity_file in the inventory (a private key file readable by you), or remove it"
                     " to use ssh-agent and ~/.ssh/config",
            )

    def _password(self) -> str | None:
        name = self.host.password_env
        if not name:
            return None
        value = os.environ.get(name)
        if value is None:
            raise ConnectError(
                f"host {self.host.name}: password_env names the environment variable {name}, but it is not set",
                hint=f"export {name}=... before running fedctl (the password itself never goes in a file)",
            )
        return value

    def _open(self, target: Target, password: str | None) -> None:
        sock: object | None = None
        if target.proxy_jump:
            # Each hop connects through a direct-tcpip channel of the previous one (ssh -J a,b host).
            prev: paramiko.SSHClient | None = None
            for hop in jump_hops(target, self.ssh_config):
                hop_sock = self._tunnel(prev, hop) if prev is not None else None
                if hop_sock is None and hop.proxy_command:
                    hop_sock = paramiko.ProxyCommand(hop.proxy_command)
                prev = self._client_for(hop, None, hop_sock)
                self._hops.append(prev)
            sock = self._tunnel(prev, target)
        elif target.proxy_command:
            sock = paramiko.ProxyCommand(target.proxy_command)
        self._client = self._client_for(target, password, sock)

    def _tunnel(self, via: paramiko.SSHClient | None, to: Target) -> paramiko.Channel:
        assert via is not None
        transport = via.get_transport()
        assert transport is not None
        return transport.open_channel(
            "direct-tcpip", (to.hostname, to.port), ("127.0.0.1", 0), timeout=self.connect_timeout
        )

    def _client_for(self, target: Target, password: str | None, sock: object | None) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        policy = self.host.host_key_policy
        if policy != "off":
            self.known.load_into(client, host_entry(target.hostname, target.port))
        client.set_missing_host_key_policy(PinningPolicy(policy, self.known, self.host.name, target.port))
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                password=password,
                key_filename=list(target.key_files) or None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=True,
                look_for_keys=True,
                sock=sock,  # type: ignore[arg-type]
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            entry = host_entry(target.hostname, target.port)  # this hop's entry (maybe a jump host)
            raise changed_key_error(self.host.name, entry, e.key, self.known.file_pinning(entry)) from e
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        if self.keepalive:
            transport.set_keepalive(self.keepalive)
        return client

    def _close_quietly(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError, paramiko.SSHException) as e:
                log.debug("host %s: closing sftp: %s", self.host.name, e)
            self._sftp = None
        clients = ([self._client] if self._client else []) + list(reversed(self._hops))
        for c in clients:
            c.close()  # paramiko's close does not raise on a dead transport
        self._client = None
        self._hops = []

    def close(self) -> None:
        """Close the SFTP session, the connection and any jump-host connections (idempotent)."""
        with self._lock:
            self._close_quietly()

    def _transport(self) -> paramiko.Transport:
        self.connect()
        assert self._client is not None
        t = self._client.get_transport()
        assert t is not None
        return t

    # ---- commands --------------------------------------------------------------------------------

    def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``command`` via the remote user's shell. On timeout the command's processes are killed,
        the channel is closed and the result has ``exit_code=-1, timed_out=True`` with the output so far."""
        marker = None
        if timeout is not None:
            # sshd refuses "signal" requests for root sessions (no privilege separation there), so a
            # timed-out command is found by a unique variable that all its descendants inherit.
            marker = uuid.uuid4().hex
            env = {**(env or {}), "FEDCTL_RUN_MARK": marker}
        result = self._exec(export_prefix(self.host.environment) + _with_env(command, env), timeout, stdin)
        if result.timed_out and marker:
            self._reap(marker)
        return result

    def _reap(self, marker: str) -> None:
        """Kill every process whose environment carries ``marker`` (Linux /proc; best effort)."""
        needle = shlex.quote(f"FEDCTL_RUN_MARK={marker}")
        script = (
            f"for f in $(grep -l -s -a -F {needle} /proc/[0-9]*/environ); do"
            " p=${f#/proc/}; kill -KILL ${p%/environ} 2>/dev/null; done; true"
        )
        try:
            res = self._exec(script, 15.0, None)
            if not res.ok:
                log.debug("host %s: reaping timed-out command: %s", self.host.name, res.stderr.strip())
        except RemoteError as e:
            log.debug("host %s: reaping timed-out command: %s", self.host.name, e)

    def _exec(self, full: str, timeout: float | None, stdin: bytes | None) -> CommandResult:
        start = time.monotonic()
        try:
            chan = self._transport().open_session(timeout=self.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise RemoteError(f"host {self.host.name}: cannot open a session: {_describe(e)}") from e
        try:
            try:
                chan.exec_command(full)
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise RemoteError(f"host {self.host.name}: cannot start the command: {_describe(e)}") from e
            return collect_result(chan, stdin, start, timeout)
        finally:
            chan.close()

    # ---- files -----------------------------------------------------------------------------------

    def sftp(self) -> paramiko.SFTPClient:
        """The one SFTP session of this connection, opened on first use."""
        with self._lock:
            transport = self._transport()
            if self._sftp is None or self._sftp.get_channel() is None or self._sftp.get_channel().closed:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
                if self._sftp is None:
                    raise RemoteError(f"host {self.host.name}: the server refused an SFTP session")
            return self._sftp

    def _write_atomic(self, remote: str, mode: int, write: Callable[[BinaryIO], object]) -> None:
        remote = self.expand(remote)
        directory, base = os.path.split(remote)
        tmp = os.path.join(directory, f".{base}.fedctl-tmp-{uuid.uuid4().hex[:12]}")
        sftp = self.sftp()
        try:
            with sftp.open(tmp, "wb") as fh:
                # chmod before the first byte: a secret is never readable under the default umask.
                fh.chmod(mode)
                fh.set_pipelined(True)
                write(fh)
            try:
                sftp.posix_rename(tmp, remote)
            except OSError:  # server without posix-rename@openssh.com: plain rename cannot overwrite
                try:
                    sftp.remove(remote)
                except FileNotFoundError:
                    pass
                sftp.rename(tmp, remote)
        except (OSError, paramiko.SSHException) as e:
            try:
                sftp.remove(tmp)
            except (OSError, paramiko.SSHException):
                pass  # the temp file may not exist; the original error is what matters
            raise RemoteError(f"host {self.host.name}: cannot write {remote}: {_describe(e)}") from e

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to ``local`` (written to a temp name, then renamed into place)."""
        remote = self.expand(remote)
        try:
            with atomic_writer(local, mode=None) as fh:
                size = self.sftp().getfo(remote, fh)
                if fh.tell() != size:  # what paramiko's own get() checks
                    raise OSError(f"size mismatch: {fh.tell()} bytes written, {size} received")
        except (OSError, paramiko.SSHException) as e:
            raise RemoteError(f"host {self.host.name}: cannot fetch {remote}: {_describe(e)}") from e

    def __repr__(self) -> str:
        return f"SSHConnector({self.host.name!r}, {self.host.address!r})"


# --------------------------------------------------------------------------------------------------
# helpers


def _with_env(command: str, env: Mapping[str, str] | None) -> str:
    """Prefix ``export K=V;`` so env works whatever the server's AcceptEnv says."""
    if not env:
        return command
    parts = []
    for k, v in env.items():
        if not ENV_NAME.fullmatch(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        parts.append(f"export {k}={shlex.quote(str(v))};")
    return " ".join(parts) + " " + command


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused" if all(
            isinstance(x, ConnectionRefusedError) or getattr(x, "errno", None) == 111 for x in e.errors.values()
        ) else str(e)
    text = str(e) or type(e).__name__
    return text
