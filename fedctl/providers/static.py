"""The ``static`` provider: hosts you already have (rented instances, lab machines) from the inventory.

fedctl does not create or delete these machines: acquire checks nothing by itself (provision's
checks run over SSH), release only forgets them. Stopping billing is ``on_finish: poweroff``.
"""

from __future__ import annotations

from typing import Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import register
from fedctl.providers.base import Provider


@register("static")
class StaticProvider(Provider):
    """Hosts listed in the inventory; they exist before fedctl and after it."""

    releases_machines = False

    def __init__(self, hosts: Sequence[HostInfo] = ()) -> None:
        self._hosts = list(hosts)

    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        return list(hosts)

    def release(self, hosts: Sequence[HostInfo]) -> None:
        names = {h.name for h in hosts}
        self._hosts = [h for h in self._hosts if h.name not in names]

    def list(self) -> list[str]:
        return [h.name for h in self._hosts]
