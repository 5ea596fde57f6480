"""``fedctl run`` on a real Slurm cluster (``slurm_cluster.py``): every FL process a job step of one
allocation, results collected, nothing left in squeue, on the nodes or in the shared run folder.

The login node is this machine (``slurm.login`` omitted; Slurm's commands find the test cluster
through ``SLURM_CONF``), or a loopback sshd host. fedctl runs as its console script, as a user runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tests.integration.slurm_cluster import SlurmCluster
from tests.integration.sshd import SshdFleet
from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"



def _project(tmp_path: Path, config: dict[str, Any], nodes: int = 2, login: dict[str, Any] | None = None) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(config))
    section: dict[str, Any] = {"partition": "debug", "nodes": nodes, "time": "10"}
    if login is not None:
        section["login"] = login
    # the nodes run this interpreter (the shared install): it has the payloads' imports
    (proj / "slurm.yaml").write_text(yaml.safe_dump({"provider": "slurm", "defaults": {"python": sys.executable},
                                                     "slurm": section}))
    return proj


def _env(slurm: SlurmCluster) -> dict[str, str]:
    return {**slurm.env(), "COLUMNS": "200", "FEDCTL_POLL_S": "0.2", "PYTHONUNBUFFERED": "1"}


def _state(proj: Path) -> dict[str, Any]:
    path = proj / ".fedctl" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _job(proj: Path) -> str | None:
    ids = {(h["info"].get("machine") or {}).get("id") for h in _state(proj).get("hosts", [])} - {None}
    return ids.pop() if len(ids) == 1 else None


def _steps(slurm: SlurmCluster, job: str) -> list[tuple[str, str]]:
    """(step name, node) of the job's steps squeue shows now."""
    out = slurm.run(["squeue", "-h", "-s", "-j", job, "-o", "%j %N"], check=False).stdout
    return [(ln.split()[0], ln.split()[1]) for ln in out.splitlines() if len(ln.split()) == 2]


def _squeue(slurm: SlurmCluster) -> str:
    return slurm.run(["squeue", "-h", "-o", "%i"]).stdout.strip()


