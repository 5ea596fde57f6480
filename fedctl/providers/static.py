"""The ``static`` provider: hosts you already have (rented instances, lab machines) from the inventory.

fedctl does not create or delete these machines: acquire checks nothing by itself (provision's
checks run over SSH), release only forgets them. Stopping billing is ``on_finish: poweroff``.
"""

from __future__ import annotations

from typing import Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import register
from fedctl.providers.base import Provider, RunContext


@register("static")
class StaticProvider(Provider):
    """Hosts listed in the inventory; they exist before fedctl and after it."""

    @classmethod
    def from_run(cls, hosts: Sequence[HostInfo], ctx: RunContext) -> "StaticProvider":
        """Nothing to know: the hosts exist before fedctl and after it."""
        return cls()

    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """The hosts as they are (provision's checks run over SSH)."""
        return list(hosts)

    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Nothing to give back: teardown has removed what fedctl wrote; the machines stay the user's."""
