"""The cost ledger and the estimate: arithmetic with an injected clock, currencies, unpriced hosts."""

from __future__ import annotations

import json

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.cost import (
    DEFAULT_OVERHEAD_S,
    DEFAULT_SECONDS_PER_ROUND,
    cost_timeline,
    estimate,
    format_money,
    format_totals,
    run_cost,
)
from fedctl.state import HostRecord, RunState

T0 = 1_764_000_000.0


def host(name: str, price: float | None, currency: str = "USD", roles=("client",), acquired=None, released=None):
    info = HostInfo(name=name, address="10.0.0.1", roles=tuple(roles), price_per_hour=price, currency=currency)
    return HostRecord(info=info, status="provisioned", acquired_at=acquired, released_at=released)


def state(*hosts: HostRecord) -> RunState:
    return RunState(run_id="r1", hosts=list(hosts), created_at=T0, rounds=10, clients=4)


def test_ledger_bills_from_acquired_to_released_or_now():
    s = state(
        host("srv", 2.0, roles=("server",), acquired=T0),  # still held
        host("c1", 1.0, acquired=T0 + 1800, released=T0 + 3600),  # half an hour
        host("c2", 0.5, acquired=None),  # never acquired: costs nothing
    )
    rc = run_cost(s, now=T0 + 7200)
    rows = {r.name: r for r in rc.rows}
    assert rows["srv"].hours == pytest.approx(2.0) and rows["srv"].cost == pytest.approx(4.0)
    assert rows["srv"].running and not rows["c1"].running and not rows["c2"].running
    assert rows["c1"].hours == pytest.approx(0.5) and rows["c1"].cost == pytest.approx(0.5)
    assert rows["c2"].cost == 0.0
    assert rc.total == pytest.approx({"USD": 4.5})
    assert rc.per_hour == pytest.approx({"USD": 2.0})  # only what is still held
    assert rc.hours == pytest.approx(2.0)
    # the clock moves: only the held host grows
    later = run_cost(s, now=T0 + 10800)
    assert later.total["USD"] == pytest.approx(6.5)


def test_ledger_is_per_currency_and_lists_unpriced_hosts():
    s = state(
        host("a", 1.0, "USD", acquired=T0),
        host("b", 3.0, "EUR", acquired=T0),
        host("c", None, acquired=T0),
    )
    rc = run_cost(s, now=T0 + 3600)
    assert rc.total == pytest.approx({"USD": 1.0, "EUR": 3.0})
    assert rc.currencies == ["EUR", "USD"] and rc.unpriced == ["c"]
    assert {r.name: r.cost for r in rc.rows}["c"] is None
    with pytest.raises(ValueError, match="several currencies"):
        rc.total_in()
    assert rc.total_in("EUR") == pytest.approx(3.0)
    json.dumps(rc.to_dict())  # plain JSON for --json


def test_ledger_before_acquisition_and_clock_behind_release_never_negative():
    s = state(host("a", 1.0, acquired=T0 + 100, released=T0 + 50))
    assert run_cost(s, T0).total["USD"] == 0.0
    assert run_cost(s, T0 + 1000).total["USD"] == 0.0


