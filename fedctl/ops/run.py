"""What ``fedctl run`` does between start and teardown: follow the run, check the budget guards,
finish it the way ``on_finish`` says. The CLI only prints what these report.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable

from fedctl.ops.common import Progress, open_fleet, quiet, server_record
from fedctl.state import RunState, StateStore


@dataclass(frozen=True)
class FollowEvent:
    """What the plain (no terminal) follower reports: a new round, or newly dead client processes."""

    round: int | None = None
    rounds: int = 0
    accuracy: float | None = None
    phase: str = ""
    dead: tuple[str, ...] = ()


def guard_tripped(store: StateStore, state: RunState, last_round_end: float | None, gpu_util: float | None) -> Any:
    """Check the budget guards once; on a trip, record why on the server (``guard.json``, where the
    payload and the report find it) and return the trip, else None."""
    from fedctl.budget import Budget, check_guards
    from fedctl.deploy import remote_run_dir

    budget = Budget.from_experiment(state.experiment)
    if not budget.active:
        return None
    trip = check_guards(budget, state, store.clock(), last_round_end, gpu_util)
    if trip is None:
        return None
    server = server_record(state)
    if server is not None and server.workdir:
        target = posixpath.join(remote_run_dir(server, state.run_id), "guard.json")
        with open_fleet(store, [server]) as fleet:
            fleet.map(lambda c: c.put_bytes(trip.to_json(), target))
    return trip


def follow_plain(
    store: StateStore, interval: float, report: Callable[[FollowEvent], None], sleep: Callable[[float], None] = time.sleep
) -> tuple[Any, Any]:
    """Follow the run until it is no longer starting/running or a budget guard trips, reporting each
    new round and each newly dead client process. Returns (last status, guard trip or None).

    Each tick probes the hosts through ``open_fleet``: inside a command session that is the
    session's one connection per host, not a new handshake every interval."""
    from fedctl.ops.status import StatusObserver

    last_round = -1
    warned: set[str] = set()
    observer: StatusObserver | None = None
    while True:
        state = store.load()
        observer = observer or StatusObserver(state)
        st = observer.observe(store, state)
        if st.round != last_round:
            report(FollowEvent(round=st.round, rounds=st.rounds, accuracy=st.accuracy, phase=st.phase))
            last_round = st.round
        if st.phase not in ("starting", "running"):
            return st, None
        dead = {f"{h.name}:{p}" for h in st.hosts for p, ok in h.alive.items() if not ok and p != "server"}
        if dead - warned:
            report(FollowEvent(dead=tuple(sorted(dead - warned))))
            warned |= dead
        # The round's end is on the server's clock; with no better source, trust it.
        trip = guard_tripped(store, state, st.last_round_end, None)
        if trip is not None:
            return st, trip
        sleep(interval)


def stop_and_collect(store: StateStore, progress: Progress = quiet) -> None:
    """``on_finish: stop``: stop the processes and collect results; the hosts stay provisioned."""
    from fedctl.ops.collect import collect_raw
    from fedctl.ops.stop import stop

    with store.lock():
        state = store.load()
        stop(store, state, progress=progress)
        collect_raw(store, state, progress=progress)
        store.save(state)


def poweroff(store: StateStore) -> list[tuple[str, bool, str]]:
    """``on_finish: poweroff``: power the run's (static) hosts off, never this machine.

    Returns (host, ok, detail) per host; empty for the local provider or when no run is recorded.
    The command (``FEDCTL_POWEROFF_COMMAND`` or ``sudo -n poweroff``) runs detached and delayed, so
    the SSH command returns before the host goes down."""
    from fedctl.budget import DEFAULT_POWEROFF_COMMAND, POWEROFF_ENV

    state = store.load() if store.exists() else None
    if state is None or state.provider == "local":
        return []
    command = os.environ.get(POWEROFF_ENV) or DEFAULT_POWEROFF_COMMAND
    with open_fleet(store, state.hosts) as fleet:
        results = fleet.run(f"nohup sh -c {shlex.quote('sleep 2; ' + command)} >/dev/null 2>&1 &", timeout=30)
    return [(r.host, r.ok, "requested" if r.ok else f"failed: {r.error}") for r in results]
