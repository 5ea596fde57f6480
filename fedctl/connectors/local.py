"""Local connector: the Connector verbs on this machine, with subprocesses and plain file copies.

It is what the ``local`` provider uses (``host.kind == "local"``), so a whole experiment can run
without SSH. Commands go through ``/bin/sh -c`` exactly as a remote shell would run them, so the same
quoted command strings work on both connectors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import BinaryIO, Callable, Mapping

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.errors import RemoteError
from fedctl.fsutil import atomic_writer
from fedctl.shell import export_prefix


class LocalConnector(Connector):
    """Run commands and copy files on this machine. ``connect``/``close`` have nothing to do."""

    def __init__(self, host: HostInfo) -> None:
        super().__init__(host)

    def connect(self) -> None:
        """Nothing to open; present for the interface."""

    def close(self) -> None:
        """Nothing to release; present for the interface."""

    def run(
        self,
        command: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``command`` with ``/bin/sh -c`` in a new process group; on timeout the whole group is
        killed (a shell's children too) and the result has ``exit_code=-1, timed_out=True``."""
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", export_prefix(self.host.environment) + command],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,  # own process group, so a timeout can kill what the shell started
        )
        timed_out = False
        try:
            out, err = proc.communicate(input=stdin, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            try:
                # a grandchild that left the group may still hold the pipes: do not wait forever
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
            code = -1
        return CommandResult(
            exit_code=code,
            stdout=(out or b"").decode("utf-8", "replace"),
            stderr=(err or b"").decode("utf-8", "replace"),
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )

    def _write_atomic(self, remote: str, mode: int, write: Callable[[BinaryIO], object]) -> None:
        remote = self.expand(remote)
        try:
            with atomic_writer(remote, mode) as fh:
                write(fh)
        except OSError as e:
            raise RemoteError(f"host {self.host.name}: cannot write {remote}: {e}") from e

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to ``local`` (a temp file renamed into place: never half a file)."""
        remote = self.expand(remote)
        try:
            with open(remote, "rb") as src, atomic_writer(local, mode=None) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as e:
            raise RemoteError(f"host {self.host.name}: cannot fetch {remote}: {e}") from e

    def home(self) -> str:
        """This user's home directory (no subprocess needed)."""
        return os.path.expanduser("~")

    def __repr__(self) -> str:
        return f"LocalConnector({self.host.name!r})"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    proc.wait()
