"""Watch, status, cost and the budget of a run on a real Slurm cluster (``slurm_cluster.py``): the
job line (id, state, pending reason, node list, time left) in ``fedctl status`` and ``fedctl watch``,
the allocation's node-hours and their price in ``fedctl cost``, and ``budget.max_cost`` tripping on
that price. fedctl runs as its console script with the echo payload; this machine is the login node.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.slurm_cluster import SlurmCluster
from tests.integration.test_slurm_run import ECHO, _assert_nothing_left, _fedctl, _job, _squeue, _start, _state
from tests.waiting import wait_until



def _project(tmp_path: Path, config: dict[str, Any], price: float | None = None) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(config))
    section: dict[str, Any] = {"partition": "debug", "nodes": 2, "time": "10"}
    if price is not None:
        section["price_per_node_hour"] = price
    (proj / "slurm.yaml").write_text(yaml.safe_dump({"provider": "slurm", "defaults": {"python": sys.executable},
                                                     "slurm": section}))
    return proj


def _json(proj: Path, slurm: SlurmCluster, *args: str) -> dict[str, Any]:
    res = _fedctl(proj, slurm, *args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def _run_dir(proj: Path, run_id: str) -> Path:
    return proj / ".fedctl" / "local" / "slurm" / run_id


def test_status_and_watch_show_the_running_job_and_cost_counts_its_node_hours(slurm: SlurmCluster,
                                                                              tmp_path: Path) -> None:
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2}, price=2.5)
    res = _fedctl(proj, slurm, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    run_id, job = _state(proj)["run_id"], _job(proj)
    assert job is not None
    try:
        res = _fedctl(proj, slurm, "start")
        assert res.returncode == 0, res.stdout + res.stderr
        alloc = _json(proj, slurm, "status")["allocation"]
        assert (alloc["job"], alloc["state"], alloc["reason"], alloc["nodelist"], alloc["nodes"]) == (
            job, "RUNNING", None, "fl[1-2]", 2)
        assert 0 < alloc["time_left_s"] <= 600 and alloc["time_limit_s"] == 600 and alloc["problems"] == []
        text = _fedctl(proj, slurm, "status")
        assert f"job {job} RUNNING on fl[1-2] (2 nodes) · " in text.stdout and " left of 10m00s" in text.stdout
        # watch without a terminal: the plain snapshot has the job line, --json the same fields
        once = _fedctl(proj, slurm, "watch", "--once")
        assert once.returncode == 0, once.stdout + once.stderr
        line = next(ln for ln in once.stdout.splitlines() if ln.startswith(f"job {job} "))
        assert line.startswith(f"job {job} RUNNING on fl[1-2] (2 nodes) · ") and line.endswith(" node-h"), line
        if shutil.which("tmux") is not None:
            _watch_80x24_shows_the_job(proj, slurm, job, tmp_path)
        # the following watch (plain lines): the job read off the screen's thread, at once and every 10 s
        plain = _fedctl(proj, slurm, "watch", "--duration", "4", "--interval", "1")
        assert plain.returncode == 0, plain.stdout + plain.stderr
        assert f" job={job} job_state=RUNNING nodes=fl[1-2]" in plain.stdout, plain.stdout
        snap = _json(proj, slurm, "watch")
        assert (snap["allocation"]["job"], snap["allocation"]["state"]) == (job, "RUNNING")
        assert snap["node_hours"] > 0 and snap["cost"] == pytest.approx(snap["node_hours"] * 2.5, rel=0.05)
    finally:
        res = _fedctl(proj, slurm, "teardown", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_nothing_left(slurm, _run_dir(proj, run_id))
    cost = _json(proj, slurm, "cost", "--run", run_id)
    [row] = [r for r in cost["hosts"] if r["role"] == "allocation"]
    assert (row["name"], row["nodes"], row["running"]) == (f"job {job}", 2, False)
    assert cost["node_hours"] == pytest.approx(2 * row["hours"]) and cost["node_hours"] > 0
    assert cost["total"] == {"USD": pytest.approx(cost["node_hours"] * 2.5)}  # money = node-hours x price
    assert cost["unpriced"] == []
    table = _fedctl(proj, slurm, "cost", "--run", run_id)
    assert f"job {job}" in table.stdout and "node-hours" in table.stdout


def _watch_80x24_shows_the_job(proj: Path, slurm: SlurmCluster, job: str, tmp_path: Path) -> None:
    """The live screen in an 80x24 tmux pane: the job line under the header, within the screen,
    no word broken; q quits (the run goes on)."""
    from tests.integration.test_watch_80x24 import tmux_pane
    from tests.unit.test_render import broken_words

    session = f"fedctl-sw-{os.getpid()}"
    done = tmp_path / "watch.rc"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in slurm.env().items() if k in ("SLURM_CONF", "PATH", "PYTHONPATH"))
    cmd = (f"cd {shlex.quote(str(proj))} && env -u COLUMNS -u LINES {env} {sys.executable} -m fedctl watch "
           f"--interval 0.5; echo $? > {done}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    try:
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "80", "-y", "24"], check=True)
        lines = wait_until(lambda: (lambda got: got if any(ln.startswith(f"job {job} RUNNING") for ln in got)
                                    and any(ln.startswith("hosts (") for ln in got) else None)(tmux_pane(session)),
                           60, interval=0.3, what="the 80x24 screen with the job line")
        assert len(lines) <= 24 and max(len(ln) for ln in lines) <= 80, "\n".join(lines)
        assert broken_words(lines) == [], "\n".join(lines)
        line = next(ln for ln in lines if ln.startswith(f"job {job} "))
        assert line.startswith(f"job {job} RUNNING on fl[1-2] (2 nodes) · ") and " left of 10m00s" in line, line
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_until(lambda: done.exists() and done.read_text().strip() == "0", 15, interval=0.2, what="watch to quit")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_a_pending_job_shows_pending_and_its_reason(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The partition is held by another job: status says the run's job pends and why (Resources);
    without a price, cost counts no node-hours for a job that never ran and says max_cost cannot apply."""
    blocker = slurm.run(["sbatch", "--parsable", "-J", "blocker", "-N", "4", "--exclusive",
                         "--wrap", "sleep 300"]).stdout.strip()
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 5, "budget": {"max_cost": 5}})
    log = tmp_path / "provision.out"
    proc = None
    try:
        wait_until(lambda: slurm.run(["squeue", "-h", "-j", blocker, "-o", "%T"]).stdout.strip() == "RUNNING", 30,
                   what="the blocker running")
        proc = _start(proj, slurm, log, "provision", "--clients", "2", "-i", "slurm.yaml", "--yes")
        job = wait_until(lambda: _job(proj), 120, interval=0.1, what=f"the job id in the state ({log})")

        def pending() -> dict[str, Any] | None:
            alloc = _json(proj, slurm, "status")["allocation"]
            return alloc if alloc is not None and alloc["reason"] is not None else None

        alloc = wait_until(pending, 60, interval=0.5, what="status showing the job's reason")
        assert (alloc["job"], alloc["state"], alloc["reason"], alloc["nodelist"], alloc["nodes"]) == (
            job, "PENDING", "Resources", "", 2)
        assert alloc["time_left_s"] is None and alloc["ended"] is False
        assert f"job {job} PENDING (Resources) · 2 nodes asked · limit 10m00s" in _fedctl(proj, slurm, "status").stdout
        cost = _json(proj, slurm, "cost")
        assert (cost["node_hours"], cost["total"], cost["unpriced"]) == (0.0, {}, [f"job {job}"])
        assert cost["budget_notes"][0].startswith(f"budget.max_cost is not applied to job {job}")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: provision cancels the pending job
        assert proc.wait(120) == 130, log.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
        slurm.run(["scancel", blocker], check=False)
    res = _fedctl(proj, slurm, "teardown", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: _squeue(slurm) == "", 60, what="no job left")


