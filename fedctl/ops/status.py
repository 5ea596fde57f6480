"""``status``: where the run is (phase, round k of R, accuracy) and, per host, what is alive.

Read-only over the network: one round trip per host for liveness, one more on the server for the
tail of metrics.jsonl. The phase is derived from what is observed (the server's summary line, dead
processes) and written back when no other fedctl holds the lock.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

from fedctl.connectors.base import Connector
from fedctl.deploy import pids_alive, ref_of, remote_run_dir, tail_file
from fedctl.errors import StateLockedError
from fedctl.ops.common import open_fleet, server_record
from fedctl.state import RunState, StateStore


@dataclass
class HostStatus:
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
    hosts: list[HostStatus]
    server: dict[str, Any]
    summary: dict[str, Any] | None = None
    error: str | None = None
    last_round_end: float | None = None  # server clock: when the latest round completed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_metrics_tail(text: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(last round line, summary line) of the given metrics.jsonl lines; bad lines are skipped."""
    from fedctl.cost import parse_jsonl

    last_round = summary = None
    for rec in parse_jsonl(text):
        if rec.get("type") == "summary":
            summary = rec
        elif rec.get("type", "round") == "round" and "round" in rec:
            last_round = rec
    return last_round, summary


def _probe(conn: Connector, state: RunState, is_server: bool) -> dict[str, Any]:
    rec = state.host(conn.host.name)
    procs = [p for p in rec.processes if p.pid]
    alive = pids_alive(conn, [ref_of(p) for p in procs])
    out: dict[str, Any] = {"alive": {p.label: alive.get(p.pid, False) for p in procs}}
    if is_server and rec.workdir:
        out["metrics"] = tail_file(conn, posixpath.join(remote_run_dir(rec, state.run_id), "metrics.jsonl"), 50)
    return out


def observe(store: StateStore, state: RunState) -> RunStatus:
    """Probe the hosts and derive the run's phase."""
    server = server_record(state)
    recs = [r for r in state.hosts if r.status not in ("torn_down",)]
    hosts: list[HostStatus] = []
    last_round = summary = None
    if recs and state.phase not in ("provisioning", "torn_down"):
        with open_fleet(store, recs) as fleet:
            results = fleet.map(lambda c: _probe(c, state, server is not None and c.host.name == server.name))
        for r in results:
            rec = state.host(r.host)
            hs = HostStatus(rec.name, rec.role, reachable=r.ok, status=rec.status, error=None if r.ok else r.error)
            if r.ok:
                hs.alive = r.value["alive"]
                if "metrics" in r.value:
                    last_round, summary = parse_metrics_tail(r.value["metrics"])
            hosts.append(hs)
    elif state.results_dir:
        # torn down (or never started): what was collected locally is the last word on the run
        from pathlib import Path

        collected = Path(state.results_dir) / "metrics.jsonl"
        if collected.is_file():
            last_round, summary = parse_metrics_tail(collected.read_text(errors="replace"))
    listed = {h.name for h in hosts}
    for rec in state.hosts:
        if rec.name not in listed:
            hosts.append(HostStatus(rec.name, rec.role, reachable=None, status=rec.status, error=rec.error))

    phase = state.phase
    if phase in ("starting", "running"):
        server_alive = next((h.alive.get("server") for h in hosts if server and h.name == server.name), None)
        if summary is not None:
            phase = "finished" if summary.get("status", "finished") == "finished" else "failed"
        elif server_alive is False:
            phase = "failed"
    status = RunStatus(
        run_id=state.run_id,
        phase=phase,
        round=int(last_round["round"]) if last_round else 0,
        rounds=state.rounds,
        accuracy=last_round.get("accuracy") if last_round else None,
        loss=last_round.get("loss") if last_round else None,
        hosts=sorted(hosts, key=lambda h: [x.name for x in state.hosts].index(h.name)),
        server=dict(state.server),
        summary=summary,
        error=state.error,
        last_round_end=last_round.get("end") if last_round else None,
    )
    if phase != state.phase:
        _record_phase(store, state, phase, summary)
    return status


def server_metrics(store: StateStore, state: RunState) -> list[dict[str, Any]] | None:
    """The server's whole metrics.jsonl while the run's files are on it (None when unreachable or
    not started); for the cost estimate from measured rounds."""
    from fedctl.cost import parse_jsonl
    from fedctl.deploy import read_file

    server = server_record(state)
    if server is None or not server.workdir or state.started_at is None or server.status == "torn_down":
        return None
    path = posixpath.join(remote_run_dir(server, state.run_id), "metrics.jsonl")
    with open_fleet(store, [server]) as fleet:
        res = fleet.map(lambda c: read_file(c, path))
    text = res[0].value if res and res[0].ok else None
    return parse_jsonl(text) if text else None


def _record_phase(store: StateStore, state: RunState, phase: str, summary: dict[str, Any] | None) -> None:
    """Persist a phase learned by observation, unless another fedctl is busy with the state."""
    try:
        with store.lock():
            fresh = store.load()
            if fresh.run_id != state.run_id or fresh.phase not in ("starting", "running"):
                return
            fresh.phase = phase
            fresh.finished_at = fresh.finished_at or store.clock()
            if phase == "failed" and not fresh.error:
                fresh.error = (summary or {}).get("reason") or "the server exited without a summary"
            fresh.event(f"observed: run {phase}", store.clock)
            store.save(fresh)
            state.phase, state.finished_at, state.error = fresh.phase, fresh.finished_at, fresh.error
    except StateLockedError:
        pass  # the fedctl holding the lock will record it
