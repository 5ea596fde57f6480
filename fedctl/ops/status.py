"""``status``: where the run is (phase, round k of R, accuracy) and, per host, what is alive.

Read-only over the network, through the probe ``watch`` uses: one round trip per host (liveness,
and on the server metrics.jsonl from where the last call stopped). The phase is derived from what is
observed (the server's summary line, dead processes) and written back when no other fedctl holds
the lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedctl.contract import MetricsLog, collected_metrics, host_files, parse_metrics, parse_status
from fedctl.errors import StateLockedError
from fedctl import model
from fedctl.model import LIVE_PHASES, Phase
from fedctl.ops.common import open_fleet, server_record
from fedctl.providers.base import AllocationStatus
from fedctl.state import RunState, StateStore


@dataclass
class HostReport:
    """One host as ``fedctl status`` reports it (the record's lifecycle status is ``model.HostStatus``)."""

    name: str
    role: str
    reachable: bool | None  # None: not asked (never provisioned yet, or already released)
    alive: dict[str, bool] = field(default_factory=dict)  # process label -> alive
    status: str = ""
    error: str | None = None


@dataclass
class RunStatus:
    run_id: str
    phase: str
    round: int
    rounds: int
    accuracy: float | None
    loss: float | None
    hosts: list[HostReport]
    server: dict[str, Any]
    summary: dict[str, Any] | None = None
    error: str | None = None
    last_round_end: float | None = None  # server clock: when the latest round completed
    gpu_util_pct: float | None = None  # the busiest GPU of the run's hosts (when GPUs were asked)
    #: when the server last rewrote status.json (its clock, never later than this machine's now):
    #: the clients' progress, which the idle guard counts like the watchdog does
    last_status: float | None = None
    #: the batch allocation the run lives in (a Slurm job: id, state, reason, nodes, time left)
    allocation: AllocationStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allocation"] = self.allocation.to_dict() if self.allocation is not None else None
        return d


def parse_metrics_tail(text: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(latest round, summary) of the given metrics.jsonl lines, as JSON dicts, read by the payload
    contract (bad lines skipped; a summary that rounds came after is from a resumed attempt: None)."""
    log = parse_metrics(text)
    last = log.last_round
    return (last.to_dict() if last else None), (log.summary.to_dict() if log.summary else None)


def _metrics_path(state: RunState, rec: Any) -> str | None:
    """Where the server's metrics.jsonl is (the payload manifest says), None before provisioning."""
    return host_files(state, rec).metrics if rec is not None and rec.workdir else None


class StatusObserver:
    """Answers "where is the run" with the same probe ``watch`` uses (``fedctl.monitor.collect``):
    one shell round trip per host per call for liveness (pid + start time), and the server's
    metrics.jsonl read incrementally by byte offset, so a caller that asks every few seconds
    (``fedctl run`` without a terminal) reads each new line once. One status engine for status,
    watch, run and the guards."""

    def __init__(self, state: RunState, gpu: bool = False) -> None:
        self.gpu = gpu  # also read the hosts' GPUs (nvidia-smi in the same round trip): the idle guard's input
        self._allocation: Any = None  # monitor.allocation.AllocationReader (throttled), made at the first call
        self._allocation_run = state.run_id
        self._reset(state)

    def _reset(self, state: RunState) -> None:
        from fedctl.monitor.collect import build_probes

        self.metrics = MetricsLog()
        self._key = self._shape(state)
        self.probes = build_probes(state, logs=False, gpu=self.gpu, system=False)

    @staticmethod
    def _shape(state: RunState) -> tuple[Any, ...]:
        """What the probes were built for: the run, its live hosts and their processes."""
        return state.run_id, tuple((r.name, tuple(p.pid for p in r.processes)) for r in state.hosts
                                   if r.status not in (model.HostStatus.TORN_DOWN, model.HostStatus.TEARING_DOWN))

    def observe(self, store: StateStore, state: RunState) -> RunStatus:
        """Probe the hosts once and derive the run's phase (written back when it changed)."""
        from fedctl.monitor.collect import collect_once
        from fedctl.ops.follow import on_this_clock

        if self._shape(state) != self._key:
            self._reset(state)  # another run, other hosts, new processes (a resume): start afresh
        server = server_record(state)
        hosts: list[HostReport] = []
        log = self.metrics
        utils: list[float] = []
        status_time: float | None = None
        if self.probes and state.phase not in (Phase.PROVISIONING, Phase.TORN_DOWN):
            from fedctl.providers import for_run

            # as teardown does: a host its provider cannot reach (a Slurm slot without a node, a
            # machine without an address) is not asked; it is listed below as not asked
            provider = for_run(state, store)
            probes = {n: p for n, p in self.probes.items() if provider.reachable(state.host(n).info)}
            with open_fleet(store, [state.host(n) for n in probes]) as fleet:
                samples = collect_once(fleet, probes)
            seen: dict[str, HostReport] = {}
            for sample in samples:  # a host behind on metrics comes back more than once
                rec = state.host(sample.host)
                hs = seen.setdefault(rec.name, HostReport(rec.name, rec.role, reachable=sample.ok,
                                                          status=rec.status, error=sample.error))
                hs.reachable, hs.error = sample.ok, None if sample.ok else sample.error
                if sample.gpu is not None:
                    utils += [g.util_pct for g in sample.gpu.gpus if g.util_pct is not None]
                if sample.ok and sample.probe is not None:
                    hs.alive = {label: alive for label, (_pid, alive) in sample.probe.pids.items()}
                if sample.metrics_reset:
                    log.reset()
                if sample.metrics_text:
                    log.feed(sample.metrics_text)
                server_status = parse_status(sample.status_text) if sample.status_text else None
                if server_status is not None and server_status.time is not None:
                    status_time = server_status.time
            hosts = list(seen.values())
        elif state.results_dir:
            # torn down (or never started): what was collected locally is the last word on the run
            collected = collected_metrics(state.results_dir, state)
            if collected.is_file():
                log = parse_metrics(collected.read_text(errors="replace"))
        last = log.last_round
        last_round = last.to_dict() if last else None
        summary = log.summary.to_dict() if log.summary else None
        listed = {h.name for h in hosts}
        for rec in state.hosts:
            if rec.name not in listed:
                hosts.append(HostReport(rec.name, rec.role, reachable=None, status=rec.status, error=rec.error))

        phase = state.phase
        if phase in LIVE_PHASES:
            server_alive = next((h.alive.get("server") for h in hosts if server and h.name == server.name), None)
            if summary is not None:
                phase = Phase.FINISHED if summary.get("status", "finished") == "finished" else Phase.FAILED
            elif server_alive is False:
                phase = Phase.FAILED
        status = RunStatus(
            run_id=state.run_id,
            phase=phase,
            round=int(last_round["round"]) if last_round else 0,
            rounds=state.rounds,
            accuracy=last_round.get("accuracy") if last_round else None,
            loss=last_round.get("loss") if last_round else None,
            hosts=sorted(hosts, key=lambda h: [x.name for x in state.hosts].index(h.name)),
            server=state.server.to_dict(),
            summary=summary,
            error=state.error,
            last_round_end=last_round.get("end") if last_round else None,
            gpu_util_pct=max(utils) if utils else None,
            last_status=on_this_clock(status_time, store.clock()),
            allocation=self._allocation_status(store, state),
        )
        if phase != state.phase:
            _record_phase(store, state, phase, summary)
        return status


    def _allocation_status(self, store: StateStore, state: RunState) -> AllocationStatus | None:
        """The run's Slurm job (None for hosts and clouds, and once torn down), asked at most
        every ``monitor.allocation.ALLOCATION_CHECK_S``: a follower calls this every few seconds."""
        from fedctl.monitor.allocation import AllocationReader

        if state.phase == Phase.TORN_DOWN:
            return None
        if self._allocation is None or self._allocation_run != state.run_id:
            self._allocation = AllocationReader.for_run(state, store) or False
            self._allocation_run = state.run_id
        return self._allocation.get() if self._allocation else None


def observe(store: StateStore, state: RunState) -> RunStatus:
    """Probe the hosts once and derive the run's phase (``StatusObserver`` for repeated calls)."""
    return StatusObserver(state).observe(store, state)


def server_metrics(store: StateStore, state: RunState) -> MetricsLog | None:
    """The server's whole metrics.jsonl while the run's files are on it (None when unreachable or
    not started); for the cost estimate from measured rounds."""
    from fedctl.deploy import read_file

    server = server_record(state)
    path = _metrics_path(state, server)
    if server is None or path is None or state.started_at is None or server.status == model.HostStatus.TORN_DOWN:
        return None
    with open_fleet(store, [server]) as fleet:
        res = fleet.map(lambda c: read_file(c, path))
    text = res[0].value if res and res[0].ok else None
    return parse_metrics(text) if text else None


def _record_phase(store: StateStore, state: RunState, phase: str, summary: dict[str, Any] | None) -> None:
    """Persist a phase learned by observation, unless another fedctl is busy with the state."""
    try:
        with store.lock():
            fresh = store.load()
            if fresh.run_id != state.run_id or fresh.phase not in LIVE_PHASES:
                return
            fresh.transition(phase)
            fresh.finished_at = fresh.finished_at or store.clock()
            if phase == Phase.FAILED and not fresh.error:
                fresh.error = (summary or {}).get("reason") or "the server exited without a summary"
            fresh.event(f"observed: run {phase}", store.clock)
            store.save(fresh)
            state.phase, state.finished_at, state.error = fresh.phase, fresh.finished_at, fresh.error
    except StateLockedError:
        pass  # the fedctl holding the lock will record it