def test_estimate_default_guess_then_measured_from_metrics(tmp_path):
    s = state(host("srv", 2.0, roles=("server",)), host("c1", 1.0), host("c2", None))
    est = estimate(s, rounds=10)
    assert not est.measured and est.seconds_per_round == DEFAULT_SECONDS_PER_ROUND
    hours = (DEFAULT_OVERHEAD_S + 10 * DEFAULT_SECONDS_PER_ROUND) / 3600
    assert est.hours == pytest.approx(hours)
    assert est.per_hour == pytest.approx({"USD": 3.0})
    assert est.total == pytest.approx({"USD": 3.0 * hours})
    assert est.unpriced == ["c2"]
    assert {r.name: r.cost for r in est.rows}["srv"] == pytest.approx(2.0 * hours)

    metrics = tmp_path / "metrics.jsonl"
    lines = [{"type": "round", "round": i, "start": T0 + 10 * (i - 1), "end": T0 + 10 * (i - 1) + 8} for i in (1, 2, 3)]
    metrics.write_text("\n".join(json.dumps(l) for l in lines) + "\n{\"type\": \"round\", \"rou")  # torn last line
    upd = est.updated_from_metrics(metrics)
    assert upd.measured and upd.rounds_done == 3
    assert upd.seconds_per_round == pytest.approx(28 / 3)  # first start -> last end over 3 rounds
    assert upd.hours == pytest.approx((DEFAULT_OVERHEAD_S + 28 + 7 * 28 / 3) / 3600)
    assert upd.hours < est.hours
    assert est.updated_from_metrics(tmp_path / "missing.jsonl") is est
    # a resume repeats round 3 (a later, longer attempt): it counts once, its last line wins
    with metrics.open("a") as f:
        f.write("\n" + json.dumps({"type": "round", "round": 3, "start": T0 + 20, "end": T0 + 31}) + "\n")
    resumed = est.updated_from_metrics(metrics)
    assert resumed.rounds_done == 3 and resumed.seconds_per_round == pytest.approx(31 / 3)
    json.dumps(upd.to_dict())


def test_estimate_with_explicit_round_time_and_roles_from_the_plan():
    """An inventory without roles: the plan's server host is shown as the server, not a client."""
    from fedctl.model import HostInfo, Plan, PlannedHost

    plan = Plan("static", 3, (
        PlannedHost(HostInfo("x", "127.0.0.2", price_per_hour=0.6, currency="EUR"), True, ()),
        PlannedHost(HostInfo("y", "127.0.0.3", price_per_hour=0.6, currency="EUR"), False, ((0, 1, 2),)),
    ))
    est = estimate(plan, rounds=100, seconds_per_round=36, overhead_s=0)
    assert est.measured and est.hours == pytest.approx(1.0)
    assert est.total == pytest.approx({"EUR": 1.2})
    assert [r.role for r in est.rows] == ["server", "client"]


def test_cost_timeline_is_exact_at_ledger_instants():
    s = state(host("a", 1.0, acquired=T0), host("b", 2.0, acquired=T0 + 1800, released=T0 + 3600))
    times, series = cost_timeline(s, now=T0 + 7200, points=5)
    assert times[0] == 0 and times[-1] == 7200
    usd = dict(zip(times, series["USD"]))
    assert usd[1800] == pytest.approx(0.5)
    assert usd[3600] == pytest.approx(1.0 + 1.0)
    assert usd[7200] == pytest.approx(2.0 + 1.0)
    assert series["USD"] == sorted(series["USD"])  # cumulative


def test_format_money():
    assert format_money(1.234, "USD") == "1.23 USD"
    assert format_money(0.00123, "EUR") == "0.0012 EUR"
    assert format_money(None, "USD") == "unpriced"
    assert format_totals({"USD": 1.5, "EUR": 2}) == "2.00 EUR + 1.50 USD" and format_totals({}) == "-"


def test_cost_command_prints_the_ledger_as_json(tmp_path, monkeypatch, capsys):
    from fedctl.cli.app import app
    from fedctl.cli.common import CliEnv, env, set_env
    from fedctl.state import StateStore

    s = state(host("srv", 2.0, roles=("server",), acquired=T0), host("c1", 1.0, acquired=T0, released=T0 + 1800))
    s.experiment = {"budget": {"max_cost": 10, "max_hours": 4}}
    StateStore(tmp_path / ".fedctl").save(s)
    old = env()
    set_env(CliEnv(state_dir=tmp_path / ".fedctl", clock=lambda: T0 + 3600, interactive=False))
    try:
        app(args=["cost", "--json"], standalone_mode=False)
        data = json.loads(capsys.readouterr().out)
        assert data["total"] == pytest.approx({"USD": 2.5}) and data["per_hour"] == {"USD": 2.0}
        assert data["budget_left"] == pytest.approx({"cost": 7.5, "hours": 3.0})
        assert [h["name"] for h in data["hosts"]] == ["srv", "c1"]
        app(args=["cost"], standalone_mode=False)
        text = capsys.readouterr().out
        assert "2.50 USD" in text and "held" in text
    finally:
        set_env(old)
