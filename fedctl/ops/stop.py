"""``stop``: end the run's processes on every host (TERM, then KILL after a grace period).

A process is found three ways, so none escapes: the pids in the state, the pid files in the run
dirs (a fedctl killed between spawn and save), and ``pgrep`` for the run id in command lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.connectors.base import Connector
from fedctl.deploy import find_run_pids, read_pidfiles, remote_run_dir, stop_pids
from fedctl.ops.common import Progress, open_fleet, quiet
from fedctl.state import HostRecord, RunState, StateStore


@dataclass
class StopReport:
    stopped: dict[str, int] = field(default_factory=dict)  # host -> processes signalled
    survivors: dict[str, list[int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # host -> reason (unreachable, ...)

    @property
    def ok(self) -> bool:
        return not self.failures and not any(self.survivors.values())


def run_ids(state: RunState) -> list[str]:
    """Every run id started on these hosts (the current one last)."""
    return [*state.previous_runs, state.run_id]


def stop_host(conn: Connector, state: RunState, rec: HostRecord, grace_s: float) -> tuple[int, list[int]]:
    """Stop every process of the state's runs on one host. Returns (signalled, still alive)."""
    pids = {p.pid for p in rec.processes if p.pid}
    if rec.workdir is None:
        rec.workdir = conn.expand(rec.info.workdir)
    for rid in run_ids(state):
        pids.update(read_pidfiles(conn, remote_run_dir(rec, rid)))
    pids.update(find_run_pids(conn, run_ids(state), rec.workdir))
    survivors = stop_pids(conn, pids, grace_s=grace_s)
    return len(pids), survivors


def stop(store: StateStore, state: RunState, grace_s: float = 10.0, progress: Progress = quiet) -> StopReport:
    """Stop the run's processes; hosts stay provisioned. The caller holds the state lock."""
    report = StopReport()
    recs = [r for r in state.hosts if r.status != "torn_down"]
    progress(f"stopping the run's processes on {len(recs)} host(s)")
    with open_fleet(store, recs) as fleet:
        results = fleet.map(lambda c: stop_host(c, state, state.host(c.host.name), grace_s))
    for r in results:
        rec = state.host(r.host)
        if not r.ok:
            report.failures[r.host] = r.error or "unreachable"
            continue
        report.stopped[r.host], report.survivors[r.host] = r.value
        for p in rec.processes:
            if p.status in ("starting", "running"):
                p.status = "stopped"
    if state.phase in ("starting", "running"):
        state.phase = "stopped"
    state.event("stopped" if report.ok else "stop incomplete", store.clock)
    store.save(state)
    return report