def _start(proj: Path, slurm: SlurmCluster, log: Path, *args: str) -> subprocess.Popen[bytes]:
    assert FEDCTL is not None
    with open(log, "wb") as out:
        return subprocess.Popen([FEDCTL, *args], cwd=proj, env=_env(slurm), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


def _assert_nothing_left(slurm: SlurmCluster, run_dir: Path) -> None:
    assert _squeue(slurm) == ""
    wait_until(lambda: not slurm.job_pids(), 30, what="no process of the job left on the nodes")
    assert not run_dir.exists(), sorted(str(p) for p in run_dir.rglob("*"))


def _run_and_watch_steps(slurm: SlurmCluster, proj: Path, tmp_path: Path, clients: int,
                         expect: set[tuple[str, str]], run_dir_of: Callable[[str], Path]) -> str:
    """``fedctl run`` to the end; while it runs, squeue shows each FL process as a step of the job.
    Returns the run id."""
    log = tmp_path / "run.out"
    proc = _start(proj, slurm, log, "run", "--clients", str(clients), "-i", "slurm.yaml", "--yes", "--interval", "1")
    try:
        job = wait_until(lambda: _job(proj), 120, interval=0.1, what="the job id in the state")
        # the server's step and one per client process, on the nodes the plan gave them
        seen: set[tuple[str, str]] = set()

        def all_seen() -> bool:
            seen.update((name.rsplit(".pid", 1)[0], node) for name, node in _steps(slurm, job) if ".pid" in name)
            return expect <= seen

        wait_until(all_seen, 240, interval=0.2, what=f"the FL processes as steps of job {job} ({log})")
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    st = _state(proj)
    assert st == {} or st["phase"] == "torn_down"  # archived once torn down
    run_id = next(p.name for p in (proj / "results").iterdir())
    _assert_nothing_left(slurm, run_dir_of(run_id))
    return run_id


def test_fedctl_run_on_the_cluster_runs_each_process_as_a_step_and_leaves_nothing(slurm: SlurmCluster,
                                                                                    tmp_path: Path) -> None:
    # a budget: each host's watchdog runs as a step too, and the allocation's time limit comes from it
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 30, "echo_round_s": 0.25, "budget": {"max_hours": 1}})
    expect = {("slurm-server-server", "fl1"), ("slurm-node-01-client-0", "fl1"), ("slurm-node-02-client-0", "fl2"),
              ("slurm-server-watchdog", "fl1"), ("slurm-node-01-watchdog", "fl1"), ("slurm-node-02-watchdog", "fl2")}
    run_id = _run_and_watch_steps(slurm, proj, tmp_path, 4, expect,
                                  lambda rid: proj / ".fedctl" / "local" / "slurm" / rid)
    results = proj / "results" / run_id
    rounds = [json.loads(x) for x in (results / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if r.get("type") == "round"] == list(range(1, 31))
    assert (results / "logs" / "slurm-node-02" / "client-0.log").exists()


def test_sigkilled_fedctl_during_start_then_teardown_leaves_no_job(slurm: SlurmCluster,
                                                                    tmp_path: Path) -> None:
    """fedctl is SIGKILLed once the server's step runs (the clients are being started); ``fedctl
    teardown`` stops the steps, cancels the job, removes the run folder: nothing is left."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2})
    log = tmp_path / "run.out"
    proc = _start(proj, slurm, log, "run", "--clients", "2", "-i", "slurm.yaml", "--yes")
    try:
        def server_pid() -> int | None:
            procs = [p for h in _state(proj).get("hosts", []) for p in h.get("processes", [])]
            return next((p["pid"] for p in procs if p["role"] == "server" and p.get("pid")), None)

        wait_until(server_pid, 120, interval=0.1, what=f"the server's pid in the state ({log})")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    run_id, job = _state(proj)["run_id"], _job(proj)
    assert job is not None and _squeue(slurm) == job
    assert _state(proj)["phase"] == "starting"
    res = subprocess.run([FEDCTL or "fedctl", "teardown", "--yes"], cwd=proj, env=_env(slurm), capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_nothing_left(slurm, proj / ".fedctl" / "local" / "slurm" / run_id)


def _fedctl(proj: Path, slurm: SlurmCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDCTL or "fedctl", *args], cwd=proj, env=_env(slurm), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_a_job_ended_under_a_running_experiment_is_said_and_torn_down(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The job ends mid-run (here scancel, as a preemption would): status says each host's job
    ended instead of trying it as a machine; teardown finishes, and nothing is left."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2})
    res = _fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _fedctl(proj, slurm, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    run_id, job = _state(proj)["run_id"], _job(proj)
    assert job is not None
    slurm.run(["scancel", job])
    wait_until(lambda: _squeue(slurm) == "", 30, what="the job gone")
    status = _fedctl(proj, slurm, "status", "--json")
    assert status.returncode == 0, status.stderr
    hosts = json.loads(status.stdout)["hosts"]
    assert [(h["reachable"], f"job {job} ended: " in (h["error"] or "")) for h in hosts] == [(False, True)] * 3, hosts
    res = _fedctl(proj, slurm, "teardown", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_nothing_left(slurm, proj / ".fedctl" / "local" / "slurm" / run_id)


def test_fedctl_run_stops_waiting_when_its_job_ends_and_says_why(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The job ends under ``fedctl run`` (scancel, as a time limit or a preemption would): run says
    the machines are gone and why, goes through its clean-up and exits 1; nothing is left."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2})
    log = tmp_path / "run.out"
    proc = _start(proj, slurm, log, "run", "--clients", "2", "-i", "slurm.yaml", "--yes", "--interval", "1")
    try:
        wait_until(lambda: _state(proj).get("phase") == "running", 180, interval=0.2, what=f"the run to run ({log})")
        run_id, job = _state(proj)["run_id"], _job(proj)
        assert job is not None
        slurm.run(["scancel", job])
        proc.wait(120)  # the follower asks the provider every ENDED_CHECK_S (10 s), then tears down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    out = log.read_text()
    assert proc.returncode == 1, out[-3000:]
    assert f"the run's machines are gone: job {job} ended" in out, out[-3000:]
    _assert_nothing_left(slurm, proj / ".fedctl" / "local" / "slurm" / run_id)


def test_poweroff_is_refused_on_a_cluster(slurm: SlurmCluster, tmp_path: Path) -> None:
    """``on_finish: poweroff`` would run poweroff on the cluster's shared nodes: refused before any job."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2, "on_finish": "poweroff"})
    res = _fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "on_finish: poweroff would power off provider slurm's shared nodes" in res.stderr
    assert _squeue(slurm) == "" and not (proj / ".fedctl" / "state.json").exists()


def test_ctrl_c_while_the_job_pends_cancels_it(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The partition is full: ``fedctl run`` shows squeue's pending reason; Ctrl-C (SIGINT to fedctl)
    then cancels the pending job and fedctl exits 130; nothing of the run is left."""
    blocker = slurm.run(["sbatch", "--parsable", "-J", "blocker", "-N", "4", "--exclusive",
                         "--wrap", "sleep 300"]).stdout.strip()
    try:
        wait_until(lambda: _squeue(slurm) == blocker and slurm.run(
            ["squeue", "-h", "-j", blocker, "-o", "%T"]).stdout.strip() == "RUNNING", 30, what="the blocker running")
        proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 5, "echo_round_s": 0.2})
        log = tmp_path / "run.out"
        proc = _start(proj, slurm, log, "run", "--clients", "2", "-i", "slurm.yaml", "--yes")
        try:
            job = wait_until(lambda: _job(proj), 120, interval=0.1, what="the job id in the state")
            wait_until(lambda: f"slurm: job {job} pending (Resources)" in log.read_text(), 60, what="the pending line")
            run_dir = proj / ".fedctl" / "local" / "slurm" / _state(proj)["run_id"]
            assert (run_dir / ".fedctl-tree").exists()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(120) == 130, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert _squeue(slurm) == blocker  # the run's job is gone; the other user's job is untouched
        assert not run_dir.exists()
        assert f"cancelled job(s) {job}" in log.read_text()
    finally:
        slurm.run(["scancel", blocker])
        wait_until(lambda: _squeue(slurm) == "", 30, what="the blocker gone")


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
def test_fedavg_tf_run_on_the_cluster(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The real Keras payload, 2 clients on 2 nodes, 2 rounds of tiny data."""
    proj = _project(tmp_path, {
        "rounds": 2, "model": "mlp", "data": {"dataset": "digits", "partition": "iid"},
        "sampling": {"min_clients": 2, "round_timeout_s": 120}, "train": {"epochs": 1, "batch_size": 16, "lr": 0.1}})
    expect = {("slurm-server-server", "fl1"), ("slurm-node-01-client-0", "fl1"), ("slurm-node-02-client-0", "fl2")}
    run_id = _run_and_watch_steps(slurm, proj, tmp_path, 2, expect,
                                  lambda rid: proj / ".fedctl" / "local" / "slurm" / rid)
    rounds = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines()]
    per_round = [r for r in rounds if r.get("type") == "round"]
    assert [r["round"] for r in per_round] == [1, 2]
    assert sorted(per_round[-1]["reported"]) == [0, 1]
    assert 0.0 < per_round[-1]["accuracy"] <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="the flower payload needs flwr")
