"""Waiting for a started run: the server's ready file, its clients' connections, clients that
exited at once. Each wait fails fast with the log lines that say why."""

from __future__ import annotations

import time
from typing import Any

from fedctl.connectors.base import Connector
from fedctl.contract import parse_ready
from fedctl.deploy import ProcRef, is_alive, pids_alive, read_file, ref_of, tail_file
from fedctl.errors import PayloadError
from fedctl.model import ProcStatus
from fedctl.state import HostRecord, ProcessRecord, RunState


def wait_ready(conn: Connector, ready_file: str, proc: ProcRef, log: str, timeout: float) -> dict[str, Any]:
    """Poll the ready file; fail fast with the log tail when the server process died."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while time.monotonic() < deadline:
        ready = parse_ready(read_file(conn, ready_file))  # None while absent or being written
        if ready is not None:
            return {"port": ready.port, "pid": ready.pid}
        if not is_alive(conn, proc):
            raise PayloadError(
                f"{conn.host.name}: the server exited before it was ready; last log lines:\n"
                + tail_file(conn, log, 15)
            )
        time.sleep(delay)
        # at most half a second late: the clients start when this returns (two cheap reads a try)
        delay = min(delay * 1.5, 0.5)
    raise PayloadError(f"{conn.host.name}: the server was not ready after {timeout:.0f}s (see {log})")


def wait_connected(
    fleet: Any, state: RunState, server_rec: HostRecord, server: ProcessRecord, client_hosts: list[HostRecord],
    timeout: float,
) -> dict[str, str]:
    """Wait until the server's status.json says every client connected (``server.reports_clients``).

    Returns failures per host, empty when all connected. It stops early, with the logs that say why,
    when the server exits (a payload that gives up on its clients says so in its log) or every
    client process of a host is gone; after ``timeout`` it names the hosts that are not there."""
    from fedctl.contract import host_files, parse_status

    sconn = fleet.connector(server_rec.name)
    status_path = host_files(state, server_rec).status
    deadline = time.monotonic() + timeout
    connected = 0
    while time.monotonic() < deadline:
        st = parse_status(read_file(sconn, status_path))
        if st is not None:
            connected = st.connected or 0
            if connected >= state.clients or (st.phase not in (None, "waiting", "starting") and st.round):
                return {}
        if not is_alive(sconn, ref_of(server)):
            out = {server_rec.name: f"the server exited while waiting for its clients ({connected}/{state.clients} "
                   f"connected): {tail_file(sconn, server.log, 8).strip()[-800:]}"}
            out.update(_client_tails(fleet, client_hosts))
            return out
        # one round trip per host: is any of its client processes still there?
        gone = [r for r in client_hosts if not any(pids_alive(
            fleet.connector(r.name), [ref_of(p) for p in r.processes if p.role == "client" and p.pid]).values())]
        if gone:
            return _client_tails(fleet, gone, why="every client process of this host exited")
        time.sleep(1.0)
    out = {server_rec.name: f"only {connected} of {state.clients} clients connected within {timeout:.0f} s"}
    out.update(_client_tails(fleet, client_hosts))
    return out


def _client_tails(fleet: Any, hosts: list[HostRecord], why: str = "its clients did not connect") -> dict[str, str]:
    """Per host, why and the last lines of its first client log (what a client says when it cannot connect)."""
    out = {}
    for rec in hosts:
        procs = [p for p in rec.processes if p.role == "client"]
        tail = tail_file(fleet.connector(rec.name), procs[0].log, 6).strip()[-600:] if procs else ""
        out[rec.name] = f"{why}: {tail}" if tail else why
    return out


def exited_clients(conn: Connector, rec: HostRecord) -> list[ProcessRecord]:
    """The client processes of the host that are gone already (marked exited). Whether that is a
    failed start depends on the server, asked after this: see ``client_exit_reason``."""
    procs = [p for p in rec.processes if p.role == "client" and p.pid]
    alive = pids_alive(conn, [ref_of(p) for p in procs])
    gone = [p for p in procs if not alive.get(p.pid, False)]
    for p in gone:
        p.status = ProcStatus.EXITED
    return gone


def client_exit_reason(conn: Connector, gone: list[ProcessRecord]) -> str:
    """``gone`` clients exited while the server still runs: a failed start (bad config, a missing
    module, ...). Marks them failed; the reason carries the first one's log tail."""
    for p in gone:
        p.status = ProcStatus.FAILED
    return f"{gone[0].label} exited: {tail_file(conn, gone[0].log, 8).strip()[-600:]}"
