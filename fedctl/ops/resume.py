"""``start --resume``: bring a run whose processes died (or were stopped) back, same run id.

The server is restarted with the manifest's ``resume_flag`` on the port it had (the payload goes
on from its newest checkpoint when it saved one; fedctl says how many rounds its metrics show as
done), so the clients that are still alive reconnect on their own; dead client processes are
started again with their client ids; the budget watchdogs are restarted with what has already
been billed. Config, token and payload on the hosts are the ones the run started with.

A run whose machines are gone for good (a Slurm job ended by its time limit, preemption, a node
failure: ``Provider.ended``) resumes in new ones when its provider can ``reallocate`` (Slurm: a new
allocation for the same run, its hosts on the new nodes, same workdirs on the shared filesystem):
every process is then started again, the server from its checkpoint.
"""

from __future__ import annotations

import posixpath
from typing import Any, Protocol, Sequence, runtime_checkable

from fedctl.connectors.base import Connector, HostInfo
from fedctl.deploy import (
    ProcRef,
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
from fedctl.model import HostStatus, Phase
from fedctl.ops.common import Progress, host_infos, open_fleet, quiet, server_record
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


@runtime_checkable
class Reallocating(Protocol):
    """A provider that can give a run new machines once its own ended (``SlurmProvider``)."""

    def files_connector(self, info: HostInfo) -> Connector:
        """A connector to ``info``'s files while its machine is gone (the shared filesystem)."""

    def reallocate(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """New machines for ``hosts`` (journaled into the state as provision does)."""


def _renew(store: StateStore, state: RunState, manifest: Any, progress: Progress) -> bool:
    """When the run's machines are gone for good, new ones for it (the provider's ``reallocate``):
    True then, False while they still run. UsageError for a provider that cannot, or a run that
    already finished (its files say so, read without its machines)."""
    from fedctl.providers import for_run

    provider = for_run(state, store, progress)
    live = [r for r in state.hosts if r.status != HostStatus.TORN_DOWN]
    why = provider.ended([r.info for r in live])
    if not why:
        return False
    if not isinstance(provider, Reallocating):
        raise UsageError(f"run {state.run_id} cannot resume: its machines are gone ({why})",
                         hint="`fedctl teardown` collects what is left")
    server_rec = server_record(state)
    assert server_rec is not None
    with provider.files_connector(host_infos([server_rec])[0]) as files:
        path = manifest.render_path(manifest.server.metrics, **command_values(state, server_rec))
        _last, summary = _metrics(files, path)
    if summary is not None and summary.get("status", "finished") == "finished":
        raise UsageError(f"run {state.run_id} already finished: nothing to resume ({why})",
                         hint="`fedctl teardown` collects its results")
    progress(f"{why}: resuming run {state.run_id} in a new allocation")
    state.event(f"resume in a new allocation: {why}", store.clock)
    store.save(state)
    provider.reallocate([r.info for r in live])  # each host's new machine is journaled into the state
    return True


def _spawn_again(conn: Connector, command: str, cwd: str, pidfile: str, log: str, env: dict[str, str]) -> ProcRef:
    """``spawn_detached`` of a process that died, its old pid file removed first: a connector
    that waits for the new process's pid file (a Slurm node's) would otherwise read the dead one's."""
    conn.run(f"cd {quote(cwd)} && rm -f {quote(pidfile)}", timeout=30)
    return spawn_detached(conn, command, cwd, pidfile, log, env=env)


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
    renewed = _renew(store, state, manifest, progress)

    with open_fleet(store, state.hosts) as fleet:
        # on new machines every process of the old ones ended with them: nothing to ask
        alive: dict[str, dict[int, bool]] = {r.name: {} for r in state.hosts} if renewed else {}
        if not renewed:
            for r in fleet.map(lambda c: pids_alive(c, [ref_of(p) for p in state.host(c.host.name).processes
                                                        if p.pid])):
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
            # the port the clients still dial; on new machines the configured one (they all restart)
            port = int(values["port"]) if renewed else state.server.port or int(values["port"])
            ready_file = manifest.render_path(manifest.server.ready_file, **values)
            sconn.run(f"rm -f {quote(ready_file)}", timeout=30)  # the old one names a dead server
            cmd = manifest.render(manifest.server.command, **{**values, "port": port})
            cmd = f"{cmd} {quote(manifest.server.resume_flag)}"
            progress(restart_note(server_rec.name, port, manifest.server.resume_flag,
                                  (last or {}).get("round"), state.rounds))
            server.status, server.error = "starting", None
            try:
                record_spawn(server, _spawn_again(sconn, cmd, values["run_dir"], server.pidfile, server.log,
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
            # where the clients reach it now (as start says it): a new allocation's node may be
            # another one, also when an earlier resume got the allocation and was killed before this
            info = state.host(server_rec.name).info
            state.server.address = "127.0.0.1" if info.kind == "local" else info.private_address or info.address
            store.save(state)

        def restart_clients(c: Connector) -> int:
            rec = state.host(c.host.name)
            vals = command_values(state, rec)
            n = 0
            for proc in rec.processes:
                if proc.role != "client" or alive[rec.name].get(proc.pid or -1, False):
                    continue
                cmd = client_command(manifest, state, rec, proc)
                record_spawn(proc, _spawn_again(c, cmd, vals["run_dir"], proc.pidfile, proc.log,
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
            pidfile = posixpath.join(run_dir, WATCHDOG_PID_FILE)
            refs = parse_pidfile(read_file(c, pidfile) or "", run_dir)
            if not stop_pids(c, refs, grace_s=5):
                # gone: its pid file goes too, so the new watchdog's is the one read (a Slurm node's
                # connector waits for the pid file to appear)
                c.run(f"rm -f {quote(pidfile)}", timeout=30)

        fleet.map(stop_watchdog)
    start_watchdogs(store, state, report, progress)
    if report.failures:
        return _fail(store, state, report, "the budget guard could not be restarted")
    state.transition(Phase.RUNNING)
    state.error = None
    state.event("resumed", store.clock)
    store.save(state)
    return report
