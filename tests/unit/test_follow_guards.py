"""fedctl's own guard loop counts what the watchdog counts: the time of the server's status.json
(rewritten when a client reports progress) keeps a long round from being idle, through the plain
follower (``RunStatus``) and the live screen (the snapshot plus the monitor's ``ServerStatus``)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.contract import ServerStatus
from fedctl.model import Phase
from fedctl.ops import status as status_mod
from fedctl.ops.follow import GuardInputs, follow_plain, guard_tripped, on_this_clock
from fedctl.runtypes import Budget, RunConfig
from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore

NOW = 1_764_000_000.0
IDLE_MINUTES = 10.0


def _store(tmp_path: Any) -> tuple[StateStore, RunState]:
    """A running run with idle_minutes 10, started an hour ago (no workdir: a trip writes no guard.json)."""
    store = StateStore(tmp_path / ".fedctl", clock=lambda: NOW)
    rec = HostRecord(HostInfo("srv", "127.0.0.1"), role="server+client", status="provisioned",
                     processes=[ProcessRecord("server", 0, pid=11)])
    state = RunState("r1", hosts=[rec], server={"host": "srv"}, started_at=NOW - 3600, phase=Phase.RUNNING,
                     experiment=RunConfig(budget=Budget(idle_minutes=IDLE_MINUTES)))
    store.save(state)
    return store, state


# a round that began 30 minutes ago and is still running; no GPU reported
LONG_ROUND_END = NOW - 1800


def test_a_long_round_with_recent_client_progress_is_not_idle(tmp_path):
    store, state = _store(tmp_path)
    busy = GuardInputs(last_round_end=LONG_ROUND_END, last_status=NOW - 20)
    assert guard_tripped(store, state, busy) is None
    # the same round with status.json as old as the round: idle (the inputs matter)
    trip = guard_tripped(store, state, GuardInputs(last_round_end=LONG_ROUND_END, last_status=LONG_ROUND_END))
    assert trip is not None and trip.reason == "idle"


def test_the_plain_follower_passes_the_status_time_to_the_guards(tmp_path, monkeypatch):
    store, _ = _store(tmp_path)
    ticks = iter([Phase.RUNNING, Phase.FINISHED])

    def fake_observe(self: Any, store: Any, state: Any) -> Any:
        return status_mod.RunStatus(state.run_id, next(ticks), 1, 3, 0.5, None, [], {},
                                    last_round_end=LONG_ROUND_END, last_status=NOW - 20)

    monkeypatch.setattr(status_mod.StatusObserver, "observe", fake_observe)
    st, trip = follow_plain(store, 0.0, lambda e: None, sleep=lambda s: None)
    assert trip is None and st.phase == Phase.FINISHED  # not stopped as idle mid-round


def test_the_status_observer_reads_status_json_time(tmp_path, monkeypatch):
    """``RunStatus.last_status`` is the time in the server's status.json as the probe read it."""
    from fedctl.monitor import collect

    store, state = _store(tmp_path)
    sample = collect.HostSample("srv", NOW, True, 0.1, status_text='{"phase": "training", "round": 2, "time": %r}'
                                % (NOW - 20))
    monkeypatch.setattr(collect, "build_probes", lambda *a, **kw: {"srv": object()})
    monkeypatch.setattr(collect, "collect_once", lambda fleet, probes: [sample])
    monkeypatch.setattr(status_mod, "open_fleet", lambda store, hosts: contextlib.nullcontext(None))
    st = status_mod.StatusObserver(state, gpu=True).observe(store, state)
    assert st.last_status == pytest.approx(NOW - 20)
    assert GuardInputs.of_status(st).last_status == pytest.approx(NOW - 20)


def test_the_live_screen_takes_the_monitors_status_time():
    snap = SimpleNamespace(now=NOW, federation=SimpleNamespace(round_age_s=1800.0), hosts=())
    inputs = GuardInputs.of_snapshot(snap, ServerStatus(phase="training", round=2, time=NOW - 20))
    assert inputs.last_round_end == pytest.approx(LONG_ROUND_END)
    assert inputs.last_status == pytest.approx(NOW - 20)
    assert GuardInputs.of_snapshot(snap).last_status is None  # no status.json read yet


def test_a_server_clock_ahead_of_ours_never_puts_the_status_in_the_future():
    # like round_age_s (never below 0): a server clock 5 min fast does not buy 5 min of "not idle"
    assert on_this_clock(NOW + 300, NOW) == NOW
    assert on_this_clock(NOW - 60, NOW) == NOW - 60
    assert on_this_clock(None, NOW) is None
