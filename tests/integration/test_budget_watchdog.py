"""Budget guards for real: the watchdog on this machine and on a loopback sshd fleet.

- the watchdog alone (no sshd): a max_hours guard of a few seconds stops a process group (children
  included), writes guard.json and runs the (harmless, injected) power-off command; a run that ends
  on its own lets it exit; an idle run trips the idle guard;
- the real flow on sshd hosts with the echo payload: ``fedctl provision`` + ``fedctl start``, then
  fedctl is gone (the laptop is closed): the watchdogs stop the run on every host; ``fedctl
  teardown`` later collects results that say why the run stopped, and nothing is left running;
- fedctl alive: its own loop (``check_guards``) trips first and tears the run down with results.

The power-off command is ALWAYS replaced (``FEDCTL_POWEROFF_COMMAND`` and the spec): these tests never
power off this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedctl.budget import Budget, watchdog_spec
from fedctl.connectors.base import HostInfo
from fedctl.state import HostRecord, ProcessRecord, RunState
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
WATCHDOG = REPO / "fedctl" / "watchdog.py"
ECHO = REPO / "tests" / "payloads" / "echo"
SAFE_POWEROFF = "echo powered-off-by-test > {marker}"


@pytest.fixture(autouse=True)
def _never_power_off(monkeypatch):
    monkeypatch.setenv("FEDCTL_POWEROFF_COMMAND", "true")


def _keeps_guarding(wd: subprocess.Popen, run_dir: Path, polls: int = 5, poll_s: float = 0.2) -> None:
    """The watchdog has started and is still there after ``polls`` polls of a live run. This window is
    what is asserted (it must not leave while the run lives), not a wait for something to happen."""
    wait_until(lambda: "guarding run" in (run_dir / "watchdog.log").read_text(), 20, what="the watchdog to start")
    with pytest.raises(subprocess.TimeoutExpired):
        wd.wait(timeout=polls * poll_s)


def _fake_run(tmp_path: Path, run_id: str = "20261124-000000-beef", child: bool = True):
    """A run dir with one 'server' process group (a python that names the run dir, plus a child)."""
    run_dir = tmp_path / "w" / "runs" / run_id
    run_dir.mkdir(parents=True)
    # the fake server's own sleep is its simulated work, not a wait of the test
    code = ("import subprocess, sys, time\n"
            + ("subprocess.Popen(['sleep', '300'])\n" if child else "")
            + "time.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), "300"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (run_dir / "server.pid").write_text(f"{proc.pid}\n")
    rec = HostRecord(
        info=HostInfo(name="local", address="127.0.0.1", roles=("server",), price_per_hour=3.6, kind="local"),
        status="provisioned", workdir=str(tmp_path / "w"), acquired_at=time.time(),
        processes=[ProcessRecord(role="server", index=0, pid=proc.pid, pidfile=str(run_dir / "server.pid"))],
    )
    state = RunState(run_id=run_id, hosts=[rec], started_at=time.time(), experiment={"on_finish": "poweroff"})
    return state, rec, run_dir, proc


def _spawn_watchdog(spec: dict, run_dir: Path) -> subprocess.Popen:
    (run_dir / "watchdog.json").write_text(json.dumps(spec))
    log = open(run_dir / "watchdog.log", "w")
    return subprocess.Popen([sys.executable, str(WATCHDOG), "--spec", str(run_dir / "watchdog.json")],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _group_pids(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(name))
    return out


def test_watchdog_max_hours_stops_the_group_and_powers_off(tmp_path):
    state, rec, run_dir, proc = _fake_run(tmp_path)
    marker = run_dir / "powered-off"
    spec = watchdog_spec(state, rec, now=time.time(), budget=Budget(max_hours=3 / 3600), run_dir=str(run_dir),
                         poweroff_command=SAFE_POWEROFF.format(marker=marker), poll_s=0.2, grace_s=2)
    spec["poweroff_delay_s"] = 0.5
    wait_until(lambda: len(_group_pids(proc.pid)) == 2, 10, what="the fake server and its child")
    t0 = time.monotonic()
    wd = _spawn_watchdog(spec, run_dir)
    try:
        assert wd.wait(timeout=30) == 0, (run_dir / "watchdog.log").read_text()
        elapsed = time.monotonic() - t0
        assert 2.0 < elapsed < 10, elapsed  # tripped near 3 s less the margin, not at once, not late
        proc.wait(timeout=5)
        assert _group_pids(proc.pid) == [], "a process of the run survived the watchdog"
        guard = json.loads((run_dir / "guard.json").read_text())
        assert guard["reason"] == "max_hours" and guard["by"] == "watchdog"
        assert marker.read_text().strip() == "powered-off-by-test"
    finally:
        for p in _group_pids(proc.pid):
            os.kill(p, 9)
        wd.kill()


def test_watchdog_exits_when_the_run_ends_on_its_own(tmp_path):
    state, rec, run_dir, proc = _fake_run(tmp_path, child=False)
    state.experiment = {"on_finish": "teardown"}
    spec = watchdog_spec(state, rec, now=time.time(), budget=Budget(max_hours=1), run_dir=str(run_dir), poll_s=0.2)
    wd = _spawn_watchdog(spec, run_dir)
    try:
        _keeps_guarding(wd, run_dir)
        proc.terminate()
        assert wd.wait(timeout=10) == 0
        assert not (run_dir / "guard.json").exists()
        assert "nothing left to guard" in (run_dir / "watchdog.log").read_text()
    finally:
        proc.kill()
        wd.kill()


def test_watchdog_with_poweroff_powers_off_a_finished_run_nobody_tore_down(tmp_path):
    state, rec, run_dir, proc = _fake_run(tmp_path, child=False)  # on_finish: poweroff
    marker = run_dir / "powered-off"
    spec = watchdog_spec(state, rec, now=time.time(), budget=Budget(max_hours=1), run_dir=str(run_dir),
                         poweroff_command=SAFE_POWEROFF.format(marker=marker), poll_s=0.2)
    spec["finish_wait_s"] = 1.5
    wd = _spawn_watchdog(spec, run_dir)
    log = run_dir / "watchdog.log"
    try:
        _keeps_guarding(wd, run_dir)
        proc.terminate()  # the run ends on its own; fedctl is not there to tear it down
        wait_until(lambda: "processes are gone; powering off in" in log.read_text(), 10,
                   what="the watchdog to see the run gone")
        noticed = time.monotonic()
        assert wd.poll() is None and not marker.exists(), "powered off at once, not after finish_wait_s"
        assert wd.wait(timeout=10) == 0
        assert time.monotonic() - noticed >= 1.5 - 0.25, "powered off before finish_wait_s"  # 1 poll early at most
        assert marker.exists()
        assert json.loads((run_dir / "guard.json").read_text())["reason"] == "finished"
    finally:
        proc.kill()
        wd.kill()


def test_watchdog_idle_guard_and_a_reused_pid_is_never_killed(tmp_path):
    state, rec, run_dir, proc = _fake_run(tmp_path, child=False)
    state.experiment = {}
    # an unrelated process whose pid sits in a pid file of the run (a reused pid): must survive
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (run_dir / "client-0.pid").write_text(f"{stranger.pid}\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"type": "round", "round": 1, "end": time.time() - 10}) + "\n")
    spec = watchdog_spec(state, rec, now=time.time(), budget=Budget(idle_minutes=0.15), run_dir=str(run_dir),
                         poll_s=0.2, grace_s=1)
    spec["pidfiles"] = [str(run_dir / "server.pid"), str(run_dir / "client-*.pid")]
    wd = _spawn_watchdog(spec, run_dir)
    try:
        assert wd.wait(timeout=20) == 0
        guard = json.loads((run_dir / "guard.json").read_text())
        assert guard["reason"] == "idle"
        proc.wait(timeout=5)
        assert stranger.poll() is None, "the watchdog killed a process that is not the run's"
    finally:
        stranger.kill()
        proc.kill()
        wd.kill()


# -- the real flow on loopback sshd hosts -------------------------------------------------------------------
def fedctl(cwd: Path, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL,
                         env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    if check and res.returncode != 0:
        raise AssertionError(f"fedctl {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def run_pids(run_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"runs/[{run_id[0]}]{run_id[1:]}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _start_echo_run(tmp_path: Path, fleet, max_hours: float, price: float = 3.6) -> tuple[Path, RunState]:
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = {"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2, "on_finish": "teardown",
           "budget": {"max_hours": max_hours, "max_cost": None, "idle_minutes": None}}
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(cfg))
    fleet.write_inventory(proj / "inventory.yaml", price_per_hour=price)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    fedctl(proj, "start")
    state = RunState.from_dict(json.loads((proj / ".fedctl" / "state.json").read_text()))
    assert state.phase == "running"
    return proj, state


def _check_results(proj: Path, run_id: str, secret: str) -> Path:
    out = proj / "results" / run_id
    for name in ("metrics.jsonl", "summary.md", "accuracy.png", "cost.png", "participation.png",
                 "response_heatmap.png", "config.yaml", "inventory.yaml", "versions.json", "cost.json"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert list((out / "logs").rglob("*.log")), "no logs collected"
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, f"the run token leaked into {path}"
            assert b"-----BEGIN" not in data, f"key material in {path}"
    return out


def test_watchdog_stops_the_fleet_when_fedctl_is_gone(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj, state = _start_echo_run(tmp_path, fleet, max_hours=6 / 3600)
    run_id = state.run_id
    secret = (fleet.hosts[0].workdir / "runs" / run_id / "token").read_text()
    # `fedctl start` launched a watchdog on every host because the config has a budget
    for h in fleet.hosts:
        assert (h.workdir / "runs" / run_id / "watchdog.pid").is_file(), h.name
    # fedctl is not running now (provision/start returned; think: laptop closed). The watchdogs act.
    wait_until(lambda: run_pids(run_id) == [], 60, interval=0.5,
               what="the run's processes (and the watchdogs) to be gone")
    server = state.server.host
    for h in fleet.hosts:
        run_dir = h.workdir / "runs" / run_id
        assert not (run_dir / "powered-off").exists(), "on_finish is teardown: no power-off"
        if h.name != server and not (run_dir / "guard.json").exists():
            # a client may exit on its own (the server told it to stop) before its watchdog trips
            assert "nothing left to guard" in (run_dir / "watchdog.log").read_text(), h.name
            continue
        guard = json.loads((run_dir / "guard.json").read_text())
        assert guard["reason"] == "max_hours" and guard["by"] == "watchdog", h.name
        if h.name == server:  # the server's watchdog is the one that reads the rounds (idle guard)
            assert json.loads((run_dir / "watchdog.json").read_text())["metrics"].endswith("metrics.jsonl")
    # fedctl comes back: teardown collects what the watchdogs left and says why the run stopped
    fedctl(proj, "teardown", "--yes")
    assert run_pids(run_id) == []
    out = _check_results(proj, run_id, secret)
    assert json.loads((out / "guard.json").read_text())["reason"] == "max_hours"
    assert "stopped by the budget guard: max_hours" in (out / "summary.md").read_text()
    assert [str(p) for h in fleet.hosts for p in Path(h.workdir).rglob("*")] == []


def test_fedctl_run_guard_tears_down_with_results(sshd_fleet, tmp_path):
    """`fedctl run --max-hours` on a fleet: fedctl's own loop trips first, collects and tears down."""
    fleet = sshd_fleet(2)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2}))
    fleet.write_inventory(proj / "inventory.yaml", price_per_hour=3.6)
    t0 = time.monotonic()
    res = fedctl(proj, "run", "--clients", "2", "-i", "inventory.yaml", "--yes", "--max-hours", str(8 / 3600),
                 "--interval", "0.3", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "budget guard" in res.stderr and "max_hours" in res.stderr
    assert time.monotonic() - t0 < 120
    state = json.loads((proj / ".fedctl" / "state.json").read_text())
    run_id = state["run_id"]
    assert state["phase"] == "torn_down"
    assert run_pids(run_id) == []
    out = proj / "results" / run_id
    guard = json.loads((out / "guard.json").read_text())
    assert guard["reason"] == "max_hours" and guard["by"] == "fedctl"
    rounds = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"round"' in l]
    assert rounds, "no round was collected"
    assert "stopped by the budget guard: max_hours" in (out / "summary.md").read_text()
    cost = json.loads((out / "cost.json").read_text())
    assert cost["total"]["USD"] > 0 and cost["hours"] > 0
    assert [str(p) for h in fleet.hosts for p in Path(h.workdir).rglob("*")] == []
