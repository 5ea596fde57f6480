"""fedctl.ops with fake connectors: what the operations would run on the hosts, without a network."""

from __future__ import annotations

from typing import Any

import pytest

from fedctl.connectors.base import CommandResult, HostInfo
from fedctl.errors import UsageError
from fedctl.model import Plan, PlannedHost
from fedctl.ops.common import Inputs, open_fleet, session
from fedctl.ops.provision import replan
from fedctl.ops.run import FollowEvent, follow_plain
from fedctl.ops.stop import stop_host
from fedctl.ops.teardown import _remove_files, forget
from fedctl.runtypes import RunConfig
from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore
from tests.fakes import FakeFactory


def _host(name: str, i: int, **kw: Any) -> HostInfo:
    return HostInfo(name=name, address=f"127.0.0.{i}", **{"workdir": f"/w/{name}", **kw})


def _state(*recs: HostRecord) -> RunState:
    plan = Plan("static", 2, tuple(PlannedHost(r.info, r.role.startswith("server"),
                                               tuple(tuple(p) for p in r.client_processes)) for r in recs))
    return RunState(run_id="20260101-000000-abcd", provider="static", plan=plan, hosts=list(recs),
                    server={"host": recs[0].name})


def test_a_session_connects_each_host_once_for_many_operations(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    factory = FakeFactory()
    recs = [HostRecord(_host("a", 2)), HostRecord(_host("b", 3))]
    with session(store, connector_factory=factory):
        for _ in range(5):
            with open_fleet(store, recs) as fleet:
                assert fleet.run("true").ok
        with open_fleet(store, recs[:1]) as fleet:  # a view of some hosts only
            assert [r.host for r in fleet.run("true")] == ["a"]
    assert factory.created == 2
    assert all(c.commands == ["true"] * (6 if n == "a" else 5) for n, c in factory.connectors.items())


def test_teardown_removes_only_what_fedctl_created(tmp_path):
    rec = HostRecord(_host("a", 2))
    rec.own("/w/a/payloads", "dir")
    rec.own("/w/a/payloads/p", "tree")
    rec.own("/w/a/runs/r1", "tree")
    factory = FakeFactory()
    conn = factory(rec.info)
    assert _remove_files(conn, rec) == []
    script = conn.commands[-1]
    assert "rm -rf -- /w/a/runs/r1" in script and "rm -rf -- /w/a/payloads/p" in script
    assert "rmdir -- /w/a/payloads" in script
    # newest first: the tree goes before the folder that holds it
    assert script.index("/w/a/payloads/p") < script.index("rmdir -- /w/a/payloads")
    assert "rm -rf -- /w/a " not in script and "/w/a/data" not in script
    assert _remove_files(factory(HostRecord(_host("b", 3)).info), HostRecord(_host("b", 3))) == []


def test_stop_checks_identity_on_the_host_before_each_signal(tmp_path):
    rec = HostRecord(_host("a", 2), workdir="/w/a")
    rec.processes.append(ProcessRecord("server", 0, pid=4321, start_time=99, pidfile="/w/a/runs/20260101-000000-abcd/server.pid"))
    state = _state(rec)
    factory = FakeFactory()
    conn = factory(rec.info)
    signalled, survivors = stop_host(conn, state, rec, grace_s=0.2)
    assert signalled == 1 and survivors == []
    script = conn.commands[-1]
    assert script.startswith("/bin/sh -c ")
    assert "4321:99:0" in script and "_ours" in script and "FEDCTL_RUN_DIR" in script


def test_replan_takes_a_corrected_host_that_holds_nothing_and_refuses_one_that_does(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    a = HostRecord(_host("a", 2), role="server")
    b = HostRecord(_host("b", 3, identity_file="/wrong"), role="client", client_processes=[[0, 1]],
                   status="failed")
    state = _state(a, b)
    store.save(state)
    fixed = Plan("static", 2, (PlannedHost(a.info, True), PlannedHost(_host("b", 3, identity_file="/right"), False, ((0, 1),))))
    exp = type("E", (), {"clients": 2, "rounds": 3, "run_config": lambda self: RunConfig(clients=2, rounds=3),
                         "payload": type("P", (), {"name": "p", "dir": "/p"})()})()
    inv = type("I", (), {"provider": "static"})()
    replan(store, state, Inputs(inv, exp, fixed))
    assert state.host("b").info.identity_file == "/right" and state.plan == fixed
    # a host that holds a folder of ours may not move to another workdir
    state.host("a").own("/w/a", "dir")
    moved = Plan("static", 2, (PlannedHost(_host("a", 2, workdir="/elsewhere"), True), fixed.hosts[1]))
    with pytest.raises(UsageError, match="holds /w/a"):
        replan(store, state, Inputs(inv, exp, moved))


def test_forget_says_what_may_be_left_and_finishes_the_run(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    a = HostRecord(_host("a", 2), role="server", status="torn_down")
    b = HostRecord(_host("b", 3), role="client", status="provisioned")
    b.own("/w/b", "dir")
    state = _state(a, b)
    with pytest.raises(UsageError):
        forget(store, state, ["nope"])
    notes = forget(store, state, ["b"])
    assert len(notes) == 1 and "/w/b" in notes[0]
    assert state.phase == "torn_down" and (store.root / "runs" / state.run_id / "state.json").exists()


def test_follow_plain_reports_rounds_and_stops_when_the_run_ends(tmp_path, monkeypatch):
    from fedctl.ops import status as status_mod

    store = StateStore(tmp_path / ".fedctl")
    store.save(_state(HostRecord(_host("a", 2), role="server")))
    phases = iter([("running", 1), ("running", 1), ("running", 2), ("finished", 3)])

    def fake_observe(self: Any, store: Any, state: Any) -> Any:
        phase, rnd = next(phases)
        return status_mod.RunStatus(state.run_id, phase, rnd, 3, 0.5, None, [], {}, last_round_end=None)

    monkeypatch.setattr(status_mod.StatusObserver, "observe", fake_observe)
    events: list[FollowEvent] = []
    st, trip = follow_plain(store, 0.0, events.append, sleep=lambda s: None)
    assert trip is None and st.phase == "finished"
    assert [e.round for e in events] == [1, 2, 3]


@pytest.mark.parametrize("gpu_util,trips", [(95.0, False), (None, True)])
def test_follow_plain_gives_the_idle_guard_the_gpu_utilisation(tmp_path, monkeypatch, gpu_util, trips):
    """Without a terminal the idle guard used to get no GPU utilisation: a run training on its GPUs
    with no round ended for longer than idle_minutes was stopped as idle."""
    from fedctl.ops import status as status_mod
    from fedctl.runtypes import Budget

    now = 10_000.0
    store = StateStore(tmp_path / ".fedctl", clock=lambda: now)
    state = _state(HostRecord(_host("a", 2), role="server"))
    state.experiment, state.started_at, state.phase = RunConfig(budget=Budget(idle_minutes=1)), now - 600, "running"
    store.save(state)
    ticks = iter([("running", 1), ("finished", 2)])
    seen: list[bool] = []

    def fake_observe(self: Any, store: Any, state: Any) -> Any:
        seen.append(self.gpu)  # the follower asks for the GPUs
        phase, rnd = next(ticks)
        return status_mod.RunStatus(state.run_id, phase, rnd, 2, 0.5, None, [], {}, last_round_end=now - 300,
                                    gpu_util_pct=gpu_util)

    monkeypatch.setattr(status_mod.StatusObserver, "observe", fake_observe)
    st, trip = follow_plain(store, 0.0, lambda e: None, sleep=lambda s: None)
    assert seen[0] is True
    if trips:  # no GPU reported: idle for 5 min with idle_minutes 1
        assert trip.reason == "idle" and st.phase == "running"
    else:  # the GPU is busy: the run is working, it goes on to its end
        assert trip is None and st.phase == "finished"
