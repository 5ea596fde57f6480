"""Remote primitives through the local connector: detached processes, process identity, stop, push."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.deploy import (
    ProcRef,
    find_run_pids,
    parse_pidfile,
    pids_alive,
    push_files,
    read_pidfiles,
    spawn_detached,
    stop_pids,
)
from tests.waiting import wait_until


def _conn(tmp_path) -> LocalConnector:
    return LocalConnector(HostInfo(name="l", address="127.0.0.1", kind="local", workdir=str(tmp_path)))


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[19])


def _group(pgid: int) -> dict[int, str]:
    """pid -> command line of the live members of process group ``pgid``."""
    out = {}
    for p in subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split():
        try:
            out[int(p)] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return out


def _group_running(pgid: int, *commands: str) -> dict[int, str]:
    """The group's members once every one of ``commands`` runs in it, else {} (not yet)."""
    g = _group(pgid)
    return g if set(commands) <= set(g.values()) else {}


def _ignores_term(pid: int) -> bool:
    """Whether ``pid`` has set SIGTERM to ignored (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


def test_spawn_is_detached_group_leader_and_stop_kills_the_group(tmp_path):
    conn = _conn(tmp_path)
    run_dir = tmp_path / "runs" / "20260101-000000-beef"
    run_dir.mkdir(parents=True)
    # a parent that starts a child: stop must end both (process group)
    cmd = "sh -c 'sleep 300 & sleep 301'"
    ref = spawn_detached(conn, cmd, str(run_dir), str(run_dir / "p.pid"), str(run_dir / "p.log"))
    pid = ref.pid
    assert ref.start == _start_time(pid) and ref.mark == str(run_dir)
    assert (run_dir / "p.pid").read_text().split() == [str(pid), str(ref.start)]
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    # both sleeps run (the shell may exec the last one itself, so the group is 2 or 3 processes)
    group = list(wait_until(lambda: _group_running(pid, "sleep 300", "sleep 301"), 10,
                            what="the spawned shell's two sleeps"))
    assert pids_alive(conn, [ref]) == {pid: True}
    assert read_pidfiles(conn, str(run_dir)) == [ref]
    # the run mark is inherited: the child is found too, with no pid recorded anywhere
    assert set(group) <= set(find_run_pids(conn, [str(run_dir)]))
    # another host on the same machine (another run dir) does not see it
    assert find_run_pids(conn, [str(tmp_path / "other" / "runs" / "20260101-000000-beef")]) == []
    assert stop_pids(conn, [ref], grace_s=2) == []
    for p in group:
        assert not pids_alive(conn, [ProcRef(p, None, str(run_dir))])[p]
    assert find_run_pids(conn, [str(run_dir)]) == []


def test_stop_escalates_to_kill(tmp_path):
    conn = _conn(tmp_path)
    ref = spawn_detached(conn, "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'", str(tmp_path),
                         str(tmp_path / "x.pid"), str(tmp_path / "x.log"))
    # TERM must really be ignored before stop, or TERM alone would end it and KILL is never needed
    wait_until(lambda: _ignores_term(ref.pid), 10, what="the shell to ignore TERM")
    t0 = time.monotonic()
    assert stop_pids(conn, [ref], grace_s=0.6) == []
    assert 0.6 <= time.monotonic() - t0 < 10  # it waited the grace out, then KILLed
    assert not pids_alive(conn, [ref])[ref.pid]


def test_stop_finds_unrecorded_processes_by_their_run_mark(tmp_path):
    """A fedctl killed between spawn and saving the pid: the run mark still finds the process."""
    conn = _conn(tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    ref = spawn_detached(conn, "sleep 300", str(run_dir), str(run_dir / "a.pid"), str(run_dir / "a.log"))
    # the mark is in the environment from the exec of setsid on: wait for that instant
    wait_until(lambda: b"FEDCTL_RUN_DIR" in Path(f"/proc/{ref.pid}/environ").read_bytes(), 5, interval=0.01,
               what="the run mark in the process's environment")
    (run_dir / "a.pid").unlink()
    assert stop_pids(conn, [], scan_marks=[str(run_dir)], grace_s=2) == []
    assert not pids_alive(conn, [ref])[ref.pid]


def test_a_reused_pid_is_not_ours(tmp_path):
    """An unrelated process that holds a recorded pid (other start time, no run mark) is neither
    alive for fedctl nor signalled by stop, and neither is its process group."""
    conn = _conn(tmp_path)
    run_dir = tmp_path / "runs" / "r2"
    run_dir.mkdir(parents=True)
    # an unrelated process group leader, as a pid reused after the run's server ended would be
    other = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    try:
        group = list(wait_until(lambda: _group_running(other.pid, "sleep 300"), 10,
                                what="the unrelated group's child"))
        assert len(group) == 2
        real = _start_time(other.pid)
        stale = [ProcRef(other.pid, real - 1, str(run_dir)), ProcRef(other.pid, None, str(run_dir))]
        for ref in stale:
            assert pids_alive(conn, [ref]) == {other.pid: False}
            assert stop_pids(conn, [ref], scan_marks=[str(run_dir)], grace_s=0.4) == []
        # the same start time but no run mark: not ours either (a pid file that was edited)
        assert stop_pids(conn, [ProcRef(other.pid, real, str(run_dir))], grace_s=0.4) == []
        # what is asserted is this window: a signalled group would be gone within it
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=0.5)
        for p in group:
            assert os.path.exists(f"/proc/{p}")
    finally:
        os.killpg(other.pid, 9)
        other.wait()


def test_identity_needs_no_particular_login_shell(tmp_path):
    """The identity checks run under /bin/sh: the pid file of an older fedctl ("PID") still parses."""
    assert parse_pidfile("123\n", "/m") == [ProcRef(123, None, "/m")]
    assert parse_pidfile("123 456\n\ngarbage\n", "/m") == [ProcRef(123, 456, "/m")]


def test_push_sends_only_changed_files(tmp_path):
    conn = _conn(tmp_path)
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "a.py").write_text("a")
    (src / "pkg" / "b.py").write_text("b")

    def files():
        return [(str(p.relative_to(src)), str(p), hashlib.sha256(p.read_bytes()).hexdigest())
                for p in sorted(src.rglob("*.py"))]

    dest = tmp_path / "dest"
    first = push_files(conn, files(), str(dest))
    assert sorted(first.sent) == ["a.py", "pkg/b.py"] and first.unchanged == ()
    (src / "a.py").write_text("a2")
    second = push_files(conn, files(), str(dest))
    assert second.sent == ("a.py",) and second.unchanged == ("pkg/b.py",)
    assert (dest / "a.py").read_text() == "a2"
