"""The budget rules as ONE table, run against both enforcers so they cannot disagree.

fedctl applies the budget twice: its own loop calls ``fedctl.budget.check_guards``, and the watchdog
pushed to every host (``budget.watchdog_script()``, i.e. ``fedctl/watchdog.py`` with the metrics reader
inlined) applies its own ``check`` to the spec ``budget.watchdog_spec`` wrote for that host. Each row of
``CASES`` is one situation of a run (budget, time, prices, last round, the server's last status.json
rewrite, GPU utilisation per host, on_finish, safety margin) and the one decision both must reach:
which guard trips, or none.

Idle: the watchdog runs on the server host and cannot see a client's GPU, so a client's work reaches
it the way it reaches the server: the client reports its progress while it trains (fedavg_tf: every
``FEDTF_HEARTBEAT_S``), the server rewrites status.json, and both enforcers count that time
(``status``). A client's GPU busy with nothing the server hears of (not the run's work, or a payload
whose clients report nothing) is what the two still see differently, so no row has it.

The two differ on purpose only in their margins (fedctl trips earlier, so it can still collect
results); the table gives both the same margin, and ``test_fedctl_never_trips_after_the_watchdog``
checks the defaults keep that order.

The run: two hosts (server ``srv``, client ``c1``), both acquired at T0 (billing starts), ``fedctl
start`` at T0 + 900 s, when the watchdogs start. Times are chosen so the costs are exact in binary
floating point, so "exactly at the limit" means exactly.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from fedctl.budget import (
    DEFAULT_MARGIN_S,
    POWEROFF_DELAY_S,
    Budget,
    check_guards,
    watchdog_script,
    watchdog_spec,
)
from fedctl.connectors.base import HostInfo
from fedctl.state import HostRecord, ProcessRecord, RunState

T0 = 1_764_000_000.0
START = 900.0  # `fedctl start` (and the watchdogs) this long after billing began


@dataclass(frozen=True)
class Case:
    """One situation of a run and the decision it must give (``expect``: a guard's reason or None)."""

    id: str
    budget: Budget
    at: float  # seconds since billing began (T0)
    expect: Optional[str]
    price: Optional[float] = 1.5  # per host per hour; two hosts
    last_round: Optional[float] = None  # seconds since T0 when the latest round ended; None: no round yet
    #: seconds since T0 when the server last rewrote status.json (a round's start, a client's progress
    #: report); None: never
    status: Optional[float] = None
    gpu: dict = field(default_factory=dict)  # host -> GPU utilisation % (a host not named has no GPU)
    on_finish: str = "teardown"
    margin: float = 0.0  # seconds early that both enforcers trip
    bug: Optional[str] = None  # the watchdog gets this row wrong today (xfail, strict)


HOURS, COST, IDLE = Budget(max_hours=1.0), Budget(max_cost=3.0), Budget(idle_minutes=10.0)

CASES = [
    # -- max_hours: counted from billing start, not from `fedctl start` ---------------------------------
    Case("hours: 1 s under the limit", HOURS, 3599, None),
    Case("hours: exactly at the limit", HOURS, 3600, "max_hours"),
    Case("hours: past the limit", HOURS, 5400, "max_hours"),
    Case("hours: 1 s before limit-margin", HOURS, 3509, None, margin=90),
    Case("hours: exactly at limit-margin", HOURS, 3510, "max_hours", margin=90),
    # -- max_cost: the ledger (2 hosts x 1.5/h = 3.0/h) ---------------------------------------------------
    Case("cost: just under the limit", COST, 3599, None),
    Case("cost: exactly at the limit", COST, 3600, "max_cost"),
    Case("cost: past the limit", COST, 7200, "max_cost"),
    Case("cost: inside the margin", COST, 3511, "max_cost", margin=90),
    Case("cost: before the margin", COST, 3509, None, margin=90),
    Case("cost: unpriced hosts never cost anything", Budget(max_cost=0.01), 36000, None, price=None),
    Case("cost and hours both reached: max_hours is reported", Budget(max_cost=3.0, max_hours=1.0), 3600,
         "max_hours"),
    Case("cost reached before hours", Budget(max_cost=1.5, max_hours=1.0), 1800, "max_cost"),
    Case("no guard set: never trips", Budget(), 10 * 3600, None),
    # -- idle: no round ended for idle_minutes AND no busy GPU --------------------------------------------
    Case("idle: 1 s short", IDLE, 1599, None, last_round=1000),
    Case("idle: exactly idle_minutes, no GPU", IDLE, 1600, "idle", last_round=1000),
    Case("idle: long idle, no GPU", IDLE, 5000, "idle", last_round=1000),
    Case("idle: the server's GPU is busy", IDLE, 1600, None, last_round=1000, gpu={"srv": 50.0}),
    Case("idle: GPU just under the idle threshold", IDLE, 1600, "idle", last_round=1000, gpu={"srv": 4.9}),
    Case("idle: GPU exactly at the threshold is busy", IDLE, 1600, None, last_round=1000, gpu={"srv": 5.0}),
    Case("idle: GPUs present and idle everywhere", IDLE, 1600, "idle", last_round=1000,
         gpu={"srv": 0.0, "c1": 1.0}),
    Case("idle: a client's GPU is busy (long round)", IDLE, 1600, None, last_round=1000, gpu={"c1": 80.0},
         status=1590),  # the client reports its progress while it trains: the server's status moves
    Case("idle: a CPU client trains through a long round", IDLE, 1600, None, last_round=1000, status=1590),
    Case("idle: progress reports stopped, 1 s short", IDLE, 1599, None, last_round=900, status=1000),
    Case("idle: progress reports stopped idle_minutes ago", IDLE, 1600, "idle", last_round=900, status=1000),
    Case("idle: a status older than the last round changes nothing", IDLE, 1600, "idle", last_round=1000,
         status=500),
    Case("idle: round 1 started, no round ended yet: short", IDLE, START + 699, None, status=START + 100),
    Case("idle: round 1 started, no round ended yet: reached", IDLE, START + 700, "idle", status=START + 100),
    Case("idle before the first round counts from start: short", IDLE, START + 599, None),
    Case("idle before the first round counts from start: reached", IDLE, START + 600, "idle"),
    # -- on_finish: changes no rule; with poweroff the watchdog's margin includes the power-off window -------
    Case("on_finish stop: at the limit", HOURS, 3600, "max_hours", on_finish="stop"),
    Case("on_finish poweroff: 1 s before limit-margin", HOURS, 3509, None, on_finish="poweroff", margin=90),
    Case("on_finish poweroff: exactly at limit-margin", HOURS, 3510, "max_hours", on_finish="poweroff",
         margin=90),
    Case("on_finish poweroff: idle is idle", IDLE, 1600, "idle", last_round=1000, on_finish="poweroff",
         margin=90),
]


def run_state(price: Optional[float], on_finish: str) -> RunState:
    """The table's run: server srv and client c1, acquired at T0, started at T0 + START."""

    def host(name: str, role: str) -> HostRecord:
        return HostRecord(
            info=HostInfo(name=name, address=name, roles=(role,), price_per_hour=price),
            status="provisioned", workdir=f"/w/{name}", acquired_at=T0,
            processes=[ProcessRecord(role=role, index=0, pidfile=f"/w/{name}/runs/r1/{role}-0.pid")],
        )

    return RunState(run_id="r1", hosts=[host("srv", "server"), host("c1", "client")], created_at=T0,
                    started_at=T0 + START, server={"host": "srv"}, experiment={"on_finish": on_finish})


def decide_fedctl(case: Case) -> Optional[str]:
    """fedctl's loop: one check over the whole fleet (the highest GPU utilisation of any host)."""
    state = run_state(case.price, case.on_finish)
    gpu = max(case.gpu.values()) if case.gpu else None
    last = T0 + case.last_round if case.last_round is not None else None
    status = T0 + case.status if case.status is not None else None
    trip = check_guards(case.budget, state, T0 + case.at, last, gpu, margin_s=case.margin, last_status=status)
    return trip.reason if trip else None


def pushed_watchdog() -> types.ModuleType:
    """The watchdog exactly as ``fedctl start`` pushes it to a host, loaded as a module."""
    mod = types.ModuleType("pushed_watchdog")
    exec(compile(watchdog_script(), "fedctl-watchdog.py", "exec"), mod.__dict__)
    return mod


WATCHDOG = pushed_watchdog()


def decide_watchdogs(case: Case) -> Optional[str]:
    """Every host's watchdog: its spec written at ``fedctl start`` (T0 + START), then checked ``at``
    seconds after billing began with the host's own GPU reading and, where its spec names status.json
    (the server host), that file's time. The run's decision is the guard any of them trips; they must
    never trip different guards."""
    state = run_state(case.price, case.on_finish)
    delay = POWEROFF_DELAY_S if case.on_finish == "poweroff" else 0.0
    assert case.margin >= delay, f"{case.id}: with on_finish {case.on_finish} the margin is at least {delay}"
    reasons = set()
    for rec in state.hosts:
        spec = watchdog_spec(state, rec, now=T0 + START, budget=case.budget, run_dir=f"/w/{rec.name}/runs/r1",
                             poweroff_command="true", poll_s=case.margin - delay, grace_s=0.0)
        assert spec["poweroff_delay_s"] == delay
        last = T0 + case.last_round if case.last_round is not None else None
        status = T0 + case.status if case.status is not None and spec["status"] else None
        trip = WATCHDOG.check(spec, case.at - START, last, case.gpu.get(rec.name), T0 + case.at, T0 + START,
                              status)
        if trip is not None:
            reasons.add(trip[0])
    assert len(reasons) <= 1, f"the hosts' watchdogs disagree: {sorted(reasons)}"
    return reasons.pop() if reasons else None


ENFORCERS: dict[str, Callable[[Case], Optional[str]]] = {"check_guards": decide_fedctl,
                                                         "watchdog": decide_watchdogs}


def _params() -> list:
    out = []
    for case in CASES:
        for name in ENFORCERS:
            marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug and name == "watchdog" else []
            out.append(pytest.param(case, name, id=f"{name}: {case.id}", marks=marks))
    return out


@pytest.mark.parametrize(("case", "enforcer"), _params())
def test_guard_decision(case: Case, enforcer: str) -> None:
    assert ENFORCERS[enforcer](case) == case.expect


def test_the_table_covers_every_guard_and_edge() -> None:
    """A row removed by mistake must not leave a rule untested."""
    expected = {c.expect for c in CASES}
    assert expected == {None, "max_hours", "max_cost", "idle"}
    assert {c.on_finish for c in CASES} == {"stop", "teardown", "poweroff"}
    assert len({c.id for c in CASES}) == len(CASES)


# -- the margins: fedctl (which can collect results) acts no later than the watchdog -------------------
@pytest.mark.parametrize("on_finish", ["teardown", "poweroff"])
@pytest.mark.parametrize("limit_s", [10.0, 60.0, 900.0, 3600.0, 10 * 3600.0])
def test_fedctl_never_trips_after_the_watchdog(limit_s: float, on_finish: str) -> None:
    """With the default margins, at every moment the watchdog would stop the run fedctl has already
    tripped; both trip before the limit; and a margin never eats more than a fifth of a tiny guard."""
    budget = Budget(max_hours=limit_s / 3600.0)
    state = run_state(1.5, on_finish)
    state.started_at = T0
    spec = watchdog_spec(state, state.hosts[0], now=T0, budget=budget, run_dir="/w/srv/runs/r1",
                         poweroff_command="true")
    first = {"fedctl": None, "watchdog": None}
    steps = 2000
    for i in range(steps + 1):
        t = limit_s * i / steps
        if first["fedctl"] is None and check_guards(budget, state, T0 + t, None, None) is not None:
            first["fedctl"] = t
        if first["watchdog"] is None and WATCHDOG.check(spec, t, None, None, T0 + t, T0) is not None:
            first["watchdog"] = t
    assert first["fedctl"] is not None and first["watchdog"] is not None, first
    assert first["fedctl"] <= first["watchdog"] <= limit_s, first
    assert first["fedctl"] >= limit_s - min(DEFAULT_MARGIN_S, 0.2 * limit_s) - limit_s / steps, first