def test_flower_app_on_the_cluster(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The Flower payload: its SuperLink (and ServerApp) in the server's step, a SuperNode in each
    client host's step."""
    proj = _project(tmp_path, {"payload": "flower", "app": str(REPO / "examples" / "flower-numpy"), "rounds": 2})
    expect = {("slurm-server-server", "fl1"), ("slurm-node-01-client-0", "fl1"), ("slurm-node-02-client-0", "fl2")}
    run_id = _run_and_watch_steps(slurm, proj, tmp_path, 2, expect,
                                  lambda rid: proj / ".fedctl" / "local" / "slurm" / rid)
    lines = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines() if x]
    assert [r["round"] for r in lines if r["type"] == "round"] == [1, 2]
    assert lines[-1]["type"] == "summary" and lines[-1]["status"] == "finished"


def test_fedctl_run_through_an_ssh_login_node(slurm: SlurmCluster, sshd_fleet: Callable[[int], SshdFleet],
                                              tmp_path: Path) -> None:
    """slurm.login is a loopback sshd host: Slurm's commands, the run folder and every node command
    go through it; 10 clients on the 4 nodes; the run finishes and nothing is left."""
    [h] = sshd_fleet(1).host_infos()
    workdir = tmp_path / "login-workdir"
    login = {"address": h.address, "port": h.port, "user": h.user, "identity_file": h.identity_file,
             "workdir": str(workdir), "environment": {"SLURM_CONF": str(slurm.conf)}}
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 20, "echo_round_s": 0.25}, nodes=4, login=login)
    expect = {("slurm-server-server", "fl1")} | {(f"slurm-node-0{k}-client-0", f"fl{k}") for k in range(1, 5)}
    run_id = _run_and_watch_steps(slurm, proj, tmp_path, 10, expect, lambda rid: workdir / "slurm" / rid)
    rounds = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines()]
    per_round = [r for r in rounds if r.get("type") == "round"]
    assert len(per_round) == 20
