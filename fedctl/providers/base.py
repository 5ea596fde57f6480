"""The Provider interface: acquire(plan) -> hosts, release(hosts), list()."""

from __future__ import annotations

import abc
from typing import Sequence

from fedctl.connectors.base import HostInfo


class Provider(abc.ABC):
    """Makes the plan's hosts exist and lets them go. The caller records intent in the state first."""

    name: str = ""

    #: True when release() gives the machines back (stops billing); False when they stay the user's.
    releases_machines: bool = False

    @abc.abstractmethod
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Make ``hosts`` usable and return them (possibly with addresses filled in)."""

    @abc.abstractmethod
    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Let ``hosts`` go; must be idempotent (a second call after a crash finishes the job)."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of the hosts this provider believes exist for fedctl right now."""
