"""The fedavg_tf payload end to end: real server.py + client.py subprocesses on digits."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PAYLOAD = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "fedctl", "payloads", "fedavg_tf"))
TOKEN = "e2e-token-0123456789abcdef"
ENV = {**os.environ, "FEDTF_INTRA_THREADS": "1", "FEDTF_UNREACHABLE_S": "120"}


class Run:
    def __init__(self, d, cfg: dict):
        self.d = d
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        tok = d / "token"
        tok.write_text(TOKEN)
        os.chmod(tok, 0o600)
        self.server = None
        self.clients: list[subprocess.Popen] = []
        self.n_servers = 0

    def _args(self):
        return ["--config", str(self.d / "config.yaml"), "--run-dir", str(self.d),
                "--token-file", str(self.d / "token")]

    def start_server(self, resume=False, timeout=120, port=0) -> int:
        self.n_servers += 1
        log = open(self.d / f"server-{self.n_servers}.log", "wb")
        old = _read_json(self.d / "server.ready")
        cmd = [sys.executable, os.path.join(PAYLOAD, "server.py"), *self._args(), "--host", "127.0.0.1",
               "--port", str(port)] + (["--resume"] if resume else [])
        self.server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd="/")

        def port() -> int | None:
            ready = _read_json(self.d / "server.ready")
            if ready and ready != old and ready["pid"] == self.server.pid:
                return ready["port"]
            assert self.server.poll() is None, self.log()
            return None

        return wait_until(port, timeout, interval=0.1, what="the server's ready file")

    def start_clients(self, port: int, groups: list[str]) -> None:
        for i, ids in enumerate(groups):
            log = open(self.d / f"client-{i}.log", "wb")
            cmd = [sys.executable, os.path.join(PAYLOAD, "client.py"), *self._args(),
                   "--server", f"127.0.0.1:{port}", "--client-ids", ids]
            self.clients.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd="/"))

    def wait(self, timeout=150) -> tuple[int, list[int]]:
        try:
            rc = self.server.wait(timeout)
            crc = [c.wait(30) for c in self.clients]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("run did not finish\n" + self.log()) from None
        return rc, crc

    def kill(self):
        for p in [self.server, *self.clients]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    def lines(self, kind="round"):
        path = self.d / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if json.loads(x)["type"] == kind]

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.d.glob("*.log")))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture
def run_factory(tmp_path):
    runs = []

    def make(cfg):
        r = Run(tmp_path, cfg)
        runs.append(r)
        return r
    yield make
    for r in runs:
        r.kill()


def _cfg(**over):
    cfg = {"clients": 3, "rounds": 2, "seed": 0, "name": "e2e", "payload": "fedavg_tf",
           "model": "mlp", "data": {"dataset": "digits", "partition": "iid"},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
           "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 60}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and k in cfg else v
    return cfg


def test_three_clients_two_rounds(run_factory):
    run = run_factory(_cfg())
    port = run.start_server()
    run.start_clients(port, ["0,1", "2"])
    rc, crc = run.wait()
    assert rc == 0 and crc == [0, 0], run.log()
    rounds = run.lines()
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["sampled"] == [0, 1, 2] and r["reported"] == [0, 1, 2] and r["dropped"] == []
        assert set(r["clients"]) == {"0", "1", "2"}
        assert sum(c["examples"] for c in r["clients"].values()) == 1438  # every shard, once
        for c in r["clients"].values():
            assert c["upload_bytes"] > 4 * 55_210 and c["train_s"] > 0 and c["response_s"] > 0
            assert c["simulated_delay_s"] == 0.0 and c["loss"] > 0
        assert r["bytes_in"] == sum(c["upload_bytes"] for c in r["clients"].values())
        assert r["bytes_out"] >= 2 * 4 * 55_210  # two processes downloaded the weights once each
        assert r["strategy"] == "fedavg" and r["end"] > r["start"]
    assert rounds[-1]["accuracy"] > 0.5 and rounds[-1]["loss"] < rounds[0]["loss"]
    summary = run.lines("summary")
    assert len(summary) == 1 and summary[0]["status"] == "finished" and summary[0]["rounds_completed"] == 2
    assert summary[0]["final_accuracy"] == rounds[-1]["accuracy"]
    assert _read_json(run.d / "summary.json")["status"] == "finished"
    assert _read_json(run.d / "status.json")["phase"] == "finished"
    assert (run.d / "final_model.weights.h5").stat().st_size > 4 * 55_210
    assert TOKEN not in run.log()


def test_straggler_past_timeout_is_dropped(run_factory):
    sys.path.insert(0, PAYLOAD)
    from fedtf.realism import Realism
    realism = {"slow_fraction": 0.34, "slow_factor": 20000.0, "latency_ms": 0.0, "bandwidth_mbps": 0.0,
               "dropout": 0.0}
    slow = sorted(Realism(realism, 3, 0).slow)
    assert len(slow) == 1
    run = run_factory(_cfg(realism={"slow_fraction": 0.34, "slow_factor": 20000.0},
                           sampling={"round_timeout_s": 4, "min_clients": 2}))
    port = run.start_server()
    run.start_clients(port, ["0,1,2"])
    rc, crc = run.wait()
    assert rc == 0 and crc == [0], run.log()
    rounds = run.lines()
    assert len(rounds) == 2
    for r in rounds:
        assert r["dropped"] == [{"id": slow[0], "reason": "timeout"}]
        assert r["reported"] == [k for k in (0, 1, 2) if k != slow[0]]
        assert 3.5 < r["end"] - r["start"] < 30
    assert run.lines("summary")[0]["status"] == "finished"


def test_server_killed_after_round_2_resumes_from_round_3(run_factory):
    run = run_factory(_cfg(rounds=4, realism={"latency_ms": 400.0}))
    port = run.start_server()
    run.start_clients(port, ["0,1", "2"])

    def round_2_done() -> bool:
        assert run.server.poll() is None, run.log()
        return any(r["round"] == 2 for r in run.lines())

    wait_until(round_2_done, 150, interval=0.02, what="round 2 in metrics.jsonl")
    run.server.send_signal(signal.SIGKILL)
    run.server.wait()
    # it really died between rounds 2 and 4: two rounds recorded and checkpointed, no summary
    assert [r["round"] for r in run.lines()] == [1, 2]
    assert _read_json(run.d / "checkpoint" / "checkpoint.json")["round"] == 2
    assert not run.lines("summary")
    run.start_server(resume=True)
    rc, crc = run.wait()
    assert rc == 0 and crc == [0, 0], run.log()
    assert [r["round"] for r in run.lines()] == [1, 2, 3, 4]
    second = (run.d / "server-2.log").read_text()
    assert "resumed from checkpoint after round 2" in second
    assert "round 3/4" in second and "round 2/4" not in second
    summary = run.lines("summary")
    assert len(summary) == 1 and summary[0]["status"] == "finished" and summary[0]["rounds_completed"] == 4


def test_min_clients_unmet_fails_clearly(run_factory, monkeypatch):
    monkeypatch.setitem(ENV, "FEDTF_CONNECT_WAIT_S", "3")
    run = run_factory(_cfg(sampling={"round_timeout_s": 2, "min_clients": 2, "retries": 1}, clients=2))
    # client 0 is loaded (TensorFlow imported, data split) and retrying BEFORE the server starts: its
    # start-up, seconds on a loaded machine, must not eat the server's 3 s connect window
    port = free_port()
    run.start_clients(port, ["0"])  # client 1 never shows up
    wait_until(lambda: "1 virtual clients" in (run.d / "client-0.log").read_text(errors="replace"), 120,
               interval=0.1, what="client 0 to be loaded")
    assert run.start_server(port=port) == port
    rc, crc = run.wait()
    assert rc == 3 and crc == [4], run.log()
    assert run.lines() == []
    summary = run.lines("summary")[0]
    assert summary["status"] == "failed" and "min_clients=2" in summary["reason"]
    assert _read_json(run.d / "status.json")["phase"] == "failed"
    assert not (run.d / "final_model.weights.h5").exists()
    assert len([e for e in run.lines("event") if "min_clients" in e["message"]]) == 2
