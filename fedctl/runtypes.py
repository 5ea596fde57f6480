"""The typed parts of a run the state file stores: its configuration, its server endpoint, the
facts provision learned about each host.

``RunConfig`` is what fedctl itself reads of the experiment (clients, rounds, seed, the payload,
placement, the server's port and bind address, the budget, ``on_finish``); the payload's own keys
stay an opaque mapping that only the payload layer renders (``RunConfig.rendered`` is the
``config.yaml`` a host gets). Each type loads back from its JSON form as the same object, and from
the flat dict older state files hold.

fedctl's code reads attributes, never keys (tests/unit/test_typed_core.py checks it); only the
config layer and the payloads read the rendered mapping.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

#: The experiment keys that are fedctl's (every other top-level key is the payload's).
CORE_KEYS = ("name", "payload", "clients", "rounds", "seed", "placement", "server", "budget", "on_finish")
#: What ``on_finish`` may be (the config layer validates it; the watchdog acts on "poweroff").
ON_FINISH = ("stop", "teardown", "poweroff")


@dataclass(frozen=True)
class Placement:
    """``clients_per_host``: "auto" or an int >= 1 (see fedctl.plan for what each means);
    ``processes_per_gpu``: client processes per GPU on a host with GPUs; ``server_device``: where
    the server evaluates (auto: the CPU when it shares its host with clients, else its GPU)."""

    clients_per_host: int | str = "auto"
    processes_per_gpu: int = 1
    server_device: str = "auto"


@dataclass(frozen=True)
class ServerSettings:
    """``port``: "auto" (the server picks a free port) or a fixed port; ``bind``: listen address."""

    port: int | str = "auto"
    bind: str = "0.0.0.0"

    @property
    def port_number(self) -> int:
        """The ``{port}`` placeholder value: 0 for auto (the server reports the real port)."""
        return 0 if self.port in ("auto", None) else int(self.port)

    @property
    def fixed_port(self) -> int | None:
        """The configured port, None for auto."""
        return None if self.port in ("auto", None) or isinstance(self.port, bool) else int(self.port)


@dataclass(frozen=True)
class Budget:
    """The experiment's ``budget:`` limits; None means off. The one Budget type: the config layer
    validates it (each value > 0), the state stores it, ``fedctl.budget`` enforces it."""

    max_cost: float | None = None
    max_hours: float | None = None
    idle_minutes: float | None = None

    @property
    def active(self) -> bool:
        """Whether any guard is on."""
        return any(v is not None for v in (self.max_cost, self.max_hours, self.idle_minutes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (cost.json, ``fedctl cost --json``)."""
        return asdict(self)


