"""``stop``: end the run's processes on every host (TERM, then KILL after a grace period).

A process is found three ways, so none escapes: the pids in the state, the pid files in the run
dirs (a fedctl killed between spawn and save), and the run mark every process fedctl starts carries
in its environment (``deploy.RUN_MARK_ENV``, children included). A pid is signalled only while it is
still the process fedctl started (start time + run mark, checked on the host in the same command as
the signal), so an unrelated process that reused a recorded pid survives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.connectors.base import Connector
from fedctl.deploy import read_pidfiles, ref_of, remote_run_dir, stop_pids
from fedctl.model import LIVE_PHASES, LIVE_PROCS, HostStatus, Phase, ProcStatus
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
    refs = {ref_of(p) for p in rec.processes if p.pid}
    if rec.workdir is None:
        rec.workdir = conn.expand(rec.info.workdir)
    marks = run_marks(state, rec)
    for mark in marks:
        refs.update(read_pidfiles(conn, mark))
    survivors = stop_pids(conn, refs, scan_marks=marks, grace_s=grace_s)
    return len({r.pid for r in refs}), survivors


def run_marks(state: RunState, rec: HostRecord) -> list[str]:
    """The run marks of every run started on that host: its run dirs."""
    return [remote_run_dir(rec, rid) for rid in run_ids(state)]


def stop(store: StateStore, state: RunState, grace_s: float = 10.0, progress: Progress = quiet) -> StopReport:
    """Stop the run's processes; hosts stay provisioned. The caller holds the state lock."""
    report = StopReport()
    recs = [r for r in state.hosts if r.status != HostStatus.TORN_DOWN]
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
            if p.status in LIVE_PROCS:
                p.status = ProcStatus.STOPPED
    if state.phase in LIVE_PHASES:
        state.transition(Phase.STOPPED)
    state.event("stopped" if report.ok else "stop incomplete", store.clock)
    store.save(state)
    return report
