"""The ``local`` provider: hosts are workspaces under ``.fedctl/local/<host>/`` on this machine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import register
from fedctl.providers.base import Provider, RunContext


@register("local")
class LocalProvider(Provider):
    """Every host is a folder on this machine; its processes are local processes."""

    def __init__(self, root: str | Path = ".fedctl/local") -> None:
        self.root = Path(root).absolute()

    @classmethod
    def from_run(cls, hosts: Sequence[HostInfo], ctx: RunContext) -> "LocalProvider":
        """The run's workspaces live under the state folder's local root."""
        return cls(root=ctx.local_root) if ctx.local_root is not None else cls()

    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        for h in hosts:
            Path(h.workdir).mkdir(parents=True, exist_ok=True)
        return list(hosts)

    def release(self, hosts: Sequence[HostInfo]) -> None:
        for h in hosts:
            path = Path(h.workdir).absolute()
            # Only ever delete inside our own root: a corrupt state must not point us elsewhere.
            if self.root in path.parents and path.exists():
                shutil.rmtree(path)
        if self.root.exists() and not any(self.root.iterdir()):
            self.root.rmdir()
