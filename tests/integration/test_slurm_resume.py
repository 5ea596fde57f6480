"""A fedctl run whose Slurm job ends under it, on a real cluster (``slurm_cluster.py``).

- teardown reports the job's end as slurmctld says it and collects the results from the login node
  (the shared filesystem): the nodes can no longer be reached through steps;
- ``fedctl start --resume`` submits a new allocation for the same run and the server goes on from its
  checkpoint (fedavg_tf): no round is done twice; teardown then leaves nothing.

The cluster here keeps an ended job in slurmctld's memory for Slurm's default 5 minutes
(``MinJobAge=300``; the shared fixture's 2 s would race the ``fedctl status`` that reads the reason).
fedctl runs as its console script; the login node is this machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.integration.slurm_cluster import SlurmCluster, slurm_available
from tests.integration.sshd import SshdFleet
from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"


class RememberingCluster(SlurmCluster):
    """The test cluster, with slurmctld remembering an ended job for 300 s (Slurm's default)."""

    def _write_conf(self) -> None:
        super()._write_conf()
        text = self.conf.read_text()
        assert "MinJobAge=2\n" in text
        self.conf.write_text(text.replace("MinJobAge=2\n", "MinJobAge=300\n"))


@contextlib.contextmanager
def _running(root: Path) -> Iterator[SlurmCluster]:
    cluster = RememberingCluster(root).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.leftover_pids() == []


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    with _running(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _project(tmp_path: Path, config: dict[str, Any], nodes: int = 2, login: dict[str, Any] | None = None) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(config))
    section: dict[str, Any] = {"partition": "debug", "nodes": nodes, "time": "10"}
    if login is not None:
        section["login"] = login
    (proj / "slurm.yaml").write_text(yaml.safe_dump({
        "provider": "slurm", "defaults": {"python": sys.executable}, "slurm": section}))
    return proj


def _fedctl(proj: Path, slurm: SlurmCluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**slurm.env(), "COLUMNS": "200", "FEDCTL_POLL_S": "0.2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([FEDCTL or "fedctl", *args], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _state(proj: Path) -> dict[str, Any]:
    path = proj / ".fedctl" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _job(proj: Path) -> str:
    ids = {(h["info"].get("machine") or {}).get("id") for h in _state(proj)["hosts"]}
    assert len(ids) == 1, ids
    return str(ids.pop())


def _squeue(slurm: SlurmCluster) -> str:
    return slurm.run(["squeue", "-h", "-o", "%i"]).stdout.strip()


def _run_dir(proj: Path, run_id: str) -> Path:
    return proj / ".fedctl" / "local" / "slurm" / run_id


def _rounds(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return [int(r["round"]) for r in lines if r.get("type") == "round"]


def _server_metrics(proj: Path, run_id: str) -> Path:
    """The server's metrics.jsonl in the run folder (the shared filesystem)."""
    return _run_dir(proj, run_id) / "slurm-server" / "runs" / run_id / "metrics.jsonl"


def test_teardown_of_a_run_whose_job_ended_collects_from_the_login_node(slurm: SlurmCluster,
                                                                         tmp_path: Path) -> None:
    """The job is cancelled under a running experiment (as preemption would end it): status and
    teardown say how it ended; teardown collects metrics and logs from the shared run folder, then
    removes it."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2})
    _collect_after_cancel(proj, slurm, proj / ".fedctl" / "local" / "slurm")


def test_teardown_collects_through_an_ssh_login_node(slurm: SlurmCluster, sshd_fleet: Callable[[int], SshdFleet],
                                                     tmp_path: Path) -> None:
    """The same through ``slurm.login`` (a loopback sshd host): the files are read and fetched there."""
    [h] = sshd_fleet(1).host_infos()
    workdir = tmp_path / "login-workdir"
    login = {"address": h.address, "port": h.port, "user": h.user, "identity_file": h.identity_file,
             "workdir": str(workdir), "environment": {"SLURM_CONF": str(slurm.conf)}}
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2}, login=login)
    _collect_after_cancel(proj, slurm, workdir / "slurm")


def _collect_after_cancel(proj: Path, slurm: SlurmCluster, runs: Path) -> None:
    """Provision and start a long echo run, cancel its job, check status and teardown's collection."""
    _ok(_fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes"))
    _ok(_fedctl(proj, slurm, "start"))
    run_id, job = _state(proj)["run_id"], _job(proj)
    metrics = runs / run_id / "slurm-server" / "runs" / run_id / "metrics.jsonl"
    wait_until(lambda: len(_rounds(metrics)) >= 3, 120, interval=0.2, what="three rounds in metrics.jsonl")
    slurm.run(["scancel", job])
    wait_until(lambda: _squeue(slurm) == "", 60, what="the job gone from squeue")
    done = _rounds(metrics)
    status = _ok(_fedctl(proj, slurm, "status"))
    assert f"the run's machines are gone: job {job} ended: CANCELLED" in status, status
    assert "`fedctl start --resume` continues the run on new ones" in status, status
    out = _ok(_fedctl(proj, slurm, "teardown", "--yes"))
    assert f"job {job} ended: CANCELLED" in out, out
    assert "the results are collected from the login node" in out, out
    results = proj / "results" / run_id
    assert _rounds(results / "metrics.jsonl") == done == list(range(1, len(done) + 1))
    assert "says hello" in (results / "logs" / "slurm-server" / "server.log").read_text()
    assert (results / "logs" / "slurm-node-02" / "client-0.log").exists()
    assert _squeue(slurm) == ""
    assert not (runs / run_id).exists()


def test_a_job_killed_by_its_time_limit_is_said_and_resumed_in_a_new_allocation(slurm: SlurmCluster,
                                                                               tmp_path: Path) -> None:
    """The echo payload: the job is shortened to 1 minute mid-run and Slurm kills it (TIMEOUT);
    status says TimeLimit; ``start --resume`` runs the same run in a new job, which goes on after
    the last round written; the run finishes and teardown leaves nothing."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 600, "echo_round_s": 0.25})
    _run_id, before, rounds = _resume_after_time_limit(proj, slurm, min_round=3)
    assert 3 <= len(before) < 600 and rounds[:len(before)] == before
    assert rounds == list(range(1, 601))  # each round once: the resumed server went on after the last


def _resume_after_time_limit(proj: Path, slurm: SlurmCluster, min_round: int) -> tuple[str, list[int], list[int]]:
    """Provision, start, kill the job by its time limit after ``min_round`` rounds, resume in a new
    job, wait for the end, tear down. Returns (run id, rounds before the kill, all rounds)."""
    _ok(_fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes"))
    _ok(_fedctl(proj, slurm, "start"))
    run_id, job = _state(proj)["run_id"], _job(proj)
    metrics = _server_metrics(proj, run_id)
    wait_until(lambda: len(_rounds(metrics)) >= min_round, 300, interval=0.2, what=f"{min_round} rounds done")
    # the shortest limit Slurm has (a minute, the job has run longer): it kills the job at its next check
    slurm.run(["scontrol", "update", f"jobid={job}", "TimeLimit=1"])
    wait_until(lambda: _squeue(slurm) == "", 150, interval=0.5, what="Slurm to end the job at its time limit")
    before = _rounds(metrics)
    res = _fedctl(proj, slurm, "status", "--json")
    _ok(res)
    status = json.loads(res.stdout)
    assert status["machines_ended"] == f"job {job} ended: TIMEOUT (TimeLimit)", status
    hosts = status["hosts"]
    assert [f"job {job} ended: TIMEOUT (TimeLimit)" in (h["error"] or "") for h in hosts] == [True] * 3, hosts
    out = _ok(_fedctl(proj, slurm, "start", "--resume"))
    assert f"job {job} ended: TIMEOUT (TimeLimit): resuming run {run_id} in a new allocation" in out, out
    new_job = _job(proj)
    assert new_job != job and _squeue(slurm) == new_job
    rounds = wait_until(lambda: _finished(metrics), 600, interval=0.5, what="the resumed run to finish")
    out = _ok(_fedctl(proj, slurm, "teardown", "--yes"))
    assert _squeue(slurm) == ""
    assert not _run_dir(proj, run_id).exists()
    assert _rounds(proj / "results" / run_id / "metrics.jsonl") == rounds
    return run_id, before, rounds


def _finished(metrics: Path) -> list[int] | None:
    """The round numbers of metrics.jsonl once its summary line says the run finished."""
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    if not lines or lines[-1].get("type") != "summary":
        return None
    return [int(r["round"]) for r in lines if r.get("type") == "round"]


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
def test_fedavg_tf_killed_by_its_time_limit_goes_on_from_its_checkpoint_in_a_new_job(slurm: SlurmCluster,
                                                                                       tmp_path: Path) -> None:
    """The real Keras payload: Slurm kills the job at its time limit mid-run; ``start --resume`` in a
    new job restores the checkpoint (its server says after which round) and only later rounds run:
    metrics.jsonl holds each round once, those before the kill unchanged."""
    # the run must outlast the job's time limit (a minute, checked by slurmctld about every 30 s):
    # training is fast, so a simulated 4 Mbit/s link holds each round ~0.9 s (150 rounds >= 2 min)
    rounds_total = 150
    proj = _project(tmp_path, {
        "rounds": rounds_total, "model": "mlp", "data": {"dataset": "digits", "partition": "iid"},
        "sampling": {"min_clients": 2, "round_timeout_s": 120}, "realism": {"bandwidth_mbps": 4},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}})
    run_id, before, rounds = _resume_after_time_limit(proj, slurm, min_round=2)
    assert 2 <= len(before) < rounds_total and rounds[:len(before)] == before
    assert rounds == list(range(1, rounds_total + 1))  # no round before the kill was done again
    log = (proj / "results" / run_id / "logs" / "slurm-server" / "server.log").read_text()
    resumed = [int(x.split("resumed from checkpoint after round ")[1].split()[0]) for x in log.splitlines()
               if "resumed from checkpoint after round " in x]
    assert len(resumed) == 1 and len(before) <= resumed[0] <= len(before) + 1, log[-3000:]


def test_resume_inside_a_running_allocation_restarts_a_dead_client_as_a_new_step(slurm: SlurmCluster,
                                                                                   tmp_path: Path) -> None:
    """One client's process dies while the job runs: ``start --resume`` (a new fedctl process, whose
    step requests must not repeat the names the agent already ran) starts it again as a step of the
    same job; the run goes on to the end."""
    import os
    import signal

    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 120, "echo_round_s": 0.25})
    _ok(_fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes"))
    _ok(_fedctl(proj, slurm, "start"))
    run_id, job = _state(proj)["run_id"], _job(proj)
    metrics = _server_metrics(proj, run_id)
    wait_until(lambda: len(_rounds(metrics)) >= 2, 120, interval=0.2, what="two rounds done")
    [pidfile] = (_run_dir(proj, run_id) / "slurm-node-02" / "runs" / run_id).glob("client-*.pid")
    old_pid = int(pidfile.read_text().split()[0])
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{old_pid}").exists(), 30, interval=0.1, what="the client to die")
    _ok(_fedctl(proj, slurm, "start", "--resume"))
    new_pid = int(pidfile.read_text().split()[0])
    assert new_pid != old_pid and Path(f"/proc/{new_pid}").exists()
    assert _job(proj) == job and _squeue(slurm) == job  # the same allocation, no new job
    rounds = wait_until(lambda: _finished(metrics), 300, interval=0.5, what="the run to finish")
    assert rounds == list(range(1, 121))
    _ok(_fedctl(proj, slurm, "teardown", "--yes"))
    assert _squeue(slurm) == ""
