"""Ctrl-C in ``fedctl run`` stops the run, collects results, tears down and exits 130; leaving the
run going is the explicit ``d`` key of the live screen.

The real console script runs on the local provider (this machine) with the stdlib echo payload, once
without a terminal (plain progress lines) and twice on a pseudo-terminal (the live screen, as a
person sees it). SIGINT is sent to the fedctl process only (not its process group), as a terminal's
Ctrl-C reaches the foreground fedctl: the payload processes run in their own sessions.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest
import yaml

from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"


def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    # many short rounds: the run is still training whenever the test interrupts it
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO), "rounds": 2000, "echo_round_s": 0.2}))
    return proj


def state(proj: Path) -> dict:
    return json.loads((proj / ".fedctl" / "state.json").read_text())


def rounds_done(proj: Path) -> int:
    """Rounds in the server's metrics.jsonl (the local provider's server workdir)."""
    files = list((proj / ".fedctl" / "local").glob("*/runs/*/metrics.jsonl"))
    return sum(1 for f in files for line in f.read_text().splitlines() if '"round"' in line)


def run_pids(proj: Path) -> list[int]:
    st = state(proj)
    return [p["pid"] for h in st["hosts"] for p in h["processes"] if p.get("pid")]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Terminal:
    """fedctl on a pseudo-terminal (24 lines of 200 columns), its output read continuously so it never blocks."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: fedctl on the terminal
            os.chdir(cwd)
            os.environ.update(COLUMNS="200", LINES="24")  # a small screen: the keys line must still show
            os.execv(FEDCTL, [FEDCTL, *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
        self.out = b""
        self.status: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.out += chunk

    def text(self) -> str:
        return self.out.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        def reaped() -> bool:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            return self.status is not None

        wait_until(reaped, timeout, interval=0.1, what="fedctl to exit")
        self._reader.join(5)
        os.close(self.fd)
        assert self.status is not None
        return self.status


def assert_torn_down_with_results(proj: Path, run_id: str, pids: list[int]) -> None:
    archived = json.loads((proj / ".fedctl" / "runs" / run_id / "state.json").read_text())
    assert archived["phase"] == "torn_down"
    assert state(proj)["phase"] == "torn_down"
    assert pids and [p for p in pids if alive(p)] == []
    metrics = proj / "results" / run_id / "metrics.jsonl"
    assert metrics.is_file() and metrics.read_text().count('"round"') >= 1


def test_ctrl_c_without_a_terminal_tears_down_and_exits_130(tmp_path):
    proj = project(tmp_path)
    out = open(tmp_path / "out.txt", "w")
    proc = subprocess.Popen([FEDCTL, "run", "--clients", "2", "--interval", "0.5"], cwd=proj, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        # in the follow phase: it printed a round, and the server has written some
        wait_until(lambda: "round " in (tmp_path / "out.txt").read_text() and rounds_done(proj) >= 2, 90,
                   what="fedctl run to follow a training round")
        run_id, pids = state(proj)["run_id"], run_pids(proj)
        assert all(alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130, (tmp_path / "out.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    text = (tmp_path / "out.txt").read_text()
    assert "interrupted: stopping the run" in text and "the run goes on" not in text
    assert_torn_down_with_results(proj, run_id, pids)


def test_ctrl_c_on_the_live_screen_tears_down_and_exits_130(tmp_path):
    proj = project(tmp_path)
    term = Terminal(proj, "run", "--clients", "2", "--interval", "0.5")
    try:
        try:
            wait_until(lambda: "d: detach" in term.text() and (proj / ".fedctl" / "state.json").exists()
                       and state(proj)["phase"] == "running" and rounds_done(proj) >= 2, 90,
                       what="the live screen of a training run")
        except AssertionError:
            print(repr(term.text()[-3000:]))
            raise
        run_id, pids = state(proj)["run_id"], run_pids(proj)
        os.kill(term.pid, signal.SIGINT)
        code = term.wait(120)
    finally:
        if term.status is None:
            os.kill(term.pid, signal.SIGKILL)
    assert code == 130, term.text()[-3000:]
    assert "interrupted: stopping the run" in term.text()
    assert_torn_down_with_results(proj, run_id, pids)


def test_d_on_the_live_screen_detaches_and_the_run_goes_on(tmp_path):
    proj = project(tmp_path)
    term = Terminal(proj, "run", "--clients", "2", "--interval", "0.5")
    try:
        wait_until(lambda: "d: detach" in term.text() and rounds_done(proj) >= 1, 90,
                   what="the live screen of a training run")
        os.write(term.fd, b"d")
        code = term.wait(60)
    finally:
        if term.status is None:
            os.kill(term.pid, signal.SIGKILL)
    try:
        assert code == 0, term.text()[-3000:]
        assert "detached: the run goes on" in term.text() and "fedctl watch" in term.text()
        pids = run_pids(proj)
        assert state(proj)["phase"] == "running" and pids and all(alive(p) for p in pids)
        seen = rounds_done(proj)
        wait_until(lambda: rounds_done(proj) > seen, 30, what="training to go on after detaching")
    finally:
        td = subprocess.run([FEDCTL, "teardown", "--yes"], cwd=proj, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert td.returncode == 0, td.stdout + td.stderr
