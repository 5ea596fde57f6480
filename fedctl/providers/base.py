"""The Provider interface: acquire(plan) -> hosts, release(hosts), list().

Two kinds of provider share it. Most (``local``, ``static``) hand out machines that exist anyway.
Some create machines and destroy them again (``creates_machines``: a cloud such as ``aws``); those
get a ``RunContext`` so they can tag what they create with the run, and report every machine id
the moment it is known through ``RunContext.journal`` (the caller saves it in the state at once:
a crash between a create call and the next line must still leave something teardown can find).
A second cloud is one module that subclasses ``Provider`` with ``creates_machines = True``.
"""

from __future__ import annotations

import abc
import hashlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.errors import ExitCode, FedctlError

#: machine states that still bill (or may bill again): teardown waits until none is left
BILLED_STATES = ("pending", "running", "stopping", "stopped")


class ProviderError(FedctlError):
    """The provider's API refused or failed (a quota, a bad image, capacity, a timeout)."""

    exit_code = ExitCode.HOSTS


@dataclass(frozen=True)
class HostUpdate:
    """What a machine-creating provider learned about one host, to be saved in the state at once."""

    name: str
    info: HostInfo | None = None  # how to reach it now (address, machine id in ``extra``)
    acquired_at: float | None = None  # when billing started, as the provider's API reports it
    released_at: float | None = None  # when billing ended, as the provider's API reports it


@dataclass(frozen=True)
class RunContext:
    """What a machine-creating provider needs to know about the run it creates machines for."""

    run_id: str
    origin: str  # which fedctl folder created them (``folder_origin``), so sweeps can tell folders apart
    journal: Callable[[HostUpdate], None] = lambda _u: None
    progress: Callable[[str], None] = lambda _m: None
    fl_port: int | None = None  # the FL server's port: opened inside the run's machines only
    max_hours: float | None = None  # the budget: machines switch themselves off after it (plus a margin)


@dataclass(frozen=True)
class Machine:
    """One machine a provider created, as its API reports it."""

    id: str
    state: str  # pending | running | stopping | stopped | shutting-down | terminated
    run_id: str | None  # the fedctl-run tag (None: not fedctl's)
    host: str | None  # the fedctl-host tag
    origin: str | None  # the fedctl-origin tag
    machine_type: str = ""
    address: str | None = None  # public address
    private_address: str | None = None
    launched_at: float | None = None
    ended_at: float | None = None  # when it was terminated, when the API says so
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def billed(self) -> bool:
        return self.state in BILLED_STATES


def folder_origin(state_root: str | Path) -> str:
    """A short, stable id of this machine's fedctl folder (not the path itself: tags are visible to
    anyone with read access to the account)."""
    key = f"{socket.gethostname()}:{Path(state_root).absolute()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Provider(abc.ABC):
    """Makes the plan's hosts exist and lets them go. The caller records intent in the state first."""

    name: str = ""

    #: True when release() gives the machines back (stops billing); False when they stay the user's.
    releases_machines: bool = False

    #: True when acquire() creates machines and release() destroys them. Such a provider takes
    #: ``hosts`` and ``run`` (a RunContext) and also offers ``reachable``, ``machines`` and ``sweep``.
    #: It destroys only machines tagged with the run AND the origin, checked on the spot.
    creates_machines: bool = False

    @abc.abstractmethod
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Make ``hosts`` usable and return them (possibly with addresses filled in)."""

    @abc.abstractmethod
    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Let ``hosts`` go; must be idempotent (a second call after a crash finishes the job)."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of the hosts this provider believes exist for fedctl right now."""

    def reachable(self, info: HostInfo) -> bool:
        """Whether ``info`` can be connected to (a machine being created has no address yet)."""
        return True

    def machines(self, all_runs: bool = False, include_ended: bool = False) -> list[Machine]:
        """The machines this provider created (for this run, or for every run with ``all_runs``)."""
        return []

    def sweep(self, listed: Sequence[Machine], group_runs: Sequence[str], origins: set[str] | None) -> list[str]:
        """Destroy exactly ``listed`` (each re-checked by its tags just before), then the unused
        network leftovers of ``group_runs``; returns what was destroyed (``fedctl instances --sweep``)."""
        raise ProviderError(f"provider {self.name} creates no machines: there is nothing to sweep")
