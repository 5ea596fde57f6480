"""``start --resume``: bring a run whose processes died (or were stopped) back, same run id.

The server is restarted with the manifest's ``resume_flag`` on the port it had (the payload goes
on from its newest checkpoint when it saved one; fedctl says how many rounds its metrics show as
done), so the clients that are still alive reconnect on their own; dead client processes are
started again with their client ids; the budget watchdogs are restarted with what has already
been billed. Config, token and payload on the hosts are the ones the run started with.
"""

from __future__ import annotations

import posixpath
from typing import Any

from fedctl.connectors.base import Connector
from fedctl.deploy import (
    parse_pidfile,
    pids_alive,
    read_file,
    record_spawn,
    ref_of,
    remote_run_dir,
    spawn_detached,
    stop_pids,
)
from fedctl.errors import PayloadError, UsageError
from fedctl.model import Phase
from fedctl.ops.common import Progress, open_fleet, quiet, server_record
from fedctl.ops.start import (
    StartReport,
    _fail,
    client_command,
    command_values,
    start_watchdogs,
    wait_ready,
)
from fedctl.ops.procenv import process_env
from fedctl.ops.status import parse_metrics_tail
from fedctl.shell import quote
from fedctl.state import RunState, StateStore


def _metrics(conn: Connector, metrics_path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(latest round, summary) of the server's metrics.jsonl so far."""
    return parse_metrics_tail(read_file(conn, metrics_path) or "")


def restart_note(host: str, port: int, flag: str, last_round: int | None, rounds: int) -> str:
    """What a resume really does, for the progress line: a server with no finished round has no
    checkpoint to go on from, so the run starts again at round 1 (not "from its last checkpoint")."""
    head = f"restarting the server on {host} (port {port}) with {flag}: "
    if not last_round:
        return head + "no round had finished, so the run starts again from round 1"
    return head + (f"{last_round} of {rounds} round(s) had finished; the payload goes on from its newest"
                   " checkpoint (from round 1 if it saved none)")


def resume(store: StateStore, state: RunState, progress: Progress = quiet, ready_timeout: float = 300.0) -> StartReport:
    """Restart the dead processes of the current run. The caller holds the state lock."""
    from fedctl.budget import WATCHDOG_PID_FILE
    from fedctl.payload import load_manifest

    if state.started_at is None and not any(r.processes for r in state.hosts):
        raise UsageError(f"run {state.run_id} was never started: nothing to resume", hint="`fedctl start`")
    if state.phase in (Phase.TEARING_DOWN, Phase.TORN_DOWN):
        raise UsageError(f"run {state.run_id} is {state.phase}: nothing to resume")
    manifest = load_manifest(state.payload_dir)
    if not manifest.server.resume_flag:
        raise PayloadError(f"payload {manifest.name} has no server.resume_flag: it cannot resume a run")
    server_rec = server_record(state)
    assert server_rec is not None
    report = StartReport(state)

    with open_fleet(store, state.hosts) as fleet:
        alive: dict[str, dict[int, bool]] = {}
        for r in fleet.map(lambda c: pids_alive(c, [ref_of(p) for p in state.host(c.host.name).processes if p.pid])):
            if not r.ok:
                raise UsageError(f"{r.host} is unreachable ({r.error}): cannot resume the run now")
            alive[r.host] = r.value
        sconn = fleet.connector(server_rec.name)
        values = command_values(state, server_rec)
        metrics = manifest.render_path(manifest.server.metrics, **values)
        last, summary = _metrics(sconn, metrics)
        if summary is not None and summary.get("status", "finished") == "finished":
            raise UsageError(f"run {state.run_id} already finished: nothing to resume",
                             hint="`fedctl teardown` collects its results")

        state.transition(Phase.STARTING)
        state.event("resume requested", store.clock)
        store.save(state)
        server = next(p for p in server_rec.processes if p.role == "server")
        if not alive[server_rec.name].get(server.pid or -1, False):
            port = state.server.port or int(values["port"])
            ready_file = manifest.render_path(manifest.server.ready_file, **values)
            sconn.run(f"rm -f {quote(ready_file)}", timeout=30)  # the old one names a dead server
            cmd = manifest.render(manifest.server.command, **{**values, "port": port})
            cmd = f"{cmd} {quote(manifest.server.resume_flag)}"
            progress(restart_note(server_rec.name, port, manifest.server.resume_flag,
                                  (last or {}).get("round"), state.rounds))
            server.status, server.error = "starting", None
            try:
                record_spawn(server, spawn_detached(sconn, cmd, values["run_dir"], server.pidfile, server.log,
                                                    env=process_env(state, server_rec, server)))
                server.started_at = store.clock()
                store.save(state)
                ready = wait_ready(sconn, ready_file, ref_of(server), server.log, ready_timeout)
            except Exception as exc:  # noqa: BLE001 - reported like any start failure
                server.status, server.error = "failed", str(exc)
                report.failures[server_rec.name] = str(exc)
                return _fail(store, state, report, "the server did not resume")
            server.status = "running"
            state.server.port = int(ready["port"])
            store.save(state)

        def restart_clients(c: Connector) -> int:
            rec = state.host(c.host.name)
            vals = command_values(state, rec)
            n = 0
            for proc in rec.processes:
                if proc.role != "client" or alive[rec.name].get(proc.pid or -1, False):
                    continue
                cmd = client_command(manifest, state, rec, proc)
                record_spawn(proc, spawn_detached(c, cmd, vals["run_dir"], proc.pidfile, proc.log,
                                                  env=process_env(state, rec, proc)))
                proc.started_at, proc.status, proc.error = store.clock(), "running", None
                n += 1
            return n

        hosts = [r.name for r in state.hosts if any(p.role == "client" for p in r.processes)]
        for r in fleet.map(restart_clients, hosts=hosts):
            if r.ok:
                report.restarted[r.host] = r.value
            else:
                report.failures[r.host] = r.error or "client restart failed"
        store.save(state)
        if report.failures:
            return _fail(store, state, report, "some clients did not restart")

        # The watchdogs get a fresh spec (what has been billed so far); old ones are stopped first.
        def stop_watchdog(c: Connector) -> None:
            run_dir = remote_run_dir(state.host(c.host.name), state.run_id)
            refs = parse_pidfile(read_file(c, posixpath.join(run_dir, WATCHDOG_PID_FILE)) or "", run_dir)
            stop_pids(c, refs, grace_s=5)

        fleet.map(stop_watchdog)
    start_watchdogs(store, state, report, progress)
    if report.failures:
        return _fail(store, state, report, "the budget guard could not be restarted")
    state.transition(Phase.RUNNING)
    state.error = None
    state.event("resumed", store.clock)
    store.save(state)
    return report