def _pick(cls: type, data: Any) -> Any:
    """A frozen settings object from its mapping form (unknown keys ignored, missing keys default)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):  # absent, or not a mapping in a hand-edited state file: defaults
        return cls()
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True, eq=True)
class RunConfig:
    """The resolved experiment of a run, typed. The payload's keys are ``payload_config`` (opaque)."""

    clients: int = 0
    rounds: int = 0
    seed: int = 42
    name: str | None = None
    payload_name: str = ""
    payload_dir: str = ""
    placement: Placement = field(default_factory=Placement)
    server: ServerSettings = field(default_factory=ServerSettings)
    budget: Budget = field(default_factory=Budget)
    on_finish: str | None = None
    payload_config: dict[str, Any] = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment] - holds a dict

    @property
    def finish(self) -> str:
        """What happens when the run ends: ``on_finish`` or its default, teardown."""
        return self.on_finish or "teardown"

    def _core(self, payload: Any) -> dict[str, Any]:
        """The core keys in their JSON form (one order for both forms), ``payload`` as given."""
        return {
            "name": self.name,
            "payload": payload,
            "clients": self.clients,
            "rounds": self.rounds,
            "seed": self.seed,
            "placement": asdict(self.placement),
            "server": asdict(self.server),
            "budget": self.budget.to_dict(),
            "on_finish": self.on_finish,
        }

    def rendered(self) -> dict[str, Any]:
        """The full resolved config (core + payload keys) written to hosts as ``config.yaml``."""
        return {**self._core(self.payload_name), **copy.deepcopy(self.payload_config)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state file (structured: the payload's keys apart)."""
        return {**self._core({"name": self.payload_name, "dir": self.payload_dir}),
                "payload_config": copy.deepcopy(self.payload_config)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, payload_name: str = "", payload_dir: str = "") -> "RunConfig":
        """The RunConfig that ``to_dict`` wrote, or one from the flat resolved dict an older state
        file holds (core keys and payload keys side by side; ``payload`` is the name there)."""
        if isinstance(d, RunConfig):
            return d
        d = dict(d or {})
        payload = d.get("payload")
        if isinstance(payload, Mapping):  # the structured form
            payload_name, payload_dir = str(payload.get("name") or ""), str(payload.get("dir") or "")
            extra = dict(d.get("payload_config") or {})
        else:  # the flat form of older state files (and of tests that give a few keys)
            payload_name = payload if isinstance(payload, str) else payload_name
            extra = {k: v for k, v in d.items() if k not in CORE_KEYS}
        return cls(
            clients=int(d.get("clients") or 0),
            rounds=int(d.get("rounds") or 0),
            seed=int(d["seed"]) if d.get("seed") is not None else 42,
            name=d.get("name"),
            payload_name=payload_name,
            payload_dir=payload_dir,
            placement=_pick(Placement, d.get("placement")),
            server=_pick(ServerSettings, d.get("server")),
            budget=_pick(Budget, d.get("budget")),
            on_finish=d.get("on_finish"),
            payload_config=copy.deepcopy(extra),
        )


@dataclass
class ServerEndpoint:
    """Where the run's server is: its host (from the plan), and once started the address clients
    dial and the port it listens on."""

    host: str | None = None
    address: str | None = None
    port: int | None = None

    __hash__ = None  # type: ignore[assignment] - mutable

    @property
    def dial(self) -> str:
        """``address:port`` (what clients dial); empty before the server started."""
        return f"{self.address}:{self.port}" if self.address and self.port is not None else ""

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "address": self.address, "port": self.port}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ServerEndpoint":
        if isinstance(d, ServerEndpoint):
            return d
        d = d or {}
        port = d.get("port")
        return cls(host=d.get("host"), address=d.get("address"), port=int(port) if port is not None else None)


@dataclass
class HostFacts:
    """What provision learned about one host, and why it is unusable if it is."""

    ok: bool = False
    problems: list[str] = field(default_factory=list)
    python: str | None = None
    home: str | None = None
    imports: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)
    gpu_error: str | None = None
    disk_free_gb: float | None = None
    mem_total_gb: float | None = None
    mem_available_gb: float | None = None
    cpus: int | None = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def tensorflow(self) -> str | None:
        """TensorFlow's version when it imports there."""
        tf = self.imports.get("tensorflow")
        return str(tf.get("version")) if tf and tf.get("ok") else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.tensorflow is not None:
            d["tensorflow"] = self.tensorflow
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "HostFacts":
        """The HostFacts that ``to_dict`` wrote (keys it does not know are ignored; an older
        record's bare ``tensorflow`` version becomes an import)."""
        if isinstance(d, HostFacts):
            return d
        d = dict(d or {})
        facts = _pick(cls, {k: v for k, v in d.items() if k != "ok"})
        facts.ok = bool(d.get("ok", not facts.problems))
        if isinstance(d.get("tensorflow"), str) and "tensorflow" not in facts.imports:
            facts.imports = {**facts.imports, "tensorflow": {"ok": True, "version": d["tensorflow"]}}
        facts.problems, facts.gpus = list(facts.problems), list(facts.gpus)
        return facts

    @property
    def summary(self) -> str:
        """One short cell for the provision table."""
        if not self.ok:
            return "; ".join(self.problems)
        parts = [f"py {self.python}"]
        if self.tensorflow is not None:
            parts.append(f"tf {self.tensorflow}")
        parts.append(f"{len(self.gpus)} GPU" if self.gpus else ("GPU error" if self.gpu_error else "no GPU"))
        if self.mem_available_gb is not None:
            parts.append(f"{self.mem_available_gb:.0f}G free")
        return ", ".join(parts)
