"""Every error fedctl raises on purpose, and the exit codes they map to.

The CLI has one error boundary (``fedctl.cli.app``) that turns a FedctlError into a clear message and
its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Iterable, Sequence


class ExitCode(IntEnum):
    """Process exit codes, kept in one place (httpie's habit)."""

    OK = 0
    ERROR = 1  # generic failure of an operation (a host failed, a run failed)
    USAGE = 2  # bad input: config, inventory, flags
    HOSTS = 3  # one or more hosts failed / unreachable
    LOCKED = 4  # another fedctl holds the state lock
    HOST_KEY = 5  # a host key changed: possible man-in-the-middle
    NOT_BUILT = 6  # the feature is not built yet
    ABORTED = 130  # Ctrl-C (a declined confirmation is ERROR: the command did not do its job)


class FedctlError(Exception):
    """Base of every expected fedctl failure. ``hint`` is an optional next step for the user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class ConfigError(FedctlError):
    """A YAML file or a ``--set`` override is invalid. Names the file, the key path and what is valid."""

    exit_code = ExitCode.USAGE

    def __init__(
        self,
        file: str | None,
        key_path: str | Sequence[str | int] | None,
        problem: str,
        valid: Iterable[str] | str | None = None,
    ) -> None:
        if key_path is not None and not isinstance(key_path, str):
            key_path = format_key_path(key_path)
        self.file = file
        self.key_path = key_path or None
        self.problem = problem
        if valid is not None and not isinstance(valid, str):
            valid = ", ".join(str(v) for v in valid)
        self.valid = valid
        where = file or "<config>"
        if self.key_path:
            where = f"{where}: {self.key_path}"
        msg = f"{where}: {problem}"
        if valid:
            msg += f" (valid: {valid})"
        super().__init__(msg)


class Declined(FedctlError):
    """The user answered no to a confirmation: nothing was changed."""

    exit_code = ExitCode.ERROR


class UsageError(FedctlError):
    """A command was called in a way that cannot work (missing state, conflicting flags)."""

    exit_code = ExitCode.USAGE


class PlanError(FedctlError):
    """The plan cannot be made (too few hosts for the clients asked for, no server host)."""

    exit_code = ExitCode.USAGE


class StateLockedError(FedctlError):
    """Another fedctl process holds ``.fedctl/lock``."""

    exit_code = ExitCode.LOCKED


class StateError(FedctlError):
    """The state directory is missing or unreadable."""

    exit_code = ExitCode.USAGE


class ConnectError(FedctlError):
    """Could not connect or authenticate to a host."""

    exit_code = ExitCode.HOSTS


class HostKeyError(ConnectError):
    """A host presented a key different from the pinned one (or an unknown key under ``strict``)."""

    exit_code = ExitCode.HOST_KEY


class RemoteError(FedctlError):
    """A remote command or transfer failed."""

    exit_code = ExitCode.HOSTS


class HostsFailed(FedctlError):
    """An operation failed on one or more hosts; the per-host table was already printed.

    With ``host_key=True`` (a host presented a changed or unknown key) it exits like a
    HostKeyError: a possible man-in-the-middle must not read as an ordinary host failure."""

    exit_code = ExitCode.HOSTS

    def __init__(self, message: str, hint: str | None = None, host_key: bool = False) -> None:
        super().__init__(message, hint)
        if host_key:
            self.exit_code = ExitCode.HOST_KEY


class PayloadError(FedctlError):
    """A payload manifest is invalid or a payload process failed to start."""

    exit_code = ExitCode.USAGE


class NotBuiltError(FedctlError):
    """A feature that is announced but not built. Says so plainly instead of pretending."""

    exit_code = ExitCode.NOT_BUILT


def format_key_path(parts: Sequence[str | int]) -> str:
    """``("hosts", 2, "port") -> "hosts[2].port"``: the form every error message uses."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out
