"""Typed snapshot of a running experiment: everything ``fedctl watch`` shows, as plain data.

A Snapshot is built by ``fedctl.monitor.model.WatchModel`` from the state, the per-host probe samples
and the metrics stream; the dashboard renders it with a pure function and ``--json`` prints
``Snapshot.to_dict()``. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from fedctl.providers.base import AllocationStatus


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reports it. ``None`` means the field was ``[N/A]`` (not zero)."""

    index: int
    name: str
    uuid: str = ""
    util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    run_mem_mib: float = 0.0  # GPU memory held by this run's processes (from --query-compute-apps)
    run_pids: tuple[int, ...] = ()
    processes: tuple["GpuHolder", ...] = ()  # which of the run's processes hold how much of it


@dataclass(frozen=True)
class GpuHolder:
    """GPU memory held by one of the run's payload processes (its children counted with it)."""

    label: str  # server | client-<k>
    pid: int
    mem_mib: float


@dataclass(frozen=True)
class GpuReport:
    """The GPUs of one host. ``status``: ``ok`` | ``none`` (no nvidia-smi / no GPU) | ``error``."""

    status: str
    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ProcSnapshot:
    """One payload process on a host, with whether its pid is alive right now."""

    label: str  # server | client-<k>
    role: str
    pid: int | None
    alive: bool | None  # None: not known yet (no probe answered)
    client_ids: tuple[int, ...] = ()
    recorded_status: str = ""


@dataclass(frozen=True)
class HostSnapshot:
    """One host's row: reachability, load, memory, GPUs and processes, with how old the data is."""

    name: str
    role: str
    address: str
    reachable: bool | None  # None: no probe has answered or failed yet
    error: str | None = None
    age_s: float | None = None  # seconds since the last successful probe (None: never)
    stale: bool = False
    load1: float | None = None
    ncpu: int | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    gpu: GpuReport = field(default_factory=lambda: GpuReport("unknown"))
    processes: tuple[ProcSnapshot, ...] = ()
    probe_s: float | None = None  # how long the last probe took (round trip + remote work)


@dataclass(frozen=True)
class ClientSnapshot:
    """One federated client (a client id, not a process)."""

    id: int
    host: str
    state: str  # training | uploading | reported | waiting | dropped | dead | finished | unknown
    last_response_s: float | None
    rounds_taken: int
    last_loss: float | None
    #: response time per recent round (aligned with Federation.heat_rounds); None: not sampled,
    #: -1.0: sampled but dropped / missing
    heat: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class RoundPoint:
    """One completed round: for the accuracy/loss chart and the straggler line."""

    round: int
    accuracy: float | None
    loss: float | None
    duration_s: float | None
    straggler: int | None  # the reporting client with the largest response time
    straggler_s: float | None
    sampled: int = 0
    reported: int = 0
    dropped: tuple[int, ...] = ()


@dataclass(frozen=True)
class AsyncProgress:
    """An asynchronous run's (FedBuff, FedAsync) last server update, as its round line says."""

    in_flight: int | None  # clients training when it was applied
    aggregated: int | None  # client updates it applied
    staleness_min: float | None  # server versions behind, over the updates it applied
    staleness_mean: float | None
    staleness_max: float | None
    client_updates: int | None  # running total of applied client updates
    dropped_stale: int | None  # running total of updates dropped past max_staleness

    @classmethod
    def of_round(cls, values: Mapping[str, float]) -> "AsyncProgress | None":
        """From a round line's numbers (``RoundRecord.values``, the contract's reading); None for a
        synchronous round (no ``client_updates``)."""
        if "client_updates" not in values:
            return None

        def count(key: str) -> int | None:
            return int(values[key]) if key in values else None

        return cls(count("in_flight"), count("aggregated"), values.get("staleness_min"), values.get("staleness_mean"),
                   values.get("staleness_max"), count("client_updates"), count("dropped_stale"))


@dataclass(frozen=True)
class Federation:
    """The current round and the recent history."""

    round: int  # the round in progress (or the last one when the run is over); 0 before the first
    rounds: int
    phase: str  # waiting | training | finished | failed | unknown
    sampled: tuple[int, ...] = ()
    reported: tuple[int, ...] = ()
    waiting: tuple[int, ...] = ()
    round_age_s: float | None = None  # how long the current round has been running
    history: tuple[RoundPoint, ...] = ()
    heat_rounds: tuple[int, ...] = ()
    #: set for an asynchronous run only (its round lines carry client_updates); None for a sync one
    asynchronous: AsyncProgress | None = None


@dataclass(frozen=True)
class Alert:
    """Something the researcher should see: a process died, a host is unreachable, NaN loss ..."""

    kind: str  # process_died | host_unreachable | round_timeout | nan_loss | update_rejected | warning
    message: str
    level: str = "warning"  # warning | error
    host: str | None = None
    client: int | None = None
    round: int | None = None


@dataclass(frozen=True)
class LogLine:
    """One line of a payload process log, tagged with where it came from."""

    host: str
    label: str  # server | client-<k>
    role: str
    text: str
    seq: int = 0  # arrival order, for a stable merge across hosts
    name: str = ""  # what the process is called on screen: server, client-7, clients-4-7 (as `fedctl logs`)

    @property
    def shown(self) -> str:
        """The process's name as every command shows it (its client ids, not its per-host index)."""
        return self.name or self.label


@dataclass(frozen=True)
class Snapshot:
    """Everything the dashboard shows at one instant."""

    run_id: str
    payload: str
    strategy: str
    run_phase: str  # the state's phase (running, finished, ...)
    now: float
    elapsed_s: float | None
    eta_s: float | None
    cost: float | None
    cost_per_hour: float | None
    currency: str
    federation: Federation
    clients: tuple[ClientSnapshot, ...]
    hosts: tuple[HostSnapshot, ...]
    alerts: tuple[Alert, ...]
    logs: tuple[LogLine, ...] = ()
    log_filter: str | None = None
    done: bool = False
    summary: dict[str, Any] | None = None
    interval_s: float = 1.0
    #: the batch allocation the run lives in (a Slurm job), None for hosts and clouds
    allocation: AllocationStatus | None = None
    node_hours: float | None = None  # the allocation's node-hours so far (the cost ledger's)

    @property
    def accuracy(self) -> float | None:
        """Latest global accuracy, if any round has been evaluated."""
        for p in reversed(self.federation.history):
            if p.accuracy is not None:
                return p.accuracy
        return None

    @property
    def loss(self) -> float | None:
        """Latest global loss."""
        for p in reversed(self.federation.history):
            if p.loss is not None:
                return p.loss
        return None

    def to_dict(self, include_logs: bool = False) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become None so the output is strict JSON)."""
        d = dataclasses.asdict(self)
        if not include_logs:
            d.pop("logs")
        d["round"] = self.federation.round
        d["rounds"] = self.federation.rounds
        d["accuracy"] = self.accuracy
        d["loss"] = self.loss
        d["allocation"] = self.allocation.to_dict() if self.allocation is not None else None
        return _json_safe(d)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
