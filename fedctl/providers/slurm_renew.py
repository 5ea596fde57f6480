"""A fedctl Slurm run whose job ended under it: its files read from the login node, a new allocation.

A job ends without fedctl (its time limit, preemption, a node failure, someone's ``scancel``); its
nodes can then no longer be reached through job steps, but every file the run wrote is still on the
cluster's shared filesystem, under the run folder on the login node. So:

- ``LoginFilesConnector`` reads one host's files on the login node (this machine, or
  ``slurm.login`` over SSH): what teardown collects the results through (``SlurmProvider.files_connector``).
  It fetches only files that lie strictly under the host's own workdir (``<run folder>/<host>``),
  symbolic links resolved on the login node, and writes nothing.
- ``set_aside_job_files`` moves the ended job's agent files (its step requests, their status and
  logs, ``agent.json``) into ``<run folder>/job-<id>/`` before a new allocation starts its agent
  there: a new agent would otherwise start every step the old one was asked for again.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Mapping, Sequence

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.errors import RemoteError
from fedctl.model import is_strictly_under
from fedctl.providers.base import ProviderError

if TYPE_CHECKING:
    from fedctl.providers.slurm_jobs import SlurmCli

#: what a job's agent leaves in the run folder (``slurm_agent.py``): set aside for a new allocation
AGENT_FILES = ("steps", "status", "logs", "agent.json", "stop")


class LoginFilesConnector(Connector):
    """``host``'s files, read on the login node (``login``: a connector to it, or one for this
    machine): for a host whose node is gone with its job. Commands run on the login node."""

    def __init__(self, host: HostInfo, login: Connector) -> None:
        super().__init__(host)
        self.login = login
        if not host.workdir.startswith("/"):
            raise RemoteError(f"host {host.name}: its workdir {host.workdir!r} is not the run folder's (provision first)")
        self.root = posixpath.normpath(host.workdir)

    def connect(self) -> None:
        """Connect to the login node (idempotent)."""
        self.login.connect()

    def run(self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` on the login node (fedctl's own read-only commands: ls, test, cat)."""
        return self.login.run(command, timeout=timeout, env=env, stdin=stdin)

    def _resolved(self, path: str) -> str | None:
        """``path`` with every symbolic link resolved on the login node; None when it does not exist."""
        res = self.login.run(f"readlink -e -- {shlex.quote(path)}", timeout=30)
        out = res.stdout.rstrip("\n")
        return out if res.ok and out.startswith("/") else None

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to ``local``, only when it lies strictly under the host's workdir (both
        with their links resolved on the login node): the results of the run, nothing else."""
        path = posixpath.normpath(self.expand(remote))
        root = self._resolved(self.root)
        real = self._resolved(path)
        if root is None or real is None or not is_strictly_under(path, self.root) or not is_strictly_under(real, root):
            raise RemoteError(f"host {self.host.name}: refused to fetch {remote}: it does not lie under the host's "
                              f"run folder {self.root} on the login node (symbolic links resolved)")
        self.login.get(path, local)

    def close(self) -> None:
        """Close the login node's connection (this connector's own)."""
        self.login.close()

    def home(self) -> str:
        """The login node's ``$HOME`` (the shared home the run folder is in)."""
        return self.login.home()


def files_connector(host: HostInfo, login: Connector | None) -> LoginFilesConnector:
    """The login-node reader of ``host``'s files: through ``login`` (SSH), or on this machine."""
    if login is None:
        from fedctl.connectors.local import LocalConnector

        login = LocalConnector(HostInfo(name="slurm-login", address="localhost", kind="local", workdir=host.workdir))
    return LoginFilesConnector(host, login)


#: set the agent files aside: ``$R`` the run folder (with fedctl's mark), ``$D`` the folder for them
_SET_ASIDE_SH = (
    '[ -d "$R" ] && [ ! -L "$R" ] && [ -f "$R/@MARKER@" ] || { echo "not-ours"; exit 0; }\n'
    'mkdir -p -- "$D" || exit 1\n'
    'for f in @FILES@; do [ -e "$R/$f" ] || [ -L "$R/$f" ] || continue; '
    'if [ -e "$D/$f" ]; then mv -- "$R/$f" "$D/$f.$$" || exit 1; else mv -- "$R/$f" "$D/$f" || exit 1; fi; done\n'
)


def set_aside_job_files(cli: "SlurmCli", run_dir: PurePosixPath, old_jobs: Sequence[str], marker: str) -> None:
    """Move the ended job's agent files out of the way, into ``<run folder>/job-<ids>/`` (kept,
    with the old steps' logs): the next allocation's agent starts with no request of the old one.
    Only in a run folder that holds fedctl's ``marker`` and is no symbolic link (checked on the spot)."""
    tag = "-".join(j for j in old_jobs if re.fullmatch(r"\d+", j)) or "ended"
    script = (f"R={shlex.quote(str(run_dir))}; D={shlex.quote(str(run_dir / f'job-{tag}'))}\n"
              + _SET_ASIDE_SH.replace("@MARKER@", marker).replace("@FILES@", " ".join(AGENT_FILES)))
    if cli.run(["sh", "-c", script]).strip() == "not-ours":
        raise ProviderError(f"{run_dir} on {cli.where} is not the run folder fedctl made (no {marker}, or a "
                            "symbolic link): no new allocation is started there")
