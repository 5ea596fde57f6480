"""The ``local`` provider: hosts are workspaces under ``.fedctl/local/<host>/`` on this machine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import register
from fedctl.providers.base import Provider


@register("local")
class LocalProvider(Provider):
    """Every host is a folder on this machine; its processes are local processes."""

    releases_machines = True

    def __init__(self, root: str | Path = ".fedctl/local") -> None:
        self.root = Path(root).absolute()

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

    def list(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())
