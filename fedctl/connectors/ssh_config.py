"""Where the SSH connector connects: a host alias resolved into ``Target`` hops, as ``ssh alias`` would.

What it honours, in order of precedence: the inventory (``HostInfo``), then ``~/.ssh/config`` (HostName,
User, Port, IdentityFile, ProxyJump, ProxyCommand), then OpenSSH defaults.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import paramiko

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
        # ssh skips an IdentityFile of ssh_config that does not exist; paramiko would fail on it
        keys = tuple(k for k in (os.path.expanduser(k) for k in cfg.get("identityfile", [])) if os.path.exists(k))
    return Target(
        alias=alias,
        hostname=cfg.get("hostname", alias),
        port=int(port or cfg.get("port", 22)),
        user=user or cfg.get("user") or _local_user(),
        key_files=keys,
        proxy_jump=jumps,
        proxy_command=pcmd,
    )


def jump_hops(target: Target, ssh_config: str | None = "~/.ssh/config") -> list[Target]:
    """``target``'s ProxyJump hosts, outermost first, each resolved as a host of its own (``ssh_config``
    may give a jump host its own user, port, keys or ProxyCommand)."""
    return [resolve_target(a, u, p, ssh_config=ssh_config)
            for u, a, p in (_parse_jump(s) for s in target.proxy_jump)]


def _local_user() -> str:
    import getpass

    return getpass.getuser()
