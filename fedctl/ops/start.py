"""``start``: push the payload, config and a fresh run token; start the server, wait until it is
ready, start the clients pointed at it; record every pid.

Every process is recorded as ``starting`` (with its pid file path) BEFORE it is spawned, and its pid
right after, so a fedctl killed in the middle leaves nothing untracked: teardown stops what the
state, the pid files or the run mark in a process's environment find (``deploy.IDENT_SH``).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fedctl.connectors.base import Connector
from fedctl.deploy import (
    ProcRef,
    is_alive,
    make_dirs,
    push_files,
    record_spawn,
    ref_of,
    remote_payload_dir,
    remote_run_dir,
    spawn_detached,
)
from fedctl.errors import PayloadError, UsageError
from fedctl.ops.common import Progress, open_fleet, quiet, server_record
from fedctl.model import LIVE_PHASES, HostStatus, Phase, ProcStatus
from fedctl.ops.procenv import process_env
from fedctl.ops.readiness import client_exit_reason, exited_clients, wait_connected, wait_ready  # noqa: F401 - resume imports wait_ready here
from fedctl.runtypes import ServerEndpoint
from fedctl.shell import quote
from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore, new_run_id


@dataclass
class StartReport:
    state: RunState
    pushed: dict[str, int] = field(default_factory=dict)  # start: host -> files sent (others unchanged)
    restarted: dict[str, int] = field(default_factory=dict)  # start --resume: host -> client processes restarted
    failures: dict[str, str] = field(default_factory=dict)  # host -> reason

    @property
    def ok(self) -> bool:
        return not self.failures


def command_values(state: RunState, rec: HostRecord) -> dict[str, Any]:
    """Placeholder values for the manifest's command templates on one host (from the resolved
    experiment recorded in the state)."""
    run_dir = remote_run_dir(rec, state.run_id)
    server = state.experiment.server
    return {
        "python": rec.python or rec.info.python,
        "payload_dir": remote_payload_dir(rec, state.payload_name),
        "run_dir": run_dir,
        "config": posixpath.join(run_dir, "config.yaml"),
        "token_file": posixpath.join(run_dir, "token"),
        "workdir": rec.workdir,
        "run_id": state.run_id,
        # on a laptop the server listens on loopback only; elsewhere where the config says
        "bind": "127.0.0.1" if rec.info.kind == "local" else server.bind,
        "port": server.port_number,
    }


def client_command(manifest: Any, state: RunState, rec: HostRecord, proc: ProcessRecord) -> str:
    """The shell command of one client process, pointed at the running server."""
    return manifest.render(
        manifest.client.command,
        **{**command_values(state, rec), "port": state.server.port},
        process=proc.index,
        server_address=state.server.address,
        client_ids=",".join(str(i) for i in proc.client_ids),
    )


def _prepare_host(
    conn: Connector, state: RunState, rec: HostRecord, files: list, shipped: list, token: bytes
) -> int:
    """Push payload files and the files the config names (changed ones only), the host's
    config.yaml and the 0600 token. Returns how many files were sent."""
    from fedctl.shipping import config_for_host, ship

    run_dir = remote_run_dir(rec, state.run_id)
    payload_dir = remote_payload_dir(rec, state.payload_name)
    # what this creates is recorded in the host record, so teardown removes exactly that
    make_dirs(conn, rec, trees=[payload_dir, run_dir])
    report = push_files(conn, files, payload_dir)
    sent = ship(conn, rec, shipped)
    # JSON is also YAML: hosts without PyYAML can still read it (the payload falls back to json)
    config = (json.dumps(config_for_host(state.experiment.rendered(), shipped, rec), indent=2) + "\n").encode()
    res = conn.run(f"chmod 700 {quote(run_dir)}", timeout=60)
    if not res.ok:
        raise PayloadError(f"{rec.name}: cannot create {run_dir}: {res.stderr.strip()}")
    conn.put_bytes(config, posixpath.join(run_dir, "config.yaml"), mode=0o644)
    conn.put_bytes(token, posixpath.join(run_dir, "token"), mode=0o600)
    return len(report.sent) + sent


def begin_new_run(store: StateStore, state: RunState, progress: Progress = quiet) -> None:
    """Give a state whose previous run already started a new run id (collecting the old results)."""
    if state.started_at is None:
        return
    from fedctl.ops.collect import collect_raw

    old = state.run_id
    try:
        collect_raw(store, state, progress=progress)
    except Exception as exc:  # noqa: BLE001 - collection is best effort here; teardown retries it
        progress(f"could not collect results of run {old}: {exc}")
    state.previous_runs.append(old)
    state.run_id = new_run_id(store.clock)
    state.started_at = state.finished_at = None
    state.results_dir = None
    for rec in state.hosts:
        rec.processes = []
    progress(f"new run {state.run_id} (previous: {old})")


def start(
    store: StateStore,
    state: RunState,
    experiment: Any,
    progress: Progress = quiet,
    ready_timeout: float = 300.0,
    connect_timeout: float = 600.0,
) -> StartReport:
    """Start the run's server and clients. The caller holds the state lock. ``connect_timeout``
    bounds the wait for clients when the payload reports them (the payload's own, shorter,
    timeout normally ends it first)."""
    if any(r.status != HostStatus.PROVISIONED for r in state.hosts):
        bad = ", ".join(f"{r.name} ({r.status})" for r in state.hosts if r.status != HostStatus.PROVISIONED)
        raise UsageError(f"not every host is provisioned: {bad}", hint="run `fedctl provision` again")
    if state.phase in LIVE_PHASES:
        raise UsageError(
            f"run {state.run_id} is {state.phase}",
            hint="`fedctl stop` it first, or `fedctl status` to see it",
        )
    begin_new_run(store, state, progress)
    manifest = experiment.payload
    state.experiment = experiment.run_config()
    state.rounds = experiment.rounds
    state.transition(Phase.STARTING)
    state.error = None
    state.event("start requested", store.clock)
    store.save(state)

    from pathlib import Path

    from fedctl.shipping import find_files

    base = Path(state.config_path).parent if state.config_path else store.root.parent
    shipped, notes = find_files(state.experiment.rendered(), manifest.config_files, base)
    for note in notes:
        progress(note)
    token = secrets.token_urlsafe(32).encode()  # lives only in 0600 files on the hosts
    files = [(f.rel_path, str(f.abs_path), f.sha256) for f in manifest.files()]
    report = StartReport(state)
    server_rec = server_record(state)
    assert server_rec is not None
    plan_procs = {r.name: r.client_processes for r in state.hosts}

    with open_fleet(store, state.hosts) as fleet:
        progress(f"pushing payload {manifest.name} to {len(state.hosts)} host(s)")
        pushed = fleet.map(lambda c: _prepare_host(c, state, state.host(c.host.name), files, shipped, token))
        for r in pushed:
            if r.ok:
                report.pushed[r.host] = r.value
            else:
                report.failures[r.host] = r.error or "push failed"
        if report.failures:
            return _fail(store, state, report, "payload push failed")

        # -- the server -----------------------------------------------------------------------
        values = command_values(state, server_rec)
        log = manifest.render_path(manifest.server.log, **values)
        proc = ProcessRecord(role="server", index=0, pidfile=posixpath.join(values["run_dir"], "server.pid"), log=log)
        server_rec.processes.append(proc)
        store.save(state)  # intent: a server is being started here
        progress(f"starting the server on {server_rec.name}")
        conn = fleet.connector(server_rec.name)
        try:
            record_spawn(proc, spawn_detached(
                conn, manifest.render(manifest.server.command, **values), values["run_dir"], proc.pidfile, log,
                env=process_env(state, server_rec, proc),
            ))
            proc.started_at = store.clock()
            store.save(state)
            ready = wait_ready(
                conn, manifest.render_path(manifest.server.ready_file, **values), ref_of(proc), log, ready_timeout
            )
        except Exception as exc:  # noqa: BLE001 - any failure here is reported per host
            proc.status, proc.error = ProcStatus.FAILED, str(exc)
            report.failures[server_rec.name] = str(exc)
            return _fail(store, state, report, "the server did not start")
        proc.status = ProcStatus.RUNNING
        address = "127.0.0.1" if server_rec.info.kind == "local" else (
            server_rec.info.private_address or server_rec.info.address
        )
        state.server = ServerEndpoint(host=server_rec.name, address=address, port=int(ready["port"]))
        store.save(state)
        progress(f"server ready on {address}:{ready['port']}")
        if manifest.server.share:  # e.g. the run CA's certificate: delivered by fedctl, not the network
            from fedctl.ops.share import share_server_files

            report.failures.update(share_server_files(
                fleet, manifest, conn, values["run_dir"],
                {r.name: command_values(state, r)["run_dir"] for r in state.hosts
                 if plan_procs.get(r.name) and r.name != server_rec.name}))
            if report.failures:
                return _fail(store, state, report, "the server's shared files could not be delivered")

        # -- the clients ----------------------------------------------------------------------
        client_hosts = [r for r in state.hosts if plan_procs.get(r.name)]
        for rec in client_hosts:
            vals = command_values(state, rec)
            for k, ids in enumerate(plan_procs[rec.name]):
                rec.processes.append(
                    ProcessRecord(
                        role="client",
                        index=k,
                        client_ids=list(ids),
                        gpu=rec.client_gpus[k] if k < len(rec.client_gpus) else None,
                        pidfile=posixpath.join(vals["run_dir"], f"client-{k}.pid"),
                        log=manifest.render_path(manifest.client.log, **vals, process=k),
                    )
                )
        store.save(state)  # intent: these client processes are being started

        def start_clients(c: Connector) -> list[int]:
            rec = state.host(c.host.name)
            vals = command_values(state, rec)
            pids = []
            for proc in (p for p in rec.processes if p.role == "client"):
                record_spawn(proc, spawn_detached(c, client_command(manifest, state, rec, proc), vals["run_dir"],
                                                  proc.pidfile, proc.log, env=process_env(state, rec, proc)))
                proc.started_at = store.clock()
                pids.append(proc.pid)
            return pids

        progress(f"starting {sum(len(p) for p in plan_procs.values())} client process(es) on {len(client_hosts)} host(s)")
        for r in fleet.map(start_clients, hosts=[h.name for h in client_hosts]):
            if not r.ok:
                report.failures[r.host] = r.error or "client start failed"
                for p in state.host(r.host).processes:
                    if p.role == "client" and p.pid is None:
                        p.status, p.error = ProcStatus.FAILED, r.error
        store.save(state)
        if report.failures:
            return _fail(store, state, report, "some clients did not start")

        # a client that dies at once (bad config, missing module) should fail start, not watch
        time.sleep(1.0)
        gone: dict[str, list[ProcessRecord]] = {}
        for r in fleet.map(lambda c: exited_clients(c, state.host(c.host.name)),
                           hosts=[h.name for h in client_hosts]):
            if not r.ok:
                report.failures[r.host] = r.error or "unreachable"
            elif r.value:
                gone[r.host] = r.value
        # the server is asked after the clients: a client gone while it still runs is a failed
        # start; with the server gone too, a tiny run is over (its clients left because it ended)
        if gone and is_alive(conn, ref_of(proc)):
            for host, procs in gone.items():
                report.failures[host] = client_exit_reason(fleet.connector(host), procs)
        if not report.failures and manifest.server.reports_clients:
            progress(f"waiting until the server has heard from all {state.clients} clients")
            report.failures.update(wait_connected(fleet, state, server_rec, proc, client_hosts, connect_timeout))
    for rec in state.hosts:
        for p in rec.processes:
            if p.status == ProcStatus.STARTING and p.pid:
                p.status = ProcStatus.RUNNING
    if report.failures:
        return _fail(store, state, report, "some clients exited right after starting")
    start_watchdogs(store, state, report, progress)
    if report.failures:
        return _fail(store, state, report, "the budget guard could not be started")
    state.transition(Phase.RUNNING)
    state.started_at = store.clock()
    state.event("running", store.clock)
    store.save(state)
    return report


def start_watchdogs(store: StateStore, state: RunState, report: StartReport, progress: Progress) -> None:
    """Start the budget watchdog on every host, so the budget holds with this laptop closed.

    Only when there is something to guard: a budget, or ``on_finish: poweroff`` (which also powers
    off a finished run that nobody tore down). A host whose watchdog cannot start is a failure of
    start: a run must not look guarded when it is not.
    """
    from fedctl import budget

    if not state.experiment.budget.active and state.experiment.on_finish != "poweroff":
        return
    script = budget.watchdog_script()
    now = store.clock()

    def one(c: Connector) -> ProcRef:
        rec = state.host(c.host.name)
        run_dir = remote_run_dir(rec, state.run_id)
        script_path = posixpath.join(run_dir, "fedctl-watchdog.py")
        spec_path = posixpath.join(run_dir, budget.WATCHDOG_SPEC_FILE)
        c.put_bytes(script, script_path, mode=0o644)
        c.put_bytes(json.dumps(budget.watchdog_spec(state, rec, now=now)).encode(), spec_path, mode=0o600)
        return spawn_detached(
            c,
            budget.watchdog_command(rec.info.python, script_path, spec_path),
            run_dir,
            posixpath.join(run_dir, budget.WATCHDOG_PID_FILE),
            posixpath.join(run_dir, budget.WATCHDOG_LOG_FILE),
        )

    limits = dataclasses.asdict(state.experiment.budget)
    progress(f"starting budget watchdogs ({', '.join(f'{k}={v:g}' for k, v in limits.items() if v)})")
    with open_fleet(store, state.hosts) as fleet:
        for r in fleet.map(one):
            if not r.ok:
                report.failures[r.host] = f"budget watchdog did not start: {r.error}"


def _fail(store: StateStore, state: RunState, report: StartReport, why: str) -> StartReport:
    """Record a failed start. Started processes stay tracked so stop/teardown can end them."""
    state.transition(Phase.FAILED)
    state.error = f"{why}: " + "; ".join(f"{h}: {e}" for h, e in report.failures.items())
    state.event(state.error, store.clock)
    store.save(state)
    return report
