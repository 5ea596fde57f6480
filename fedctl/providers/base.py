"""The Provider interface: where a run's hosts come from, and how they are let go.

Two kinds share it. A *host source* (``local``, ``static``) hands out machines that exist anyway:
``acquire`` checks or prepares, ``release`` forgets or cleans a folder; there is no lifecycle.
A *machine-creating* provider (``creates_machines``: ``aws``) is a ``MachineProvider``
(``fedctl.providers.lifecycle``): a few small, stateless, idempotent steps (open the network,
create, wait, query, terminate, clean the network up) that a generic driver runs, journaling each
step's intent into the state before it runs and confirming it after. A second cloud, or Slurm,
is one module implementing those steps.

Every provider is built the same way, ``cls.from_run(hosts, ctx)``, from what the state holds.
"""

from __future__ import annotations

import abc
import hashlib
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.errors import ExitCode, FedctlError

#: machine states that still bill (or may bill again): teardown waits until none is left
BILLED_STATES = ("pending", "running", "stopping", "stopped")
#: machine states of a machine that is gone or going (a provider maps its own states onto these names)
ENDED_STATES = ("shutting-down", "terminated")


class ProviderError(FedctlError):
    """The provider's API refused or failed (a quota, a bad image, capacity, a timeout)."""

    exit_code = ExitCode.HOSTS


@dataclass(frozen=True)
class HostUpdate:
    """What a machine-creating provider learned about one host, to be saved in the state at once."""

    name: str
    info: HostInfo | None = None  # how to reach it now (address; its MachineRecord in ``machine``)
    acquired_at: float | None = None  # when billing started, as the provider's API reports it
    released_at: float | None = None  # when billing ended, as the provider's API reports it


@dataclass(frozen=True)
class RunContext:
    """What a provider needs to know about the run: its id and origin (a machine-creating provider
    tags what it creates with them), where to journal what it learns, and the run's limits."""

    run_id: str
    origin: str  # which fedctl folder created them (``folder_origin``), so sweeps can tell folders apart
    journal: Callable[[HostUpdate], None] = lambda _u: None
    progress: Callable[[str], None] = lambda _m: None
    fl_port: int | None = None  # the FL server's port: opened inside the run's machines only
    max_hours: float | None = None  # the budget: machines switch themselves off after it (plus a margin)
    local_root: Path | None = None  # where the local provider makes its host workspaces


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


#: an allocation's states while it pends or runs (Slurm's words; another scheduler maps onto them)
LIVE_ALLOCATION_STATES = ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED", "RESIZING")


@dataclass(frozen=True)
class AllocationStatus:
    """The batch allocation a run's hosts live in (a Slurm job), as the scheduler says now: what
    ``watch`` and ``status`` show beside rounds and hosts. Provider-neutral; the numbers a scheduler
    does not give are None, never guessed."""

    job: str
    state: str  # PENDING | RUNNING | COMPLETING | TIMEOUT | ... (the scheduler's word); UNKNOWN: forgotten
    reason: str | None = None  # why it pends, or why it ended (None: no reason given)
    nodelist: str = ""  # the scheduler's compact node list (fl[1-2]); empty while pending
    nodes: int | None = None  # how many nodes it holds (or asks for, while pending)
    elapsed_s: float | None = None  # how long it has run (0 while pending)
    time_limit_s: float | None = None  # None: no limit (UNLIMITED) or not known
    problems: tuple[str, ...] = ()  # lines or fields of the scheduler's answer that could not be read

    @property
    def ended(self) -> bool:
        """The allocation is over (or on its way out): its hosts will not come back. UNKNOWN (the
        scheduler could not be asked) is not an end."""
        return self.state not in LIVE_ALLOCATION_STATES + ("UNKNOWN",)

    @property
    def time_left_s(self) -> float | None:
        """What is left of the time limit while it runs (None: pending, ended, or no limit)."""
        if self.state != "RUNNING" or self.time_limit_s is None or self.elapsed_s is None:
            return None
        return max(0.0, self.time_limit_s - self.elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``watch --json``, ``status --json``), with the derived numbers."""
        return {"job": self.job, "state": self.state, "reason": self.reason, "nodelist": self.nodelist,
                "nodes": self.nodes, "elapsed_s": self.elapsed_s, "time_limit_s": self.time_limit_s,
                "time_left_s": self.time_left_s, "ended": self.ended, "problems": list(self.problems)}


#: provider name -> "module:function" that reads its allocation's status (lazy: nothing is imported
#: until a run of that provider asks). The function is called as ``fn(provider, hosts)``.
def folder_origin(state_root: str | Path) -> str:
    """A short, stable id of this machine's fedctl folder (not the path itself: tags are visible to
    anyone with read access to the account)."""
    key = f"{socket.gethostname()}:{Path(state_root).absolute()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Provider(abc.ABC):
    """Makes the plan's hosts usable and lets them go. The caller records intent in the state first."""

    name: str = ""

    #: True when acquire() creates machines and release() destroys them (a ``MachineProvider``).
    #: It destroys only machines tagged with the run AND the origin, checked on the spot.
    creates_machines: bool = False

    #: the module whose ``parse_section(file, raw, defaults, make_host)`` validates this provider's
    #: inventory section (named like the provider: ``aws:``) into its hosts; None: no section
    section_module: ClassVar[str | None] = None
    #: whether ``on_finish: poweroff`` may power its hosts off (not a cluster's shared compute nodes)
    can_power_off: ClassVar[bool] = True
    #: whether its runs live in a batch allocation (a Slurm job) that ``allocation_status`` reads
    has_allocation: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_run(cls, hosts: Sequence[HostInfo], ctx: "RunContext") -> "Provider":
        """The provider of a run whose hosts (as the state holds them) are ``hosts``."""

    @abc.abstractmethod
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Make ``hosts`` usable and return them (possibly with addresses filled in)."""

    @abc.abstractmethod
    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Let ``hosts`` go; must be idempotent (a second call after a crash finishes the job)."""

    def reachable(self, info: HostInfo) -> bool:
        """Whether ``info`` can be connected to (a machine being created has no address yet)."""
        return True

    def ended(self, hosts: Sequence[HostInfo]) -> str | None:
        """Why the run's machines are gone for good (a Slurm job ended by its time limit), None while
        they may still run. A follower asks this so a run whose machines went away stops waiting
        for rounds. Host sources and clouds whose machines end only by fedctl's hand: None."""
        return None

    def allocation_status(self, hosts: Sequence[HostInfo]) -> AllocationStatus | None:
        """The batch allocation the hosts live in, as the scheduler says now (one scheduler command:
        callers ask at most every few seconds); None for providers without one (host sources,
        clouds). A provider with an allocation sets ``has_allocation`` and overrides this."""
        return None
