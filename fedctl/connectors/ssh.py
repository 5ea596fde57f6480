"""SSH connector over paramiko: one persistent connection per host, verified host keys, SFTP transfers.

What it honours, in order of precedence: the inventory (``HostInfo``), then ``~/.ssh/config`` (HostName,
User, Port, IdentityFile, ProxyJump, ProxyCommand), then OpenSSH defaults. ssh-agent and the default
keys (``~/.ssh/id_*``) are tried too, as ``ssh`` would.

Host keys (``HostInfo.host_key_policy``):
  accept-new  keys are checked against ``~/.ssh/known_hosts`` (read only) and fedctl's own file; an
              unknown key is pinned into fedctl's file (trust on first use); a changed key is an error.
  strict      an unknown key is an error too.
  off         anything is accepted, with a warning on every connect.

Only this module imports paramiko, so ``import fedctl.connectors`` stays cheap.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import random
import re
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, Mapping

import paramiko

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.errors import ConnectError, HostKeyError, RemoteError

log = logging.getLogger("fedctl.ssh")

POLICIES = ("accept-new", "strict", "off")
DEFAULT_KNOWN_HOSTS = os.path.join(".fedctl", "known_hosts")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHUNK = 32768


# --------------------------------------------------------------------------------------------------
# host keys


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint, what users compare against ``ssh-keygen -lf``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(hostname: str, port: int) -> str:
    """The name a known_hosts file uses for a host: ``addr`` on port 22, ``[addr]:port`` otherwise."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


# One lock per known_hosts path for threads of this process; fcntl.flock covers other processes.
_PIN_LOCKS: dict[str, threading.Lock] = {}
_PIN_LOCKS_GUARD = threading.Lock()


def _thread_lock_for(path: str) -> threading.Lock:
    with _PIN_LOCKS_GUARD:
        return _PIN_LOCKS.setdefault(path, threading.Lock())


_HOST_KEYS_CACHE: dict[str, tuple[tuple[int, int], paramiko.HostKeys]] = {}
_HOST_KEYS_GUARD = threading.Lock()


