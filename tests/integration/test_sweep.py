"""``fedctl sweep``: real campaigns on the local provider and on real sshd hosts.

The echo payload (real server and client processes, stdlib only) keeps the many runs of a campaign
fast; one campaign runs the real fedavg_tf payload (Keras training) end to end.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedctl.sweep.campaign import QuietSweepUI, run_campaign
from fedctl.sweep.plan import plan_campaign
from fedctl.sweep.spec import load_sweep
from fedctl.sweep.state import SweepStore
from tests.integration.test_lifecycle import ECHO, REPO, files_under, run_pids
from tests.waiting import wait_until


#: the subprocesses import this checkout's fedctl, whatever is installed
ENV = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}


def fedctl(cwd: Path, *args: str, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL, env=ENV)
    if check and res.returncode != 0:
        raise AssertionError(f"fedctl {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def write_project(proj: Path, sweep: dict, base: dict | None = None) -> Path:
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(base or {"payload": str(ECHO), "echo_round_s": 0.3}))
    (proj / "sweep.yaml").write_text(yaml.safe_dump({"base": "fedctl.yaml", **sweep}, sort_keys=False))
    return proj


def campaign(proj: Path, name: str) -> dict:
    return json.loads((proj / ".fedctl" / "sweeps" / name / "sweep.json").read_text())


def fleet_state(proj: Path, name: str) -> dict:
    return json.loads((proj / ".fedctl" / "sweeps" / name / ".fedctl" / "state.json").read_text())


def statuses(st: dict) -> dict[str, str]:
    return {r["key"]: r["status"] for r in st["runs"]}


def most_at_once(runs: list[dict]) -> int:
    """The largest number of runs whose [started_at, finished_at] overlap at one instant."""
    edges = sorted([(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs],
                   key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def all_run_ids(st: dict) -> set[str]:
    return {e["run_id"] for e in st["events"] if e.get("run_id")}


@pytest.mark.parametrize("where", ["local", "sshd"])
def test_an_interrupted_campaign_resumes_and_finishes_each_run_exactly_once(tmp_path, request, where):
    proj = write_project(tmp_path / "proj", {
        "name": "resume", "clients": 2, "rounds": 3,
        "grid": {"echo_round_s": [0.2, 0.3], "echo_wait_s": [20, 30]}, "seeds": [1, 2], "parallel": 1,
    })
    args = ["sweep", "sweep.yaml", "--interval", "0.3"]
    fleet = None
    if where == "sshd":
        fleet = request.getfixturevalue("sshd_fleet")(2)
        fleet.write_inventory(proj / "inventory.yaml")
        args += ["-i", "inventory.yaml", "--yes"]
    out = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "fedctl", *args], cwd=proj,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV)
    try:
        def first_done_and_next_running() -> bool:
            path = proj / ".fedctl" / "sweeps" / "resume" / "sweep.json"
            if not path.exists():
                return False
            s = list(statuses(json.loads(path.read_text())).values())
            return s.count("finished") >= 1 and s.count("running") == 1

        wait_until(lambda: proc.poll() is not None or first_done_and_next_running(), 300, interval=0.1, what="the first run finished, the next running")
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(180) == 130, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    st = campaign(proj, "resume")
    first = statuses(st)
    assert "running" not in first.values()
    done_before = {k for k, s in first.items() if s == "finished"}
    assert done_before and "interrupted" in first.values()
    interrupted = [r for r in st["runs"] if r["status"] == "interrupted"]
    # the run in flight was stopped and collected; nothing of the campaign is left running or on disk
    assert all(r["results_dir"] for r in interrupted)
    assert fleet_state(proj, "resume")["phase"] == "torn_down"
    assert all(run_pids(rid) == [] for rid in all_run_ids(st))

    res = fedctl(proj, *args, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    st = campaign(proj, "resume")
    assert set(statuses(st).values()) == {"finished"} and len(st["runs"]) == 8
    finished_events = [e["key"] for e in st["events"] if e["status"] == "finished"]
    assert sorted(finished_events) == sorted(statuses(st))  # each run finished exactly once
    assert all(r["attempts"] == 1 for r in st["runs"] if r["key"] in done_before)
    for r in st["runs"]:
        rounds = [json.loads(x) for x in (Path(r["results_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert [x["round"] for x in rounds if x.get("type") == "round"] == [1, 2, 3]
    assert fleet_state(proj, "resume")["phase"] == "torn_down"
    assert all(run_pids(rid) == [] for rid in all_run_ids(st))
    assert not any((proj / ".fedctl" / "sweeps" / "resume" / ".fedctl" / "local").rglob("*"))
    if fleet is not None:
        assert files_under(fleet) == []
    # the table's numbers are the runs' own: mean and sample std of final accuracy over the seeds
    with (proj / "results" / "sweeps" / "resume" / "table.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4
    for row in table:
        finals = [json.loads((Path(r["results_dir"]) / "summary.json").read_text())["final_accuracy"]
                  for r in st["runs"] if all(str(v) == row[k] for k, v in r["params"])]
        assert len(finals) == 2 and int(row["n"]) == 2
        assert float(row["final_accuracy_mean"]) == pytest.approx(statistics.mean(finals), abs=1e-4)
        assert float(row["final_accuracy_std"]) == pytest.approx(statistics.stdev(finals), abs=1e-4)
    # the same command once more has nothing to run
    again = fedctl(proj, "sweep", "sweep.yaml", timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    status = json.loads(fedctl(proj, "sweep", "status", "--json", check=True).stdout)
    assert status["counts"]["finished"] == 8 and status["fleet_phase"] == "torn_down"


def test_a_failing_value_fails_its_runs_only_and_runs_pack_without_oversubscribing(tmp_path, monkeypatch):
    proj = write_project(tmp_path / "proj", {
        "name": "pack", "clients": 2, "rounds": 3,
        "grid": {"fail_at_round": [None, 1], "echo_round_s": [1.0, 1.2]}, "parallel": 8,
    })
    monkeypatch.chdir(proj)
    spec = load_sweep("sweep.yaml")
    sweeps = SweepStore(proj / ".fedctl", spec.name)
    # one client process per run (two clients in it): a machine of C cores holds C runs at once
    plan = plan_campaign(spec, None, [], sweeps.fleet_store(), cpu_count=1)
    outcome = run_campaign(sweeps, plan, QuietSweepUI(), interval=0.2)
    st = campaign(proj, "pack")
    by_key = {r["key"]: r for r in st["runs"]}
    failed = sorted(k for k, r in by_key.items() if r["status"] == "failed")
    assert sorted(outcome.failed) == failed
    assert failed == sorted(k for k, r in by_key.items() if dict(r["params"])["fail_at_round"] == 1)
    assert len(failed) == 2 and all(r["status"] == "finished" for k, r in by_key.items() if k not in failed)
    assert all(by_key[k]["error"] for k in failed)
    cores = fleet_state(proj, "pack")["hosts"][1]["facts"]["cpus"]
    assert st["parallel"] == min(8, cores)  # parallel: 8 is capped at what the machine holds
    assert most_at_once(st["runs"]) == min(4, cores)
    assert fleet_state(proj, "pack")["phase"] == "torn_down"
    assert all(run_pids(rid) == [] for rid in all_run_ids(st))


def test_a_fixed_server_port_runs_one_run_at_a_time(tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port free now, for the base's fixed server.port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proj = write_project(tmp_path / "proj", {"name": "port", "clients": 2, "rounds": 2,
                                             "grid": {"echo_round_s": [0.3, 0.4]}},
                         base={"payload": str(ECHO), "server": {"port": port}})
    monkeypatch.chdir(proj)
    spec = load_sweep("sweep.yaml")
    sweeps = SweepStore(proj / ".fedctl", spec.name)
    plan = plan_campaign(spec, None, [], sweeps.fleet_store(), cpu_count=1)  # room for two at once
    assert run_campaign(sweeps, plan, QuietSweepUI(), interval=0.2).failed == []
    st = campaign(proj, "port")
    assert st["parallel"] == 1 and most_at_once(st["runs"]) == 1


def test_a_campaign_whose_fedctl_was_killed_cleans_up_and_resumes(tmp_path):
    proj = write_project(tmp_path / "proj", {
        "name": "killed", "clients": 2, "rounds": 4, "grid": {"echo_round_s": [0.5, 0.6]}, "parallel": 1,
    })
    proc = subprocess.Popen([sys.executable, "-m", "fedctl", "sweep", "sweep.yaml", "--interval", "0.3"], cwd=proj,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ENV)
    try:
        def running_with_a_round() -> str | None:
            path = proj / ".fedctl" / "sweeps" / "killed" / "sweep.json"
            st = json.loads(path.read_text()) if path.exists() else {"runs": [], "progress": {}}
            live = [r for r in st["runs"] if r["status"] == "running"
                    and st["progress"].get(r["key"], {}).get("round", 0) >= 1]
            return live[0]["run_id"] if live else None

        killed_run = wait_until(running_with_a_round, 180, interval=0.1, what="a run past its first round")
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(30)
    assert run_pids(killed_run) != []  # its processes outlived fedctl
    res = fedctl(proj, "sweep", "sweep.yaml", "--interval", "0.3", timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "tearing down the fleet a stopped fedctl left" in res.stdout + res.stderr
    st = campaign(proj, "killed")
    assert set(statuses(st).values()) == {"finished"}
    again = next(r for r in st["runs"] if killed_run in all_run_ids({"events": [
        e for e in st["events"] if e["key"] == r["key"]]}))
    assert again["attempts"] == 2 and again["run_id"] != killed_run
    assert run_pids(killed_run) == [] and fleet_state(proj, "killed")["phase"] == "torn_down"


def test_the_campaigns_budget_stops_it_and_leaves_the_runs_to_run_again(tmp_path):
    proj = write_project(tmp_path / "proj", {
        "name": "budget", "clients": 2, "rounds": 40, "grid": {"echo_round_s": [1.0, 1.1]}, "parallel": 1,
        "budget": {"max_hours": 0.004},  # 14.4 s of the fleet, tripped from 80% of it
    })
    res = fedctl(proj, "sweep", "sweep.yaml", "--interval", "0.3", "--json", timeout=300)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert "campaign stopped by its budget" in res.stderr and "max_hours" in res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]  # --json: every stdout line is JSON
    assert {"frame", "torn_down"} <= {e["event"] for e in events}
    assert events[-1] == {"event": "torn_down", "ok": True, "phase": "torn_down"}
    st = campaign(proj, "budget")
    assert set(statuses(st).values()) <= {"queued", "interrupted"}  # none finished, none failed, none left running
    assert fleet_state(proj, "budget")["phase"] == "torn_down"
    assert all(run_pids(rid) == [] for rid in all_run_ids(st))


def test_a_campaign_on_sshd_hosts_leaves_nothing_behind(sshd_fleet, tmp_path, monkeypatch):
    fleet = sshd_fleet(2)
    proj = write_project(tmp_path / "proj", {
        "name": "ssh", "clients": 2, "rounds": 2, "grid": {"echo_round_s": [0.2, 0.3]}, "seeds": [7],
    })
    fleet.write_inventory(proj / "inventory.yaml")
    monkeypatch.chdir(proj)
    spec = load_sweep("sweep.yaml")
    sweeps = SweepStore(proj / ".fedctl", spec.name)
    plan = plan_campaign(spec, "inventory.yaml", ["echo_wait_s=25"], sweeps.fleet_store())
    outcome = run_campaign(sweeps, plan, QuietSweepUI(), interval=0.2)
    assert outcome.failed == []
    st = campaign(proj, "ssh")
    assert set(statuses(st).values()) == {"finished"}
    assert {r["seed"] for r in st["runs"]} == {7}
    fst = fleet_state(proj, "ssh")
    assert fst["phase"] == "torn_down" and fst["previous_runs"] == []
    for r in st["runs"]:
        assert (Path(r["results_dir"]) / "logs" / "h2").is_dir()
        cfg = yaml.safe_load((Path(r["results_dir"]) / "config.yaml").read_text())
        assert cfg["seed"] == 7 and cfg["echo_wait_s"] == 25  # the seed and the --set reached every run
    assert files_under(fleet) == []
    assert all(run_pids(rid) == [] for rid in all_run_ids(st))


@pytest.mark.e2e
def test_a_fedavg_tf_campaign_makes_the_table(tmp_path):
    proj = write_project(tmp_path / "proj", {
        "name": "tf", "clients": 2, "rounds": 2, "grid": {"strategy.name": ["fedavg", "fedprox"]},
        "target_accuracy": 0.5,
    }, base={
        "model": "mlp", "data": {"dataset": "digits", "partition": "iid"},
        "sampling": {"min_clients": 2, "round_timeout_s": 120},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1},
    })
    res = fedctl(proj, "sweep", "sweep.yaml", "--interval", "1", timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    st = campaign(proj, "tf")
    assert set(statuses(st).values()) == {"finished"}
    table = (proj / "results" / "sweeps" / "tf" / "table.csv").read_text().splitlines()
    assert len(table) == 3 and "fedavg" in table[1] + table[2] and "fedprox" in table[1] + table[2]
    for r in st["runs"]:
        summary = json.loads((Path(r["results_dir"]) / "summary.json").read_text())
        assert 0.0 < summary["final_accuracy"] <= 1.0
