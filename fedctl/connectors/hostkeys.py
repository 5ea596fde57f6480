"""Host-key trust for the SSH connector: which keys a host may present, and pinning new ones.

Policies (``HostInfo.host_key_policy``):
  accept-new  keys are checked against ``~/.ssh/known_hosts`` (read only) and fedctl's own file; an
              unknown key is pinned into fedctl's file (trust on first use); a changed key is an error.
  strict      an unknown key is an error too.
  off         anything is accepted, with a warning on every connect.

A changed key is a HostKeyError whose hint is the exact ``ssh-keygen -R`` that unpins it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import threading

import paramiko

from fedctl.errors import ConnectError, HostKeyError

log = logging.getLogger("fedctl.ssh")  # the connector's logger: one name to filter for all of SSH

POLICIES = ("accept-new", "strict", "off")
DEFAULT_KNOWN_HOSTS = os.path.join(".fedctl", "known_hosts")


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
        changed key itself (BadHostKeyException); unknown keys go to ``PinningPolicy``."""
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


class PinningPolicy(paramiko.MissingHostKeyPolicy):
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
