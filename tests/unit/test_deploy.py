"""Remote primitives through the local connector: detached processes, stop, push, run pattern."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.deploy import find_run_pids, pids_alive, push_files, read_pidfiles, run_pattern, spawn_detached, stop_pids


def _conn(tmp_path) -> LocalConnector:
    return LocalConnector(HostInfo(name="l", address="127.0.0.1", kind="local", workdir=str(tmp_path)))


def test_spawn_is_detached_group_leader_and_stop_kills_the_group(tmp_path):
    conn = _conn(tmp_path)
    run_dir = tmp_path / "runs" / "20260101-000000-beef"
    run_dir.mkdir(parents=True)
    # a parent that starts a child: stop must end both (process group)
    cmd = f"sh -c 'sleep 300 & sleep 301; : {run_dir}'"
    pid = spawn_detached(conn, cmd, str(run_dir), str(run_dir / "p.pid"), str(run_dir / "p.log"))
    assert (run_dir / "p.pid").read_text().strip() == str(pid)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    time.sleep(0.3)
    group = [int(p) for p in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()]
    assert len(group) >= 2
    assert pids_alive(conn, [pid]) == {pid: True}
    assert read_pidfiles(conn, str(run_dir)) == [pid]
    assert pid in find_run_pids(conn, ["20260101-000000-beef"])
    assert pid in find_run_pids(conn, ["20260101-000000-beef"], str(tmp_path))
    # another host on the same machine (another workdir) does not see it
    assert find_run_pids(conn, ["20260101-000000-beef"], str(tmp_path / "other")) == []
    assert stop_pids(conn, [pid], grace_s=2) == []
    for p in group:
        assert not pids_alive(conn, [p])[p]
    assert find_run_pids(conn, ["20260101-000000-beef"]) == []


def test_stop_escalates_to_kill(tmp_path):
    conn = _conn(tmp_path)
    pid = spawn_detached(conn, "sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'", str(tmp_path),
                         str(tmp_path / "x.pid"), str(tmp_path / "x.log"))
    time.sleep(0.2)
    t0 = time.monotonic()
    assert stop_pids(conn, [pid], grace_s=0.6) == []
    assert time.monotonic() - t0 < 10
    assert not pids_alive(conn, [pid])[pid]


def test_run_pattern_does_not_match_its_own_shell(tmp_path):
    conn = _conn(tmp_path)
    assert find_run_pids(conn, ["20260101-000000-dead"]) == []
    assert run_pattern("2026-x") == r"runs/[2]026\-x"
    assert run_pattern("2026-x", "/w/a.b") == r"/w/a\.b/runs/[2]026\-x"


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
