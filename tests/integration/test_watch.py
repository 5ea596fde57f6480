"""``fedctl watch`` / ``fedctl logs`` against a running echo-payload run on real sshd hosts (loopback).

The run is made by the real ``fedctl provision`` + ``fedctl start``; watch runs as a subprocess, and
once inside tmux (send-keys / capture-pane) to check the live screen and that q leaves training running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_lifecycle import fedctl, gone, project, run_pids, state
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def running(sshd_fleet, tmp_path):
    """A 3-host run (server on h1, clients 0-3 on h2/h3) of the echo payload, stopped afterwards."""
    fleet = sshd_fleet(3)
    proj = project(tmp_path, fleet, rounds=400, round_s=0.2)
    fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    yield proj, fleet
    fedctl(proj, "stop", "--yes")
    for pid in run_pids(state(proj)["run_id"]):
        os.kill(pid, signal.SIGKILL)


def watch_json(proj: Path) -> dict:
    res = fedctl(proj, "watch", "--json", check=True, timeout=60)
    return json.loads(res.stdout)


def test_watch_json_and_logs(running):
    proj, fleet = running
    d = wait_until(lambda: (w := watch_json(proj))["round"] >= 2 and w, 60, interval=0.5,
                   what="watch to report round 2")
    assert d["run_id"] == state(proj)["run_id"] and d["rounds"] == 400 and d["round"] >= 2
    assert d["accuracy"] is not None and d["accuracy"] > 0
    assert [h["name"] for h in d["hosts"]] == ["h1", "h2", "h3"]
    for h in d["hosts"]:
        assert h["reachable"] is True and h["load1"] is not None and h["mem_total_mib"] > 0
        # every host is this machine: with nvidia-smi its GPUs read "ok", without it "none"
        assert h["gpu"]["status"] == ("none" if shutil.which("nvidia-smi") is None else "ok"), h["gpu"]
        assert all(p["alive"] for p in h["processes"])
    assert {c["id"]: c["host"] for c in d["clients"]} == {0: "h2", 1: "h2", 2: "h3", 3: "h3"}
    assert all(c["rounds_taken"] >= 1 for c in d["clients"])
    assert d["federation"]["history"][-1]["accuracy"] == pytest.approx(d["accuracy"])
    assert not [a for a in d["alerts"] if a["level"] == "error"]

    # kill the client process of h3: watch says dead, with an alert
    victim = next(p for p in state(proj)["hosts"][2]["processes"] if p["role"] == "client")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: gone(victim["pid"]), 10, what="the killed client to exit")
    d = watch_json(proj)
    states = {c["id"]: c["state"] for c in d["clients"]}
    assert states[2] == states[3] == "dead" and states[0] != "dead"
    assert any(a["kind"] == "process_died" and a["host"] == "h3" for a in d["alerts"])

    logs = fedctl(proj, "logs", "server", "-n", "3", check=True).stdout.splitlines()
    assert len(logs) == 3 and all(line.startswith("h1 server | ") for line in logs)
    one = fedctl(proj, "logs", "client-03", check=True).stdout
    # logs names a client process by the client ids it holds (clients 2 and 3 on h3), not its index on h3
    assert one and all(line.startswith("h3 clients-2-3 | ") for line in one.splitlines())
    grep = fedctl(proj, "logs", "--grep", "connected to", check=True).stdout
    assert "h2 clients-0-1 |" in grep and "h3 clients-2-3 |" in grep and "h1 server" not in grep
    bad = fedctl(proj, "logs", "client-99")
    assert bad.returncode == 2 and "no process serves client 99" in bad.stderr and "Traceback" not in bad.stderr

    # -f follows all hosts at once: new server lines keep arriving
    proc = subprocess.Popen([sys.executable, "-m", "fedctl", "logs", "-f", "-n", "0", "server"], cwd=proj,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:  # until EOF
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: sum("round" in line for line in list(lines)) >= 3, 60, interval=0.1,
                   what="three new server round lines from logs -f")
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=20)[1]
        reader.join(timeout=10)
    rounds = [line for line in lines if "round" in line]
    assert len(rounds) >= 3 and all(line.startswith("h1 server | ") for line in rounds), (lines, err)


def test_watch_plain_until_done(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=6, round_s=0.2)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    res = fedctl(proj, "watch", "--until-done", "--interval", "0.3", timeout=90)
    assert res.returncode == 0, res.stderr
    assert "round=" in res.stdout  # plain status lines without a TTY
    assert "\x1b[" not in res.stdout
    assert "finished: 6 rounds" in res.stdout and "final accuracy 1.0000" in res.stdout


def test_watch_errors_are_messages_not_tracebacks(tmp_path):
    res = fedctl(tmp_path, "watch")
    assert res.returncode == 2 and "no run here" in res.stderr and "Traceback" not in res.stderr
    res = fedctl(tmp_path, "logs", "-n", "-1")
    assert res.returncode == 2 and "--lines" in res.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_screen_in_tmux_and_q_leaves_training_running(running, tmp_path):
    proj, fleet = running
    session = f"fedctl-watch-{os.getpid()}"
    done = tmp_path / "watch.rc"
    # tmux may start the pane at 80x24 with COLUMNS/LINES set when it has no client: the pane waits on a
    # tmux channel until the window is resized, and watch reads the real size
    cmd = (f"tmux wait-for {session}-go; cd {proj} && env -u COLUMNS -u LINES {sys.executable} -m fedctl watch "
           f"--interval 0.5; echo $? > {done}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "180", "-y", "50", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def shown_round(text: str) -> int | None:
        return int(text.split("round ", 1)[1].split()[0]) if "round " in text else None

    try:
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "180", "-y", "50"], check=True)
        subprocess.run(["tmux", "wait-for", "-S", f"{session}-go"], check=True)
        def full_screen() -> str:
            t = screen()
            ready = "round " in t and all(f" {h} " in t for h in ("h1", "h2", "h3")) and "client-0●" in t
            return t if ready else ""

        first = wait_until(full_screen, 30, interval=0.3, what="the live screen with every host and a live client")
        assert "fedctl watch" in first, first
        first_round = shown_round(first)
        # it updates: rounds take 0.2 s; a loaded machine still gets there
        wait_until(lambda: (shown_round(screen()) or 0) > first_round, 20, interval=0.3,
                   what=f"the screen to show a round after {first_round}")
        subprocess.run(["tmux", "send-keys", "-t", session, "f"], check=True)
        wait_until(lambda: "filter: server" in screen(), 10, interval=0.2, what="f to filter the log pane")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        rc = wait_until(lambda: done.exists() and done.read_text().strip(), 10, interval=0.2,
                        what="watch to exit on q")
        assert rc == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    pids = run_pids(state(proj)["run_id"])
    assert len(pids) >= 3  # server + 2 client processes keep running after q
    st = json.loads(fedctl(proj, "status", "--json", check=True).stdout)
    assert st["phase"] == "running"