def _load_host_keys(path: str, cached: bool = True) -> paramiko.HostKeys:
    """Parse a known_hosts file. Cached by (mtime, size): every connector of a 50-host fleet reads the
    same files, and parsing them 50 times is quadratic. ``cached=False`` re-reads (under the pin lock)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return paramiko.HostKeys()
    sig = (st.st_mtime_ns, st.st_size)
    with _HOST_KEYS_GUARD:
        hit = _HOST_KEYS_CACHE.get(path)
    if cached and hit and hit[0] == sig:
        return hit[1]
    keys = paramiko.HostKeys()
    try:
        keys.load(path)
    except (OSError, paramiko.SSHException) as e:  # a corrupt line must not pass silently
        raise ConnectError(f"cannot read known_hosts file {path}: {e}") from e
    with _HOST_KEYS_GUARD:
        _HOST_KEYS_CACHE[path] = (sig, keys)
    return keys


class KnownHosts:
    """The two known_hosts files fedctl consults: the user's (read only) and fedctl's own (pins)."""

    def __init__(self, pin_file: str, user_file: str | None) -> None:
        self.pin_file = os.path.abspath(os.path.expanduser(pin_file))
        self.user_file = os.path.expanduser(user_file) if user_file else None

    def load_into(self, client: paramiko.SSHClient, entry: str) -> None:
        """Give paramiko the known keys of ``entry``, so it prefers a known key type and detects a
        changed key itself (BadHostKeyException); unknown keys go to ``_PinningPolicy``."""
        known = client.get_host_keys()
        for path in (self.pin_file, self.user_file):  # the user's file last: it wins on a conflict
            if not path:
                continue
            found = _load_host_keys(path).lookup(entry)
            for ktype, key in (found or {}).items():
                known.add(entry, ktype, key)

    def file_pinning(self, entry: str) -> str:
        """Which file holds the key for ``entry`` (the one the user must edit), fedctl's by default."""
        if self.user_file and _load_host_keys(self.user_file).lookup(entry) is not None:
            return self.user_file
        return self.pin_file

    def pin(self, entry: str, key: paramiko.PKey, host_name: str) -> None:
        """Append ``entry``'s key to fedctl's file, unless another thread/process pinned one meanwhile.

        Under the lock the file is read again: the same key is fine, a different key is a HostKeyError
        (two parallel first connects seeing different keys is exactly what pinning must catch).
        """
        os.makedirs(os.path.dirname(self.pin_file), mode=0o700, exist_ok=True)
        with _thread_lock_for(self.pin_file):
            lock_fd = os.open(self.pin_file + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                pinned = _load_host_keys(self.pin_file, cached=False).lookup(entry)
                if pinned is not None and key.get_name() in pinned:
                    if pinned[key.get_name()] == key:
                        return
                    raise changed_key_error(host_name, entry, key, self.pin_file)
                line = f"{entry} {key.get_name()} {key.get_base64()}\n"
                fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                log.info("host %s: pinned %s key %s in %s", host_name, key.get_name(), fingerprint(key), self.pin_file)
            finally:
                os.close(lock_fd)  # closing releases the flock


def changed_key_error(host_name: str, entry: str, key: paramiko.PKey, file: str) -> HostKeyError:
    """The error for a key that differs from the pinned one, with the exact command that unpins it."""
    return HostKeyError(
        f"host {host_name} ({entry}) presented {key.get_name()} key {fingerprint(key)}, which differs from"
        f" the key pinned in {file}: this may be a man-in-the-middle attack, or the host was reinstalled",
        hint=f"if the change is expected, remove the old key and connect again: ssh-keygen -f {file} -R '{entry}'",
    )


class _PinningPolicy(paramiko.MissingHostKeyPolicy):
    """Decides about keys paramiko did not find in any known_hosts file (never blindly adds them)."""

    def __init__(self, policy: str, known: KnownHosts, host_name: str, port: int) -> None:
        self.policy = policy
        self.known = known
        self.host_name = host_name
        self.port = port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        # paramiko passes the known_hosts entry form already ("[addr]:port" when port != 22).
        entry = hostname
        if self.policy == "off":
            log.warning(
                "host %s (%s): host key NOT verified (host_key_policy: off); got %s %s",
                self.host_name, entry, key.get_name(), fingerprint(key),
            )
            return
        if self.policy == "strict":
            addr = entry[1:].split("]:")[0] if entry.startswith("[") else entry
            raise HostKeyError(
                f"host {self.host_name} ({entry}) is not in any known_hosts file (host_key_policy: strict);"
                f" it presented {key.get_name()} key {fingerprint(key)}",
                hint=(
                    f"check the fingerprint out of band, then add it: ssh-keyscan -p {self.port} -t"
                    f" {key.get_name()} {addr} >> {self.known.pin_file}  (or use host_key_policy: accept-new)"
                ),
            )
        self.known.pin(entry, key, self.host_name)


# --------------------------------------------------------------------------------------------------
# resolving where to connect


_SSH_CONFIG_CACHE: dict[str, tuple[float, paramiko.SSHConfig]] = {}
_SSH_CONFIG_GUARD = threading.Lock()


def _ssh_config(path: str | None) -> paramiko.SSHConfig:
    """Parsed ssh_config (cached by mtime: a 50-host fleet parses it once)."""
    if not path:
        return paramiko.SSHConfig()
    path = os.path.expanduser(path)
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return paramiko.SSHConfig()
    with _SSH_CONFIG_GUARD:
        hit = _SSH_CONFIG_CACHE.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
        cfg = paramiko.SSHConfig.from_path(path)
        _SSH_CONFIG_CACHE[path] = (mtime, cfg)
        return cfg


@dataclass(frozen=True)
class Target:
    """One hop, fully resolved: where to connect, as whom, with which keys, through what."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...] = ()
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``ssh://`` URL form) -> (user, host, port)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):]
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    if spec.startswith("["):  # [v6addr]:port
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    else:
        host = spec
    return user, host, port


def resolve_target(
    alias: str,
    user: str | None = None,
    port: int | None = None,
    identity_file: str | None = None,
    proxy_jump: str | None = None,
    proxy_command: str | None = None,
    ssh_config: str | None = "~/.ssh/config",
) -> Target:
    """Merge explicit values (the inventory) over ``ssh_config`` for ``alias``, as ``ssh alias`` would."""
    cfg = _ssh_config(ssh_config).lookup(alias)
    jumps_raw = proxy_jump if proxy_jump is not None else cfg.get("proxyjump")
    jumps: tuple[str, ...] = ()
    if jumps_raw and jumps_raw.strip().lower() != "none":
        jumps = tuple(j.strip() for j in jumps_raw.split(",") if j.strip())
    pcmd = proxy_command if proxy_command is not None else cfg.get("proxycommand")
    if pcmd and pcmd.strip().lower() == "none":
        pcmd = None
    keys: tuple[str, ...]
    if identity_file:
        keys = (os.path.expanduser(identity_file),)
    else:
        keys = tuple(os.path.expanduser(k) for k in cfg.get("identityfile", []))
    return Target(
        alias=alias,
        hostname=cfg.get("hostname", alias),
        port=int(port or cfg.get("port", 22)),
        user=user or cfg.get("user") or _local_user(),
        key_files=keys,
        proxy_jump=jumps,
        proxy_command=pcmd,
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()


# --------------------------------------------------------------------------------------------------
# the connector


class SSHConnector(Connector):
    """Run commands and move files on one host over a single persistent paramiko connection.

    ``known_hosts`` is fedctl's own pin file (default ``.fedctl/known_hosts``). ``HostInfo.extra`` may
    carry ``proxy_jump`` / ``proxy_command`` to override ssh_config per host. Thread-safe for use
    from several threads (each command gets its own channel); connect is serialised.
    """

    capabilities = frozenset({"sftp"})

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
            hops = [resolve_target(a, u, p, ssh_config=self.ssh_config)
                    for u, a, p in (_parse_jump(s) for s in target.proxy_jump)]
            for hop in hops:
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
        client.set_missing_host_key_policy(_PinningPolicy(policy, self.known, self.host.name, target.port))
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
        result = self._exec(_with_env(command, env), timeout, stdin)
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
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            try:
                chan.exec_command(full)
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise RemoteError(f"host {self.host.name}: cannot start the command: {_describe(e)}") from e
            # Separate readers for both streams (and a writer for stdin): a command that fills stderr
            # while we wait on stdout must not block on a full window.
            readers = [
                threading.Thread(target=_drain, args=(chan.recv, out), daemon=True),
                threading.Thread(target=_drain, args=(chan.recv_stderr, err), daemon=True),
            ]
            if stdin:
                readers.append(threading.Thread(target=_feed, args=(chan, stdin), daemon=True))
            else:
                chan.shutdown_write()
            for t in readers:
                t.start()
            deadline = None if timeout is None else start + timeout
            timed_out = False
            for t in readers:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    timed_out = True
                    break
            if not timed_out:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                timed_out = not chan.status_event.wait(left)
            if timed_out:
                _signal(chan, "KILL")  # ask sshd to kill the command (OpenSSH >= 7.9), then hang up
                chan.close()
                for t in readers:
                    t.join(1.0)
                code = -1
            else:
                code = chan.recv_exit_status()
        finally:
            chan.close()
        return CommandResult(
            exit_code=code,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )

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
        tmp = f"{local}.fedctl-tmp-{uuid.uuid4().hex[:12]}"
        try:
            self.sftp().get(remote, tmp)
            os.replace(tmp, local)
        except (OSError, paramiko.SSHException) as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
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
        if not _ENV_NAME.match(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        parts.append(f"export {k}={shlex.quote(str(v))};")
    return " ".join(parts) + " " + command


def _drain(recv: Callable[[int], bytes], sink: list[bytes]) -> None:
    try:
        while True:
            chunk = recv(_CHUNK)
            if not chunk:
                return
            sink.append(chunk)
    except (OSError, EOFError, paramiko.SSHException):
        return  # channel closed under us (timeout or dead connection): keep what we have


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as e:
        log.debug("stdin not fully sent: %s", e)  # the command may exit without reading stdin


def _signal(chan: paramiko.Channel, name: str) -> None:
    """Send an RFC 4254 ``signal`` request; paramiko has no API for it, and a timed-out command
    should not be left running on the host."""
    from paramiko.common import cMSG_CHANNEL_REQUEST

    try:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(name)
        chan.transport._send_user_message(m)  # type: ignore[union-attr]  # noqa: SLF001
    except (OSError, EOFError, paramiko.SSHException, AttributeError) as e:
        log.debug("signal %s not sent: %s", name, e)


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused" if all(
            isinstance(x, ConnectionRefusedError) or getattr(x, "errno", None) == 111 for x in e.errors.values()
        ) else str(e)
    text = str(e) or type(e).__name__
    return text