def test_the_budget_guard_trips_on_max_cost_priced_per_node_hour(slurm: SlurmCluster, tmp_path: Path) -> None:
    """2 nodes at 360 per node-hour cost 0.2 a second: max_cost 12 trips about 50 s in; run says so,
    collects, tears down, and cost's total is the node-hours times the price."""
    proj = _project(tmp_path, {"payload": str(ECHO), "rounds": 3000, "echo_round_s": 0.2}, price=360.0)
    log = tmp_path / "run.out"
    proc = _start(proj, slurm, log, "run", "--clients", "2", "-i", "slurm.yaml", "--yes", "--interval", "1",
                  "--max-cost", "12")
    try:
        assert proc.wait(300) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    out = log.read_text()
    assert "stopped by the budget guard: the run has cost " in out and "budget.max_cost is 12 USD" in out, out[-3000:]
    run_id = next(p.name for p in (proj / "results").iterdir())
    _assert_nothing_left(slurm, _run_dir(proj, run_id))
    cost = _json(proj, slurm, "cost", "--run", run_id)
    assert cost["total"]["USD"] == pytest.approx(cost["node_hours"] * 360.0)
    # stopped near the limit: fedctl trips up to FEDCTL_MARGIN_FRACTION (20%) before it, teardown adds a little
    from fedctl.budget import FEDCTL_MARGIN_FRACTION

    assert (1 - FEDCTL_MARGIN_FRACTION) * 12.0 <= cost["total"]["USD"] <= 14.0, cost
