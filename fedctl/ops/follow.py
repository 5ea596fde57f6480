"""Following a started run: its rounds, its dead client processes, and the budget guards.

The guards' inputs (when the latest round ended, when the server last rewrote status.json, how busy
the run's GPUs are) are computed here once, from whichever view the caller has: the live screen's
snapshot or the plain follower's status.
Both views read the GPUs, so the idle guard counts GPU work with or without a terminal.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from typing import Any, Callable

from fedctl.model import LIVE_PHASES
from fedctl.monitor.allocation import ALLOCATION_CHECK_S
from fedctl.ops.common import open_fleet, server_record
from fedctl.state import RunState, StateStore


@dataclass(frozen=True)
class FollowEvent:
    """What the plain (no terminal) follower reports: a new round, or newly dead client processes."""

    round: int | None = None
    rounds: int = 0
    accuracy: float | None = None
    phase: str = ""
    dead: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardInputs:
    """What the budget guards look at besides the state: when the latest round ended and when the
    server last rewrote status.json (both the server's clock, never later than this machine's now;
    None when unknown), and the busiest GPU's utilisation (None: no GPU reported). status.json's
    time is what the watchdog on the server host counts as the clients' progress, so fedctl counts
    it too: a long round whose clients report progress is not idle for either enforcer."""

    last_round_end: float | None = None
    gpu_util_pct: float | None = None
    last_status: float | None = None

    @classmethod
    def of_status(cls, st: Any) -> "GuardInputs":
        """From a ``fedctl.ops.status.RunStatus`` (the plain follower's view)."""
        return cls(st.last_round_end, st.gpu_util_pct, st.last_status)

    @classmethod
    def of_snapshot(cls, snap: Any, status: Any = None) -> "GuardInputs":
        """From a ``fedctl.monitor.snapshot.Snapshot`` (the live screen's view) and the monitor's
        last ``contract.ServerStatus`` (None: no status.json read)."""
        age = snap.federation.round_age_s
        utils = [g.util_pct for h in snap.hosts for g in h.gpu.gpus if g.util_pct is not None]
        return cls(snap.now - age if age is not None else None, max(utils) if utils else None,
                   on_this_clock(status.time if status is not None else None, snap.now))


def on_this_clock(server_time: float | None, now: float) -> float | None:
    """A time the server wrote, as this machine's clock reads it: the way the monitor's
    ``round_age_s`` treats a round's end (an age never below 0, so never later than ``now``)."""
    return None if server_time is None else now - max(0.0, now - server_time)


#: how often a follower asks the provider whether the run's machines ended (a squeue call on Slurm):
#: the cadence at which watch and status read the job too (one number for both)
ENDED_CHECK_S = ALLOCATION_CHECK_S
_ended_checked: dict[str, float] = {}


def machines_ended(store: StateStore, state: RunState) -> Any:
    """A GuardTrip (reason ``ended``) when the provider says the run's machines are gone for good
    (a Slurm job ended by its time limit or preemption), else None; asked at most every
    ENDED_CHECK_S per run. The run then goes through the same collect-and-teardown as a trip."""
    from fedctl.budget import GuardTrip
    from fedctl.providers import for_run

    now = store.clock()
    if now - _ended_checked.get(state.run_id, float("-inf")) < ENDED_CHECK_S:
        return None
    _ended_checked[state.run_id] = now
    why = for_run(state, store).ended([r.info for r in state.hosts])
    if not why:
        return None
    return GuardTrip(reason="ended", message=f"the run's machines are gone: {why}", time=now, value=0.0,
                     limit=0.0, by="provider")


def guard_tripped(store: StateStore, state: RunState, inputs: GuardInputs) -> Any:
    """Check whether the run must stop now: its machines ended (``machines_ended``) or a budget
    guard trips. On a budget trip, record why on the server (``guard.json``, where the payload and
    the report find it). Returns the trip, else None."""
    from fedctl.budget import check_guards
    from fedctl.deploy import remote_run_dir

    ended = machines_ended(store, state)
    if ended is not None:
        return ended
    budget = state.experiment.budget
    if not budget.active:
        return None
    trip = check_guards(budget, state, store.clock(), inputs.last_round_end, inputs.gpu_util_pct,
                        last_status=inputs.last_status)
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

    Each tick probes the hosts (liveness, metrics and GPUs in one round trip) through ``open_fleet``:
    inside a command session that is the session's one connection per host."""
    from fedctl.ops.status import StatusObserver

    last_round = -1
    warned: set[str] = set()
    observer: StatusObserver | None = None
    while True:
        state = store.load()
        observer = observer or StatusObserver(state, gpu=True)
        st = observer.observe(store, state)
        if st.round != last_round:
            report(FollowEvent(round=st.round, rounds=st.rounds, accuracy=st.accuracy, phase=str(st.phase)))
            last_round = st.round
        if st.phase not in LIVE_PHASES:
            return st, None
        dead = {f"{h.name}:{p}" for h in st.hosts for p, ok in h.alive.items() if not ok and p != "server"}
        if dead - warned:
            report(FollowEvent(dead=tuple(sorted(dead - warned))))
            warned |= dead
        trip = guard_tripped(store, state, GuardInputs.of_status(st))
        if trip is not None:
            return st, trip
        sleep(interval)
