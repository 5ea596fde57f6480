"""provision -> start -> status -> exec -> stop -> teardown against real sshd hosts on loopback.

fedctl runs as a real subprocess (``python -m fedctl``) in a temporary project folder, exactly as
a user runs it; the hosts are real OpenSSH servers started by the ``sshd_fleet`` fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.sshd import pid_alive
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"


def fedctl(cwd: Path, *args: str, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI as a user would; never interactive (stdin closed)."""
    res = subprocess.run(
        [sys.executable, "-m", "fedctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and res.returncode != 0:
        raise AssertionError(f"fedctl {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def project(tmp_path: Path, fleet, rounds: int = 4, round_s: float = 0.3, **extra) -> Path:
    """A project folder with fedctl.yaml (echo payload) and an inventory for ``fleet``."""
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    cfg = {"payload": str(ECHO), "rounds": rounds, "echo_round_s": round_s, **extra}
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(cfg))
    fleet.write_inventory(proj / "inventory.yaml")
    return proj


def run_pids(run_id: str) -> list[int]:
    """Pids on this machine (all loopback hosts are this machine) whose argv names the run."""
    out = subprocess.run(["pgrep", "-f", f"runs/[{run_id[0]}]{run_id[1:]}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def files_under(fleet) -> list[str]:
    """Every file left in the hosts' workdirs."""
    return [str(p) for h in fleet.hosts for p in Path(h.workdir).rglob("*")]


def state(proj: Path) -> dict:
    return json.loads((proj / ".fedctl" / "state.json").read_text())


def status_json(proj: Path) -> dict:
    """``fedctl status --json`` as a dict."""
    return json.loads(fedctl(proj, "status", "--json", check=True).stdout)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    return not pid_alive(pid)


def rounds_done(metrics: Path) -> int:
    """How many round lines the server has appended to its metrics.jsonl so far."""
    return metrics.read_text().count('"type": "round"') if metrics.exists() else 0


def test_full_lifecycle_with_echo_payload(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    proj = project(tmp_path, fleet, rounds=200, round_s=0.2)

    res = fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    assert "h1" in res.stdout and "provisioned" in res.stdout
    st = state(proj)
    assert [h["status"] for h in st["hosts"]] == ["provisioned"] * 3
    assert st["hosts"][0]["facts"]["python"] == ".".join(map(str, sys.version_info[:3]))
    # re-running with the same arguments changes nothing
    again = fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    assert state(proj)["run_id"] == st["run_id"]
    assert "provisioned" in again.stdout

    fedctl(proj, "start", check=True)
    st = state(proj)
    run_id = st["run_id"]
    assert st["phase"] == "running"
    clients = {h["info"]["name"]: [p["client_ids"] for p in h["processes"] if p["role"] == "client"] for h in st["hosts"]}
    assert clients == {"h1": [], "h2": [[0, 1]], "h3": [[2, 3]]}
    token = (fleet.hosts[0].workdir / "runs" / run_id / "token")
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    secret = token.read_text()
    # the token is on no command line and in no state file
    assert secret not in (proj / ".fedctl" / "state.json").read_text()
    for pid in run_pids(run_id):
        assert secret not in Path(f"/proc/{pid}/cmdline").read_text()

    # a loaded CI machine may take a while to finish round 1
    status = wait_until(lambda: (s := status_json(proj))["round"] >= 1 and s, 60, interval=0.3,
                        what="fedctl status to report round 1")
    assert status["run_id"] == run_id and status["phase"] == "running"
    assert status["rounds"] == 200 and status["round"] >= 1
    assert all(h["reachable"] for h in status["hosts"])
    assert all(all(h["alive"].values()) and h["alive"] for h in status["hosts"])

    # a killed client shows as dead
    victim = next(p for p in state(proj)["hosts"][2]["processes"] if p["role"] == "client")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: gone(victim["pid"]), 10, what="the killed client to exit")
    status = status_json(proj)
    h3 = next(h for h in status["hosts"] if h["name"] == "h3")
    assert h3["alive"] == {"client-0": False}

    ex = fedctl(proj, "exec", "--role", "client", "--", "echo hi-$((6*7))", check=True)
    assert "h2" in ex.stdout and "hi-42" in ex.stdout and "h1 " not in ex.stdout
    bad = fedctl(proj, "exec", "--host", "h2", "--", "exit 3")
    assert bad.returncode == 3, bad.stdout + bad.stderr  # ExitCode.HOSTS
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in bad.stdout.splitlines()]
    assert [r[:2] for r in rows if r[0] == "h2"] == [["h2", "error: exit 3"]], bad.stdout  # host, exit

    fedctl(proj, "stop", "--grace", "3", check=True)
    assert run_pids(run_id) == []
    assert state(proj)["phase"] == "stopped"

    td = fedctl(proj, "teardown", "--yes", check=True)
    assert "ok" in td.stdout
    assert run_pids(run_id) == []
    assert files_under(fleet) == []
    results = proj / "results" / run_id
    assert (results / "metrics.jsonl").exists()
    assert (results / "logs" / "h1" / "server.log").exists()
    assert (results / "logs" / "h2" / "client-0.log").exists()
    assert state(proj)["phase"] == "torn_down"
    # idempotent
    assert fedctl(proj, "teardown", "--yes").returncode == 0


def test_run_finishes_and_leaves_nothing(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=3, round_s=0.1)
    res = fedctl(proj, "run", "--clients", "3", "-i", "inventory.yaml", "--yes", "--interval", "0.3", check=True)
    assert "finished" in res.stdout
    run_id = state(proj)["run_id"]
    assert state(proj)["phase"] == "torn_down"
    assert run_pids(run_id) == [] and files_under(fleet) == []
    lines = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines if x.get("type") == "round"] == [1, 2, 3]


def test_dead_host_is_reported_by_provision_and_teardown(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    proj = project(tmp_path, fleet)
    fleet.stop(2)
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 3, res.stdout + res.stderr  # ExitCode.HOSTS
    assert "h3" in res.stderr and "failed" in res.stdout
    st = state(proj)
    assert {h["info"]["name"]: h["status"] for h in st["hosts"]} == {"h1": "provisioned", "h2": "provisioned", "h3": "failed"}
    # start refuses while a host is not provisioned
    assert fedctl(proj, "start").returncode == 2  # ExitCode.USAGE
    td = fedctl(proj, "teardown", "--yes")
    assert td.returncode == 3 and "h3" in td.stderr
    st = state(proj)
    assert {h["info"]["name"]: h["status"] for h in st["hosts"]}["h3"] != "torn_down"
    assert st["phase"] == "tearing_down"
    fleet.start(2)
    assert fedctl(proj, "teardown", "--yes").returncode == 0
    assert state(proj)["phase"] == "torn_down"
    assert files_under(fleet) == []


def test_changed_host_key_aborts_with_hint(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet)
    fedctl(proj, "exec", "-i", "inventory.yaml", "--", "true", check=True)
    known = (proj / ".fedctl" / "known_hosts").read_text()
    assert fleet.hosts[1].address in known
    fleet.regen_host_key(1)
    res = fedctl(proj, "exec", "-i", "inventory.yaml", "--", "true")
    assert res.returncode == 5, res.stdout + res.stderr  # ExitCode.HOST_KEY
    # the error names the host, and the hint gives the exact command that forgets its old key
    flat = " ".join(res.stdout.replace("│", " ").split())  # the table wraps the long hint
    assert "h2 error: host h2 (" in flat, res.stdout
    h2 = fleet.hosts[1]
    assert f"ssh-keygen -f {proj / '.fedctl' / 'known_hosts'} -R '[{h2.address}]:{h2.port}'" in flat, res.stdout


def test_unknown_inventory_key_is_a_clear_error(tmp_path):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "inv.yaml").write_text("provider: static\nhosts:\n  - name: a\n    adress: 127.0.0.2\n")
    res = fedctl(proj, "provision", "--clients", "1", "-i", "inv.yaml", "--yes")
    assert res.returncode == 2
    assert "inv.yaml" in res.stderr and "hosts[0]" in res.stderr and "address" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (proj / ".fedctl" / "state.json").exists()


def _spawn_fedctl(proj: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedctl", *args], cwd=proj, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_mid_phase(proc: subprocess.Popen, proj: Path, mid_phase, what: str, timeout: float = 90.0) -> dict:
    """SIGKILL ``proc`` as soon as its state file shows ``mid_phase`` (a predicate on the state dict),
    then check that the state it left really is that point of the phase: a kill that came too late
    (the phase already over) or too early must fail the test, not pass it by luck. Returns the state."""

    def reached() -> bool:
        assert proc.poll() is None, f"fedctl exited ({proc.returncode}) before {what}"
        f = proj / ".fedctl" / "state.json"
        return f.exists() and bool(mid_phase(json.loads(f.read_text())))

    wait_until(reached, timeout, interval=0.02, what=what)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = state(proj)  # fedctl is dead: this is what a user finds after the crash
    assert mid_phase(left), f"fedctl was not killed {what}: {left['phase']}"
    return left


def _procs(st: dict, role: str) -> list[dict]:
    return [p for h in st["hosts"] for p in h["processes"] if p["role"] == role]


def _setup_blocked(st: dict) -> bool:
    """provision is in its set-up step on every host (the hosts are still provisioning)."""
    return st["phase"] == "provisioning" and all(h["status"] == "provisioning" for h in st["hosts"])


def _server_spawned_no_clients(st: dict) -> bool:
    """start has spawned the server (its pid is recorded) and has not recorded any client yet."""
    servers = _procs(st, "server")
    return (st["phase"] == "starting" and len(servers) == 1 and servers[0]["pid"] is not None
            and _procs(st, "client") == [])


def _clients_spawned_not_running(st: dict) -> bool:
    """start has spawned every client (pids recorded) and is still checking them (phase starting)."""
    clients = _procs(st, "client")
    return st["phase"] == "starting" and len(clients) == 2 and all(p["pid"] is not None for p in clients)


@pytest.mark.parametrize("phase", ["provision", "start-server", "start-clients"])
def test_fedctl_killed_then_teardown_leaves_nothing(sshd_fleet, tmp_path, phase):
    fleet = sshd_fleet(3)
    release = tmp_path / "release-setup"
    proj = project(tmp_path, fleet, rounds=100, round_s=0.2)
    if phase == "provision":
        # a set-up step that waits for the test (a stand-in for a slow `pip install`), so the kill
        # lands while every host is being provisioned: its workdir made, its set-up running
        fleet.write_inventory(proj / "inventory.yaml", setup=[f"while [ ! -e {release} ]; do sleep 0.1; done"])
        proc = _spawn_fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes")
        wait_until(lambda: all(list((h.workdir / "envs").rglob("*.log")) for h in fleet.hosts), 90,
                   what="the set-up step to run on every host")
        st = _kill_mid_phase(proc, proj, _setup_blocked, "during the hosts' set-up")
        # the orphaned set-up commands finish on their own, as a real install would after the crash
        release.touch()
        wait_until(lambda: subprocess.run(["pgrep", "-f", str(release)], capture_output=True).returncode == 1,
                   30, what="the orphaned set-up commands to finish")
    else:
        fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
        proc = _spawn_fedctl(proj, "start")
        if phase == "start-server":
            st = _kill_mid_phase(proc, proj, _server_spawned_no_clients, "after the server spawned, before any client")
        else:
            st = _kill_mid_phase(proc, proj, _clients_spawned_not_running, "after the clients spawned, while starting")
        assert run_pids(st["run_id"]), "the kill left no process behind: nothing for teardown to prove"
    td = fedctl(proj, "teardown", "--yes")
    assert td.returncode == 0, td.stdout + td.stderr
    assert run_pids(st["run_id"]) == []
    assert files_under(fleet) == []
    assert state(proj)["phase"] == "torn_down"


def test_killed_server_is_resumed_from_its_checkpoint(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=25, round_s=0.2)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    st = state(proj)
    run_id = st["run_id"]
    metrics = fleet.hosts[0].workdir / "runs" / run_id / "metrics.jsonl"
    wait_until(lambda: rounds_done(metrics) >= 3, 60, interval=0.1, what="3 rounds in metrics.jsonl")
    server = next(p for p in st["hosts"][0]["processes"] if p["role"] == "server")
    os.kill(server["pid"], signal.SIGKILL)
    wait_until(lambda: gone(server["pid"]), 10, what="the killed server to exit")
    status = status_json(proj)
    assert status["phase"] == "failed"
    assert fedctl(proj, "start", "--resume", "--set", "rounds=3").returncode == 2  # cannot change a run
    fedctl(proj, "start", "--resume", check=True)
    st2 = state(proj)
    assert st2["run_id"] == run_id and st2["phase"] == "running"
    new_server = next(p for p in st2["hosts"][0]["processes"] if p["role"] == "server")
    assert new_server["pid"] != server["pid"]
    status = wait_until(lambda: (s := status_json(proj))["phase"] != "running" and s, 90, interval=0.5,
                        what="the resumed run to end")
    assert status["phase"] == "finished", status
    rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines() if '"type": "round"' in x]
    assert rounds == list(range(1, 26))
    assert fedctl(proj, "start", "--resume").returncode == 2  # finished: nothing to resume
    fedctl(proj, "teardown", "--yes", check=True)
    assert run_pids(run_id) == [] and files_under(fleet) == []


def test_host_lost_mid_run_is_kept_until_teardown_can_finish(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    proj = project(tmp_path, fleet, rounds=500, round_s=0.2)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    run_id = state(proj)["run_id"]
    fleet.stop(2)  # h3's sshd dies; its client process (detached) keeps running
    status = status_json(proj)
    h3 = next(h for h in status["hosts"] if h["name"] == "h3")
    assert h3["reachable"] is False
    td = fedctl(proj, "teardown", "--yes", "--grace", "2")
    assert td.returncode == 3 and "h3" in td.stderr
    st = state(proj)
    assert st["phase"] == "tearing_down"
    assert {h["info"]["name"]: h["status"] for h in st["hosts"]} == {
        "h1": "torn_down", "h2": "torn_down", "h3": "provisioned"}
    assert (proj / "results" / run_id / "metrics.jsonl").exists()  # collected from the reachable server
    # h3's files are still there (its echo client exits by itself once the server is gone): the host
    # is not forgotten, it is still to tear down
    assert (fleet.hosts[2].workdir / "runs" / run_id).is_dir()
    fleet.start(2)
    fedctl(proj, "teardown", "--yes", "--grace", "2", check=True)
    assert state(proj)["phase"] == "torn_down"
    assert run_pids(run_id) == [] and files_under(fleet) == []
