"""A round longer than ``idle_minutes`` while the clients work is not idle for the budget watchdog.

Real processes: the fedavg_tf server and one client process (two virtual clients), and the watchdog
script exactly as ``fedctl start`` pushes it (``budget.watchdog_script()``), with the spec
``budget.watchdog_spec`` writes for the server host. The round is long because every upload waits
for the simulated link (``realism.bandwidth_mbps``): about 20 s, against an idle guard of 9 s.
The watchdog sees only this host; a client host's GPU is elsewhere. What it does see is the server's
status.json, which the server rewrites when a client reports that it is still at work.

- heartbeats on (every 0.5 s): the run finishes, the watchdog leaves on its own, no guard.json;
- heartbeats off (``FEDTF_HEARTBEAT_S=0``, what the clients sent before): the same run is stopped as
  idle in the middle of its round (so the round really is longer than the guard).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PAYLOAD_DIR

from fedctl.budget import Budget, watchdog_script, watchdog_spec
from fedctl.connectors.base import HostInfo
from fedctl.state import HostRecord, RunState
from tests.waiting import wait_until

RUN_ID = "20261206-000000-idle"
IDLE_MINUTES = 0.15  # 9 s: 18 heartbeats, room for a loaded machine
CFG = {"clients": 2, "rounds": 1, "seed": 0, "model": "logreg", "strategy": {"name": "fedavg"},
       "data": {"dataset": "synthetic", "partition": "iid",
                "synthetic": {"train": 200, "test": 50, "features": 16, "classes": 4, "noise": 1.0}},
       "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
       # ~700 bytes down and up at 0.0003 Mbit/s: each client's round takes about 19 s
       "realism": {"bandwidth_mbps": 0.0003},
       "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 120.0, "retries": 0}}


def _logs(run_dir: Path) -> str:
    """The processes' logs, for a failure message."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run_dir.glob("*.log")))


def _spawn(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)


@pytest.mark.parametrize("heartbeat_s", ["0.5", "0"], ids=["clients-report-progress", "clients-silent"])
def test_a_long_round_with_working_clients_is_not_idle(tmp_path, heartbeat_s):
    run_dir = tmp_path / "w" / "runs" / RUN_ID  # the pids' command lines name it (the spec's match)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CFG))
    (run_dir / "token").write_bytes(b"watchdog-long-round-token-0123456789")
    os.chmod(run_dir / "token", 0o600)
    common = ["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir),
              "--token-file", str(run_dir / "token")]
    env = {**os.environ, "FEDTF_HEARTBEAT_S": heartbeat_s, "FEDTF_CONNECT_WAIT_S": "180",
           "FEDTF_INTRA_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    procs: list[subprocess.Popen] = []
    wd = None
    try:
        server = _spawn([sys.executable, os.path.join(PAYLOAD_DIR, "server.py"), *common,
                         "--host", "127.0.0.1", "--port", "0"], run_dir / "server.log", env)
        procs.append(server)
        (run_dir / "server.pid").write_text(f"{server.pid}\n")
        wait_until(lambda: (run_dir / "server.ready").exists() or server.poll() is not None, 120,
                   what="the server to listen")
        port = json.loads((run_dir / "server.ready").read_text())["port"]
        client = _spawn([sys.executable, os.path.join(PAYLOAD_DIR, "client.py"), *common,
                         "--server", f"127.0.0.1:{port}", "--client-ids", "0,1"], run_dir / "client-0.log", env)
        procs.append(client)
        (run_dir / "client-0.pid").write_text(f"{client.pid}\n")
        # the guard starts when round 1 does (before that, idle counts from the watchdog's start)
        wait_until(lambda: (run_dir / "status.json").exists() or server.poll() is not None, 180,
                   what="round 1 to start")

        rec = HostRecord(info=HostInfo(name="local", address="127.0.0.1", roles=("server", "client")),
                         status="provisioned", workdir=str(tmp_path / "w"), acquired_at=time.time())
        state = RunState(run_id=RUN_ID, hosts=[rec], started_at=time.time(), server={"host": "local"},
                         experiment={"on_finish": "teardown"})
        spec = watchdog_spec(state, rec, now=time.time(), budget=Budget(idle_minutes=IDLE_MINUTES),
                             run_dir=str(run_dir), poweroff_command="true", poll_s=0.2, grace_s=2)
        assert spec["status"] == str(run_dir / "status.json") and spec["idle_minutes"] == IDLE_MINUTES
        (tmp_path / "watchdog.py").write_bytes(watchdog_script())
        (run_dir / "watchdog.json").write_text(json.dumps(spec))
        wd = _spawn([sys.executable, str(tmp_path / "watchdog.py"), "--spec", str(run_dir / "watchdog.json")],
                    run_dir / "watchdog.log", env)

        assert wd.wait(timeout=180) == 0, _logs(run_dir)
        if heartbeat_s == "0":
            guard = json.loads((run_dir / "guard.json").read_text())
            assert guard["reason"] == "idle", _logs(run_dir)
            assert not (run_dir / "summary.json").exists(), "the run finished: the round was not long"
            assert server.wait(timeout=30) != 0
        else:
            assert not (run_dir / "guard.json").exists(), _logs(run_dir)
            assert "the run's processes are gone" in (run_dir / "watchdog.log").read_text()
            assert server.wait(timeout=30) == 0 and client.wait(timeout=30) == 0, _logs(run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["status"] == "finished" and summary["rounds_completed"] == 1
            rnd = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"round"' in x][0]
            assert rnd["end"] - rnd["start"] > IDLE_MINUTES * 60 * 1.5, "the round was not longer than the guard"
    finally:
        for p in [*procs, *([wd] if wd else [])]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # our own session leaders, started above
                p.wait(timeout=10)


def test_only_a_report_for_the_open_run_of_a_client_still_at_work_counts():
    """A stale report (an earlier run, a client that already reported or dropped, a closed round)
    must not keep an idle run alive."""
    import numpy as np
    from fedtf.coordinator import Coordinator

    calls = []
    coord = Coordinator(b"t" * 32, [(2,)], [10, 10, 10], ())
    coord.on_progress = lambda: calls.append(1)
    assert not coord.progress(0, [0])  # no round yet
    coord.open_round(1, [0, 1], np.zeros(2, np.float32), {}, {})
    assert coord.progress(1, [0]) and coord.progress(1, [2, 1])
    assert not coord.progress(2, [0]) and not coord.progress(1, [2])  # another run; not sampled
    assert coord.drop(1, 0, "dropout (simulated)")[0] == 200
    assert not coord.progress(1, [0]) and coord.progress(1, [1])
    coord.close_round()
    assert not coord.progress(1, [1])
    assert len(calls) == 3
