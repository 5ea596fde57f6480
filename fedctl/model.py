"""The domain types of a run, below config, state, plan, providers and connectors.

How to reach a host (``HostInfo``), what the plan gives each host (``PlannedHost``, ``Plan``), and
the phases and statuses a run and its hosts go through (``Phase``, ``HostStatus``). The state file
stores these and loads them back as the same objects; nothing re-parses them as dicts.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Mapping

from fedctl.errors import PlanError
from fedctl.provider_fields import (
    MachineRecord,
    ProviderSettings,
    from_legacy_extra,
    settings_from_dict,
    settings_to_dict,
)

PLAN_VERSION = 1

#: A name that becomes one folder or file name, on a host or here (a host, a run id, a payload):
#: letters, digits, '.', '_' and '-', starting with a letter or digit. ``fullmatch`` (never
#: ``match`` with ``^...$``, whose ``$`` also matches before a trailing newline).
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Characters a plain name may have (a folder name is at most 255 bytes on every common filesystem).
MAX_NAME_CHARS = 128
#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: in a path they
#: split the line-based output of remote commands and hide what a message shows.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a folder or file (a host, a run, a payload); None when it can.

    Refused: anything but letters, digits, '.', '_' and '-' (so '/', spaces and control characters,
    a trailing newline included), a first character that is not a letter or digit (so '.', '..',
    '-x'), '..' anywhere, and more than ``MAX_NAME_CHARS`` characters."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    shown = ascii(name if len(name) <= 60 else name[:57] + "...")
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"{shown} is longer than {MAX_NAME_CHARS} characters"
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        return (
            f"{shown} is not a plain name: it names a folder, so it may only hold letters, digits,"
            " '.', '_' and '-', start with a letter or digit, and hold no '..'"
            " (no '/', spaces or control characters)"
        )
    return None


def rel_path_problem(rel: str) -> str | None:
    """Why ``rel`` (a POSIX path relative to a folder, e.g. a payload file) cannot be written under
    that folder on a host; None when it can. Each part must be non-empty, not '.' or '..', and free
    of control characters (a newline would split the output of the commands that list files)."""
    if not rel or rel.startswith("/"):
        return f"{ascii(rel)} must be a relative path"
    if CONTROL_CHARS.search(rel):
        return f"{ascii(rel)} holds a control character (a newline, a tab ...)"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return f"{ascii(rel)} has an empty, '.' or '..' part"
    return None


def is_strictly_under(path: str, root: str) -> bool:
    """Whether ``path`` lies strictly below ``root``, compared normalised (``posixpath.normpath``),
    so ``root/a/../..`` is not below ``root`` and ``root`` itself is not either."""
    p, r = posixpath.normpath(path), posixpath.normpath(root)
    if p == r:
        return False
    prefix = r if r.endswith("/") else r + "/"
    return p.startswith(prefix)


class _Value(str, Enum):
    """A str enum that prints (and is stored) as its value: ``f"{Phase.RUNNING}"`` is ``running``."""

    def __str__(self) -> str:
        return self.value


class Phase(_Value):
    """Phases of a run, in the order a run normally goes through them. A ``str`` enum: it compares
    equal to its value and is stored in the state file as that value."""

    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    TEARING_DOWN = "tearing_down"
    TORN_DOWN = "torn_down"


class HostStatus(_Value):
    """pending -> provisioning -> provisioned | failed -> tearing_down -> torn_down."""

    PENDING = "pending"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    FAILED = "failed"
    TEARING_DOWN = "tearing_down"
    TORN_DOWN = "torn_down"


_P = Phase
#: The phase changes a run may make (``RunState.transition``); staying in a phase is always allowed.
#: Provision may be run again on any run not torn down (it retries what is left); start may begin
#: again after a run ended or failed (a new run id on the same hosts); teardown may begin from
#: anywhere and ``teardown --forget`` may end any run; nothing leaves ``torn_down``.
PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    _P.PROVISIONING: frozenset({_P.PROVISIONED, _P.FAILED, _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.PROVISIONED: frozenset({_P.PROVISIONING, _P.STARTING, _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.STARTING: frozenset({_P.RUNNING, _P.FINISHED, _P.FAILED, _P.STOPPED, _P.PROVISIONING,
                            _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.RUNNING: frozenset({_P.FINISHED, _P.FAILED, _P.STOPPED, _P.STARTING, _P.PROVISIONING,
                           _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.FINISHED: frozenset({_P.STARTING, _P.STOPPED, _P.PROVISIONING, _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.FAILED: frozenset({_P.STARTING, _P.STOPPED, _P.PROVISIONING, _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.STOPPED: frozenset({_P.STARTING, _P.PROVISIONING, _P.TEARING_DOWN, _P.TORN_DOWN}),
    _P.TEARING_DOWN: frozenset({_P.PROVISIONING, _P.TORN_DOWN}),
    _P.TORN_DOWN: frozenset(),
}
#: Phases in which the run's processes may be alive (start is on its way or they run).
LIVE_PHASES = frozenset({Phase.STARTING, Phase.RUNNING})


class ProcStatus(_Value):
    """One payload process: starting (recorded before it is spawned) -> running -> exited (on its
    own) | stopped (by fedctl) | failed (it did not start, or exited while the run needed it)."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    STOPPED = "stopped"
    FAILED = "failed"


