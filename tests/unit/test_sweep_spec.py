"""The sweep file: validation (file, key path, what is valid), the runs it makes, the grid checked
against the payload before anything starts, and the CLI's dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedctl.errors import ConfigError
from fedctl.sweep.plan import plan_campaign
from fedctl.sweep.spec import MAX_RUNS, load_sweep, run_key
from fedctl.state import StateStore

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"


def sweep_file(tmp_path: Path, **data) -> str:
    (tmp_path / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO)}))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": "fedctl.yaml", **data}, sort_keys=False))
    return str(path)


def error(tmp_path: Path, **data) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_sweep(sweep_file(tmp_path, **data))
    return exc.value


def test_runs_are_every_combination_once_per_seed_in_order(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, grid={"echo_round_s": [0.1, 0.2], "fail_at_round": [None, 3]},
                                 seeds=[1, 2]))
    runs = spec.runs()
    assert len(runs) == 8
    assert [r.seed for r in runs[:2]] == [1, 2]
    assert runs[0].params == (("echo_round_s", 0.1), ("fail_at_round", None))
    assert runs[0].key == "echo_round_s-0.1_fail_at_round-null_seed-1"
    assert len({r.key for r in runs}) == 8
    assert spec.base == str(tmp_path / "fedctl.yaml") and spec.parallel == "auto"


def test_a_value_a_folder_name_cannot_hold_gets_a_hash_and_stays_unique():
    a = run_key((("data.path", "a/b"),), None)
    b = run_key((("data.path", "a b"),), None)
    assert a != b and "/" not in a and " " not in a
    assert len(run_key((("k", "x" * 500),), 1)) <= 100


@pytest.mark.parametrize("data, path, words", [
    ({"grid": {"x": [1]}, "colour": 1}, "colour", "unknown key"),
    ({"grid": {"clients": [2, 4]}}, "grid.clients", "one fleet"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed", "seeds"),
    ({"grid": {"echo_round_s": []}}, "grid.echo_round_s", "non-empty list"),
    ({"grid": {"echo_round_s": [0.1, 0.1]}}, "grid.echo_round_s[1]", "listed twice"),
    ({"grid": {"bad key!": [1]}}, "grid.bad key!", "not a key path"),
    ({"seeds": [1, 1]}, "seeds", "repeats"),
    ({"parallel": "many"}, "parallel", "auto"),
    ({"parallel": 0}, "parallel", ">= 1"),
    ({"budget": {"max_dollars": 3}}, "budget.max_dollars", "unknown key"),
    ({"target_accuracy": 80}, "target_accuracy", "fraction"),
    ({"base": "nope.yaml"}, "base", "not a file"),
])
def test_mistakes_name_the_file_the_key_and_what_is_valid(tmp_path, data, path, words):
    exc = error(tmp_path, **data)
    assert exc.file.endswith("sweep.yaml") and exc.key_path == path and words in str(exc)


def test_the_number_of_runs_is_bounded(tmp_path):
    exc = error(tmp_path, grid={"echo_round_s": list(range(1, 40)), "echo_wait_s": list(range(1, 40))})
    assert exc.key_path == "grid" and str(MAX_RUNS) in exc.problem


def test_a_grid_key_the_payload_does_not_know_is_an_error_naming_the_sweep_file(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, grid={"echo_speed": [1, 2]}))
    with pytest.raises(ConfigError) as exc:
        plan_campaign(spec, None, [], StateStore(tmp_path / ".fedctl" / "sweeps" / "s" / ".fedctl"))
    assert exc.value.file == spec.path and exc.value.key_path == "grid.echo_speed"
    assert "unknown key" in str(exc.value) and "echo_round_s" in str(exc.value)


def test_a_grid_value_the_payload_refuses_is_an_error_naming_the_value(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, grid={"fail_at_round": [None, -1]}))
    with pytest.raises(ConfigError) as exc:
        plan_campaign(spec, None, [], StateStore(tmp_path / ".fedctl" / "sweeps" / "s" / ".fedctl"))
    assert exc.value.file == spec.path and exc.value.key_path == "grid.fail_at_round"
    assert "value -1" in str(exc.value)


def test_a_set_of_a_grid_key_or_of_the_budget_is_refused(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, grid={"echo_round_s": [0.1, 0.2]}, seeds=[1]))
    store = StateStore(tmp_path / ".fedctl" / "sweeps" / "s" / ".fedctl")
    for bad in ("echo_round_s=0.3", "seed=4", "budget.max_cost=3"):
        with pytest.raises(ConfigError) as exc:
            plan_campaign(spec, None, [bad], store)
        assert exc.value.file == f"--set {bad}"
    plan = plan_campaign(spec, None, ["echo_wait_s=12"], store)
    assert {p.experiment.payload_config["echo_wait_s"] for p in plan.runs} == {12}
    assert [p.experiment.seed for p in plan.runs] == [1, 1]


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})


def test_cli_an_unknown_grid_key_exits_2_before_anything_starts(tmp_path):
    sweep_file(tmp_path, grid={"echo_speed": [1, 2]})
    res = cli(tmp_path, "sweep", "sweep.yaml", "--yes")
    assert res.returncode == 2, res.stderr
    assert "sweep.yaml: grid.echo_speed: " in res.stderr and "unknown key" in res.stderr
    assert not (tmp_path / ".fedctl").exists() and not (tmp_path / "results").exists()


def test_cli_dry_run_lists_the_runs_and_the_estimate(tmp_path):
    sweep_file(tmp_path, grid={"echo_round_s": [0.1, 0.2]}, seeds=[1, 2], clients=2, rounds=3, parallel=2)
    res = cli(tmp_path, "sweep", "sweep.yaml", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["key"] for r in out["runs"]] == [
        "echo_round_s-0.1_seed-1", "echo_round_s-0.1_seed-2", "echo_round_s-0.2_seed-1", "echo_round_s-0.2_seed-2"]
    assert {r["status"] for r in out["runs"]} == {"new"} and {r["rounds"] for r in out["runs"]} == {3}
    assert out["estimate"]["runs"] == 4 and out["estimate"]["packed_hours"] == pytest.approx(
        out["estimate"]["serial_hours"] / 2)
    text = cli(tmp_path, "sweep", "sweep.yaml", "--dry-run")
    assert text.returncode == 0 and "echo_round_s-0.2_seed-2" in text.stdout and "estimate:" in text.stdout
    assert not (tmp_path / ".fedctl").exists()


def test_cli_status_without_a_campaign_says_so_and_exits_2(tmp_path):
    res = cli(tmp_path, "sweep", "status")
    assert res.returncode == 2 and "no campaign here" in res.stderr
    assert not (tmp_path / ".fedctl").exists()


def test_without_base_the_fedctl_yaml_beside_the_sweep_file_is_the_base(tmp_path):
    sweep_file(tmp_path, grid={"echo_round_s": [0.1]})
    data = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    del data["base"]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
    assert load_sweep(str(tmp_path / "sweep.yaml")).base == str(tmp_path / "fedctl.yaml")
    (tmp_path / "fedctl.yaml").unlink()
    assert load_sweep(str(tmp_path / "sweep.yaml")).base is None
