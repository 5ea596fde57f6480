"""Budget guards: config parsing, check_guards with an injected clock, the watchdog's spec and logic."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from fedctl.budget import (
    Budget,
    GuardTrip,
    check_guards,
    parse_guard,
    watchdog_command,
    watchdog_script,
    watchdog_spec,
)
from fedctl.connectors.base import HostInfo
from fedctl.errors import ConfigError, UsageError
from fedctl.state import HostRecord, ProcessRecord, RunState

T0 = 1_764_000_000.0


def _state(price=1.0, currency="USD", experiment=None) -> RunState:
    srv = HostRecord(
        info=HostInfo(name="srv", address="a", roles=("server",), price_per_hour=price, currency=currency),
        status="provisioned", workdir="/w/srv", acquired_at=T0,
        processes=[ProcessRecord(role="server", index=0, pidfile="/w/srv/runs/r1/server.pid")],
    )
    cli = HostRecord(
        info=HostInfo(name="c1", address="b", roles=("client",), price_per_hour=price, currency="USD"),
        status="provisioned", workdir="/w/c1", acquired_at=T0,
    )
    return RunState(run_id="r1", hosts=[srv, cli], created_at=T0, started_at=T0 + 60,
                    experiment=experiment or {})


def test_the_budget_is_validated_once_by_the_config_layer(tmp_path):
    """One Budget type: the config layer checks each limit (> 0, a number, a known key) and
    on_finish, and gives the state the same Budget that fedctl.budget enforces."""
    import fedctl.runtypes
    from fedctl.config.experiment import load_experiment

    def load(text: str):
        (tmp_path / "fedctl.yaml").write_text(text)
        return load_experiment("fedctl.yaml", cwd=tmp_path)

    exp = load("budget: {max_cost: 5, max_hours: null, idle_minutes: 10}\non_finish: stop\n")
    assert exp.budget == Budget(5.0, None, 10.0) and exp.budget.active and type(exp.budget) is fedctl.runtypes.Budget
    assert exp.run_config().budget is exp.budget and exp.run_config().on_finish == "stop"
    for bad, key in (("{max_cost: 0}", "budget.max_cost"), ("{max_hours: -1}", "budget.max_hours"),
                     ("{idle_minutes: x}", "budget.idle_minutes"), ("{max_cost: true}", "budget.max_cost"),
                     ("{nope: 1}", "budget.nope")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(f"budget: {bad}\n")
    with pytest.raises(ConfigError, match="on_finish.*stop, teardown, poweroff"):
        load("on_finish: explode\n")


# The rules themselves (max_hours, max_cost, idle, margins, edges) are one table run against both
# check_guards and the pushed watchdog: tests/unit/test_guard_table.py.


def test_max_cost_follows_the_ledger_when_a_host_is_released():
    s = _state(price=1.5)  # 3.0 per hour for the fleet
    b = Budget(max_cost=3.0)
    s.hosts[1].released_at = T0 + 1200  # client released early: the run spends slower
    assert check_guards(b, s, T0 + 3600, None, None, margin_s=0) is None  # 1.5 + 0.5 spent
    trip = check_guards(b, s, T0 + 6000, None, None, margin_s=0)  # 2.5 + 0.5 spent
    assert trip is not None and trip.reason == "max_cost" and trip.value == pytest.approx(3.0)


def test_max_cost_with_mixed_currencies_is_refused():
    s = _state(currency="EUR")
    with pytest.raises(UsageError, match="EUR, USD"):
        check_guards(Budget(max_cost=1), s, T0, None, None)
    assert check_guards(Budget(max_hours=1), s, T0, None, None) is None  # other guards still work


def test_guard_trip_round_trips_through_guard_json():
    trip = GuardTrip("max_hours", "too long", T0, 1.0, 1.0, by="watchdog")
    assert parse_guard(trip.to_json()) == trip
    assert parse_guard(None) is None and parse_guard("garbage") is None


def test_watchdog_spec_and_command():
    s = _state(price=2.0, experiment={"budget": {"max_cost": 10, "max_hours": 2, "idle_minutes": 5},
                                      "on_finish": "poweroff"})
    spec = watchdog_spec(s, s.hosts[0], now=T0 + 1800, run_dir="/w/srv/runs/r1", poweroff_command="true")
    assert spec["elapsed_s"] == 1800 and spec["spent"] == pytest.approx(2.0) and spec["rate_per_hour"] == 4.0
    assert spec["max_hours"] == 2 and spec["idle_minutes"] == 5 and spec["metrics"] == "/w/srv/runs/r1/metrics.jsonl"
    assert spec["pidfiles"] == ["/w/srv/runs/r1/server.pid"] and spec["poweroff_command"] == "true"
    assert spec["on_finish"] == "poweroff" and spec["poweroff_delay_s"] > 0 and spec["match"] == "runs/r1"
    client = watchdog_spec(s, s.hosts[1], now=T0, run_dir="/w/c1/runs/r1")
    s.server = {"host": "c1"}  # the plan's server wins over the inventory's roles
    assert watchdog_spec(s, s.hosts[1], now=T0, run_dir="/w/c1/runs/r1")["metrics"] == "/w/c1/runs/r1/metrics.jsonl"
    assert client["idle_minutes"] is None and client["metrics"] is None  # only the server sees rounds
    assert spec["status"] == "/w/srv/runs/r1/status.json" and client["status"] is None  # and the clients' progress
    assert client["pidfiles"] == ["/w/c1/runs/r1/client-*.pid"]
    json.dumps(spec)
    cmd = watchdog_command("python3", "/w/srv/runs/r1/fedctl-watchdog.py", "/w/a b/watchdog.json")
    assert shlex.split(cmd) == ["python3", "/w/srv/runs/r1/fedctl-watchdog.py", "--spec", "/w/a b/watchdog.json"]
    assert b"import fedctl" not in watchdog_script() and b"from fedctl" not in watchdog_script()
    import ast

    ast.parse(watchdog_script().decode(), feature_version=(3, 6))  # hosts may have an old python


def test_watchdog_reads_the_servers_status_time_with_the_contracts_reader(tmp_path):
    """status.json's time is the clients' progress as the server saw it (see watchdog.py)."""
    import types

    wd = types.ModuleType("pushed")
    exec(compile(watchdog_script(), "fedctl-watchdog.py", "exec"), wd.__dict__)
    st = tmp_path / "status.json"
    st.write_text(json.dumps({"round": 3, "phase": "training", "time": 1234.5}))
    assert wd.last_status_time(str(st)) == 1234.5
    for bad in ('{"round": 3, "time": NaN}', '{"round": 3, "ti', "", "[1]"):  # torn, absent, not the contract's
        st.write_text(bad)
        assert wd.last_status_time(str(st)) is None, bad
    assert wd.last_status_time(str(tmp_path / "none")) is None
    st.write_text(json.dumps({"round": 1, "time": 1.0, "pad": "x" * (wd.STATUS_MAX_BYTES + 1)}))
    assert wd.last_status_time(str(st)) is None


def _watchdog():
    path = Path(__file__).parents[2] / "fedctl" / "watchdog.py"
    spec = importlib.util.spec_from_file_location("fedctl_watchdog_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_watchdog_reads_metrics_and_nvidia_smi(tmp_path):
    wd = _watchdog()
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"type": "round", "round": 1, "end": 5.0}\n{"type": "round", "round": 2, "end": 7.5}\n{"ty')
    assert wd.last_round_end(str(m)) == 7.5
    assert wd.last_round_end(str(tmp_path / "none")) is None
    assert wd.gpu_utilisation(("false",)) is None
    assert wd.gpu_utilisation(("printf", "3\\n71\\n")) == 71.0
