"""The state file: atomic writes, round trips, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.errors import StateError, StateLockedError
from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore, atomic_write


def _state() -> RunState:
    s = RunState(run_id="20260101-000000-abcd", provider="static", clients=3, rounds=2)
    rec = HostRecord(info=HostInfo(name="h1", address="10.0.0.1", roles=("server",), price_per_hour=0.5))
    rec.processes.append(ProcessRecord(role="server", index=0, pid=123, pidfile="/w/server.pid"))
    s.hosts.append(rec)
    return s


def test_round_trip(tmp_path):
    store = StateStore(tmp_path / ".fedctl", clock=lambda: 1000.0)
    s = _state()
    store.save(s)
    back = store.load()
    assert back.to_dict() == s.to_dict()
    assert back.hosts[0].info.roles == ("server",)
    assert back.hosts[0].processes[0].label == "server"
    assert back.updated_at == 1000.0
    assert oct(os.stat(store.state_file).st_mode & 0o777) == "0o600"


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    store = StateStore(tmp_path / ".fedctl")
    s = _state()
    store.save(s)
    before = store.state_file.read_bytes()
    s.phase = "running"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(s)
    assert store.state_file.read_bytes() == before
    assert sorted(p.name for p in store.root.iterdir()) == ["state.json"]


def test_atomic_write_never_shows_a_partial_file(tmp_path):
    # A reader process loops over the file while we rewrite it many times with different sizes.
    target = tmp_path / "f.json"
    atomic_write(target, json.dumps({"n": 0}).encode())
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import json,sys\nbad=0\nfor _ in range(3000):\n"
         f"    t=open({str(target)!r}).read()\n"
         "    try: json.loads(t)\n    except ValueError: bad+=1\nprint(bad)"],
        stdout=subprocess.PIPE, text=True,
    )
    i = 0
    while reader.poll() is None:
        i += 1
        atomic_write(target, json.dumps({"n": i, "pad": "x" * (i % 5000)}).encode())
    assert reader.stdout.read().strip() == "0"


def test_missing_and_corrupt_state_are_clear_errors(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    with pytest.raises(StateError, match="no run here"):
        store.load()
    store.root.mkdir()
    store.state_file.write_text("{not json")
    with pytest.raises(StateError, match="unreadable"):
        store.load()


def test_lock_refuses_a_second_fedctl(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    code = (
        "import sys\nfrom fedctl.state import StateStore\nfrom fedctl.errors import StateLockedError\n"
        f"s=StateStore({str(store.root)!r})\n"
        "try:\n    with s.lock(): print('got')\nexcept StateLockedError as e: print('locked', e)\n"
    )
    with store.lock():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        assert out.startswith("locked") and str(os.getpid()) in out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "got"


def test_owned_paths_and_process_identity_round_trip(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    s = _state()
    s.hosts[0].own("/w", "dir")
    s.hosts[0].own("/w/runs/r1", "tree")
    s.hosts[0].own("/w", "tree")  # recorded once, the first kind stays
    s.hosts[0].processes[0].start_time = 4242
    store.save(s)
    back = store.load().hosts[0]
    assert [(o.path, o.kind) for o in back.owned] == [("/w", "dir"), ("/w/runs/r1", "tree")]
    assert back.processes[0].start_time == 4242


def test_an_older_state_never_lets_a_flag_delete_a_folder(tmp_path):
    """An older fedctl stored ``created_workdir``; it loads, and owns nothing."""
    store = StateStore(tmp_path / ".fedctl")
    d = _state().to_dict()
    d["hosts"][0].pop("owned")
    d["hosts"][0]["created_workdir"] = True
    store.state_file.parent.mkdir(parents=True)
    store.state_file.write_text(json.dumps(d))
    assert store.load().hosts[0].owned == []


def test_status_while_provisioning_does_not_call_unasked_hosts_unreachable(tmp_path):
    from fedctl.ops.status import observe

    store = StateStore(tmp_path / ".fedctl")
    s = _state()
    s.phase = "provisioning"
    s.hosts[0].status = "pending"
    st = observe(store, s)
    assert [h.reachable for h in st.hosts] == [None]