#: Process statuses in which the process may be alive (stop and teardown signal these).
LIVE_PROCS = frozenset({ProcStatus.STARTING, ProcStatus.RUNNING})


ENV_MODES = ("auto", "none", "venv")


@dataclass(frozen=True)
class EnvSettings:
    """How fedctl prepares a host's Python (inventory keys ``env``, ``env_site_packages``,
    ``wheelhouse``, ``setup``, ``keep_env``; see ``fedctl.hostenv``)."""

    mode: str = "auto"  # auto: use python as it is when it imports everything, else a venv | none | venv
    site_packages: bool = True  # the venv sees the image's packages (a preinstalled CUDA TensorFlow)
    wheelhouse: str | None = None  # a local folder of wheels, pushed once, for hosts without an index
    setup: tuple[str, ...] = ()  # shell commands run once per host (per content) before the env is made
    keep: bool = False  # teardown keeps the env (the next run on the host reuses it)


@dataclass(frozen=True)
class HostInfo:
    """Where and how to reach one host, as the connectors need it (already resolved from inventory)."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    password_env: str | None = None
    host_key_policy: str = "accept-new"  # accept-new | strict | off
    workdir: str = "~/fedctl"
    python: str = "python3"
    private_address: str | None = None
    roles: tuple[str, ...] = ()
    price_per_hour: float | None = None
    currency: str = "USD"
    kind: str = "ssh"  # ssh | local
    extra: Mapping[str, str] = field(default_factory=dict)  # connector options (proxy_jump, proxy_command)
    provider_settings: ProviderSettings | None = None  # what a machine-creating provider needs (typed)
    machine: MachineRecord | None = None  # what that provider journaled about the host's machine
    environment: Mapping[str, str] = field(default_factory=dict)  # variables exported for every command there
    python_env: EnvSettings = field(default_factory=EnvSettings)  # how its Python is prepared (inventory: env, ...)


def host_to_dict(h: HostInfo) -> dict[str, Any]:
    """JSON-able form of a HostInfo (the state file's and the plan's)."""
    d = asdict(h)
    d["roles"] = list(h.roles)
    d["extra"] = dict(h.extra)
    d["environment"] = dict(h.environment)
    d["provider_settings"] = settings_to_dict(h.provider_settings)
    d["machine"] = None if h.machine is None else h.machine.to_dict()
    return d


def host_from_dict(d: Mapping[str, Any]) -> HostInfo:
    """The HostInfo that ``host_to_dict`` wrote."""
    d = dict(d)
    d["roles"] = tuple(d.get("roles", ()))
    d["extra"] = dict(d.get("extra", {}))
    if "provider_settings" in d:
        d["provider_settings"] = settings_from_dict(d["provider_settings"])
        d["machine"] = MachineRecord.from_dict(d.get("machine"))
    else:  # a state file from before the typed fields: aws.* strings in extra
        d["provider_settings"], d["machine"], d["extra"] = from_legacy_extra(d["extra"])
    d["environment"] = dict(d.get("environment", {}))
    env = dict(d.pop("python_env", None) or d.pop("env", None) or {})  # "env": a state from before the rename
    env["setup"] = tuple(env.get("setup", ()))
    d["python_env"] = EnvSettings(**env)
    return HostInfo(**d)


@dataclass(frozen=True)
class PlannedHost:
    """One host of the plan: its record, whether it runs the server, its client processes.

    It reads like its HostInfo too (``ph.name``, ``ph.address``, ``ph.price_per_hour``...), so code
    that only needs the host's fields can take either.
    """

    host: HostInfo
    role_server: bool
    client_processes: tuple[tuple[int, ...], ...] = ()
    client_gpus: tuple[int | None, ...] = ()  # the GPU of each client process (None: no GPU)

    @property
    def name(self) -> str:
        return self.host.name

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes PlannedHost lacks; guard against recursion during copy/pickle.
        if attr == "host" or attr.startswith("__"):
            raise AttributeError(attr)
        try:
            return getattr(self.host, attr)
        except AttributeError:
            raise AttributeError(f"PlannedHost has no attribute {attr!r}") from None

    @property
    def client_ids(self) -> tuple[int, ...]:
        return tuple(i for proc in self.client_processes for i in proc)

    @property
    def role(self) -> str:
        """``server``, ``client`` or ``server+client``: what the plan gives the host (an inventory
        without ``roles`` still gets its server from the plan)."""
        parts = (["server"] if self.role_server else []) + (["client"] if self.client_processes else [])
        return "+".join(parts) or "-"


@dataclass(frozen=True)
class Plan:
    """Roles and placement for one run. JSON round trip with ``to_dict`` / ``from_dict``."""

    provider: str
    clients: int
    hosts: tuple[PlannedHost, ...]
    unused: tuple[str, ...] = ()

    @property
    def server(self) -> PlannedHost:
        """The planned host running the server (``.host`` is its HostInfo)."""
        for ph in self.hosts:
            if ph.role_server:
                return ph
        raise PlanError("the plan has no server host")  # cannot happen for a plan from make_plan

    @property
    def server_address(self) -> str:
        """What clients dial: the server's private address when set, else its address."""
        h = self.server.host
        return h.private_address or h.address

    @property
    def client_hosts(self) -> tuple[PlannedHost, ...]:
        """Planned hosts running at least one client process, in plan order."""
        return tuple(ph for ph in self.hosts if ph.client_processes)

    def planned(self, host: PlannedHost | HostInfo | str) -> PlannedHost:
        """The PlannedHost for a host name, HostInfo or PlannedHost; KeyError lists the plan's hosts."""
        name = host if isinstance(host, str) else host.name
        for ph in self.hosts:
            if ph.name == name:
                return ph
        raise KeyError(f"host {name!r} is not in the plan (hosts: {', '.join(p.name for p in self.hosts)})")

    def clients_of(self, host: PlannedHost | HostInfo | str) -> tuple[int, ...]:
        """All client ids on ``host`` (a HostInfo or a host name), in process order."""
        return self.planned(host).client_ids

    def processes_of(self, host: PlannedHost | HostInfo | str) -> tuple[tuple[int, ...], ...]:
        return self.planned(host).client_processes

    @property
    def price_per_hour_by_currency(self) -> dict[str, float]:
        """Hourly price of the planned hosts summed per currency (unpriced hosts are left out)."""
        sums: dict[str, float] = {}
        for ph in self.hosts:
            if ph.host.price_per_hour is not None:
                sums[ph.host.currency] = sums.get(ph.host.currency, 0.0) + float(ph.host.price_per_hour)
        return sums

    @property
    def currency(self) -> str:
        """The one currency of the priced hosts; PlanError when they use several (never converted)."""
        sums = {c: v for c, v in self.price_per_hour_by_currency.items() if v > 0}
        if len(sums) > 1:
            raise PlanError(
                f"hosts are priced in several currencies ({', '.join(sorted(sums))}); there is no single total",
                hint="use price_per_hour_by_currency, or price all hosts in one currency",
            )
        if sums:
            return next(iter(sums))
        return self.hosts[0].host.currency if self.hosts else "USD"

    @property
    def price_per_hour_total(self) -> float:
        """Sum of the hourly prices (unpriced hosts count 0); PlanError for mixed currencies."""
        self.currency  # noqa: B018 - raises for mixed currencies
        return float(sum(self.price_per_hour_by_currency.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state file."""
        return {
            "version": PLAN_VERSION,
            "provider": self.provider,
            "clients": self.clients,
            "unused": list(self.unused),
            "hosts": [
                {
                    "host": host_to_dict(ph.host),
                    "role_server": ph.role_server,
                    "client_processes": [list(p) for p in ph.client_processes],
                    "client_gpus": list(ph.client_gpus),
                }
                for ph in self.hosts
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        version = data.get("version")
        if version != PLAN_VERSION:
            raise PlanError(f"plan format version {version!r} is not supported (this fedctl reads {PLAN_VERSION})")
        return cls(
            provider=data["provider"],
            clients=int(data["clients"]),
            unused=tuple(data.get("unused", ())),
            hosts=tuple(
                PlannedHost(
                    host=host_from_dict(h["host"]),
                    role_server=bool(h["role_server"]),
                    client_processes=tuple(tuple(int(i) for i in p) for p in h["client_processes"]),
                    client_gpus=tuple(h.get("client_gpus", ())),
                )
                for h in data["hosts"]
            ),
        )
