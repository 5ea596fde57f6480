"""The Connector interface: how fedctl runs commands and moves files on ONE host.

Small on purpose (pyinfra's connectors have the same few verbs): a new backend is one module.
Implementations: ``local`` (subprocesses on this machine) and ``ssh`` (paramiko). Should an optional
ability ever be needed, give it a capability set checked with a readable error rather than growing
the interface.
"""

from __future__ import annotations

import abc
import os
import shutil
import stat
from dataclasses import dataclass
from typing import BinaryIO, Callable, Mapping

from fedctl.errors import RemoteError
from fedctl.model import HostInfo  # noqa: F401 - re-exported: connectors take a HostInfo


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command on one host. ``exit_code`` is -1 when the command timed out."""

    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Connector(abc.ABC):
    """Run commands and transfer files on one host. Use as a context manager or call ``close``."""

    def __init__(self, host: HostInfo) -> None:
        self.host = host

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (idempotent). Raises ConnectError / HostKeyError."""

    @abc.abstractmethod
    def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``command`` with a POSIX shell on the host. Never raises for a non-zero exit.

        ``env`` is for non-secret values only (it may show in process listings); secrets travel as
        files written with ``put_bytes(mode=0o600)`` or on ``stdin``.
        """

    def put(self, local: str, remote: str, mode: int | None = None) -> None:
        """Copy a local file to ``remote`` atomically (parent directories must exist); ``mode``
        defaults to the local file's."""
        if mode is None:
            mode = stat.S_IMODE(os.stat(local).st_mode)
        with open(local, "rb") as src:
            self._write_atomic(remote, mode, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote`` atomically, created with ``mode`` (0600 for secrets)."""
        self._write_atomic(remote, mode, lambda dst: dst.write(data))

    def _write_atomic(self, remote: str, mode: int, write: Callable[[BinaryIO], object]) -> None:
        """What ``put``/``put_bytes`` stand on: create a temp file next to ``remote`` that has
        ``mode`` before its first byte, let ``write`` fill it, rename it over ``remote``.
        A connector implements this (or overrides ``put``/``put_bytes`` themselves, as fakes do)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write files")

    @abc.abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to the local path ``local``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    def home(self) -> str:
        """The host's ``$HOME`` (asked once, then cached): SFTP and Python paths do not expand ``~``."""
        cached: str | None = getattr(self, "_home_cache", None)
        if cached is None:
            res = self.run('printf "%s" "$HOME"', timeout=30)
            if not res.ok or not res.stdout.startswith("/"):
                raise RemoteError(
                    f"host {self.host.name}: cannot read $HOME (exit {res.exit_code}: {res.stderr.strip()[:200]})"
                )
            cached = res.stdout
            self._home_cache = cached
        return cached

    def expand(self, path: str) -> str:
        """Resolve a leading ``~`` or ``~/`` against the host's ``$HOME``; other paths are returned as-is."""
        if path == "~":
            return self.home()
        if path.startswith("~/"):
            return self.home().rstrip("/") + path[1:]
        return path

    def __enter__(self) -> "Connector":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
