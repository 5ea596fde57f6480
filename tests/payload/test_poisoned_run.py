"""A run with a token-holding client that poisons updates: real server.py + client.py processes.

Client 3 is this test itself: it answers every round with the global weights unchanged (an idle
client, one example), except in six rounds where it sends every weight at 1e30 with 500 examples
(finite, and the example count is within its shard, so only the norm bound can stop it). A twin
run where client 3 never poisons is the baseline. Before the norm bound, the first poisoned round
made the model NaN, metrics.jsonl got a bare NaN and the run failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from conftest import PAYLOAD_DIR
from fedtf.transport import Connection, decode, encode

from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

TOKEN = "poison-test-token-0123456789"
ROUNDS = 40
POISONED = {3, 9, 15, 21, 27, 33}
EVIL = 3
ENV = {**os.environ, "FEDTF_INTRA_THREADS": "1", "FEDTF_UNREACHABLE_S": "60"}
CFG = {"clients": 4, "rounds": ROUNDS, "seed": 0, "model": "mlp",
       "data": {"dataset": "synthetic", "partition": "iid",
                "synthetic": {"train": 4000, "test": 1000, "features": 64, "classes": 10, "noise": 2.0}},
       "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
       "sampling": {"fraction": 1.0, "min_clients": 3, "round_timeout_s": 30}}


class Attacker(threading.Thread):
    """Client EVIL over the real protocol: poisons the rounds in `poisoned`, idles in the rest."""

    def __init__(self, port: int, poisoned: set[int]) -> None:
        super().__init__(daemon=True)
        self.conn = Connection("127.0.0.1", port, TOKEN.encode(), timeout=30)
        self.poisoned = poisoned
        self.replies: dict[int, int] = {}
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - a thread's failure is asserted on by the test
            self.error = e

    def _loop(self) -> None:
        after, inst = 0, ""
        end = time.time() + 170
        while time.time() < end:
            code, body = self.conn.request("GET", f"/task?after={after}&inst={inst}&ids={EVIL}&proc=evil")
            assert code == 200, body[:200]
            msg = decode(body)
            status = msg.meta["status"]
            if status in ("finished", "failed"):
                return
            if status != "train":
                continue
            after, inst, rnd = int(msg.meta["seq"]), str(msg.meta["instance"]), int(msg.meta["round"])
            if rnd in self.poisoned:
                ws, examples = [np.full(w.shape, 1e30, np.float32) for w in msg.group("w")], 500
            else:
                ws, examples = [np.array(w) for w in msg.group("w")], 1
            up = encode({"client": EVIL, "round": rnd, "seq": after, "examples": examples, "loss": 1.0,
                         "train_s": 0.0}, {"w": ws})
            self.replies[rnd] = self.conn.request("POST", f"/update?seq={after}&id={EVIL}", up)[0]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _strict_lines(path) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"metrics.jsonl holds the non-JSON constant {name}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


class Run:
    def __init__(self, d, poisoned: set[int]) -> None:
        self.d, self.poisoned = d, poisoned
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(CFG))
        (d / "token").write_text(TOKEN)
        os.chmod(d / "token", 0o600)
        self.args = ["--config", str(d / "config.yaml"), "--run-dir", str(d), "--token-file", str(d / "token")]
        self.procs: list[subprocess.Popen] = []
        self.server = self._spawn("server.py", ["--host", "127.0.0.1", "--port", "0"], "server.log")
        self.attacker: Attacker | None = None

    def _spawn(self, script: str, extra: list[str], log: str) -> subprocess.Popen:
        with open(self.d / log, "wb") as out:
            p = subprocess.Popen([sys.executable, os.path.join(PAYLOAD_DIR, script), *self.args, *extra],
                                 stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd="/")
        self.procs.append(p)
        return p

    def start_clients(self, timeout: float = 90) -> None:
        def ready_file() -> dict | None:
            assert self.server.poll() is None, self.log()
            return _read_json(self.d / "server.ready")

        ready = wait_until(ready_file, timeout, interval=0.1, what="the server's ready file")
        self._spawn("client.py", ["--server", f"127.0.0.1:{ready['port']}", "--client-ids", "0,1,2"], "client.log")

        def serving() -> bool:
            """The ready file comes before the server's set-up (its clients start up meanwhile,
            and retry); this attacker does not retry, so it starts once the server answers."""
            assert self.server.poll() is None, self.log()
            try:
                return Connection("127.0.0.1", ready["port"], TOKEN.encode(), timeout=5).request("GET", "/health")[0] == 200
            except OSError:
                return False

        wait_until(serving, timeout, interval=0.1, what="the server serving")
        self.attacker = Attacker(ready["port"], self.poisoned)
        self.attacker.start()

    def wait(self, timeout: float) -> list[int]:
        try:
            return [p.wait(timeout) for p in self.procs]
        except subprocess.TimeoutExpired:
            raise AssertionError("run did not finish\n" + self.log()) from None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.d.glob("*.log")))


def test_poisoned_updates_are_rejected_and_the_run_matches_the_baseline(tmp_path):
    poisoned, baseline = Run(tmp_path / "poisoned", POISONED), Run(tmp_path / "baseline", set())
    try:
        for run in (poisoned, baseline):  # both servers import TensorFlow at the same time
            run.start_clients()
        for run in (poisoned, baseline):
            assert run.wait(150) == [0, 0], run.log()
            run.attacker.join(10)
            assert run.attacker.error is None, repr(run.attacker.error)
    finally:
        poisoned.kill()
        baseline.kill()

    lines = _strict_lines(poisoned.d / "metrics.jsonl")  # no NaN / Infinity anywhere
    rounds = [x for x in lines if x["type"] == "round"]
    assert [x["round"] for x in rounds] == list(range(1, ROUNDS + 1))
    for x in rounds:
        assert x["loss"] is not None and np.isfinite(x["loss"])
        if x["round"] in POISONED:
            assert x["rejected"] == 1 and x["reported"] == [0, 1, 2], x
            (drop,) = x["dropped"]
            assert drop["id"] == EVIL and drop["reason"].startswith("rejected: update delta norm")
        else:
            assert x["rejected"] == 0 and x["reported"] == [0, 1, 2, 3] and x["dropped"] == [], x
    assert {r: c for r, c in poisoned.attacker.replies.items() if c != 200} == {r: 400 for r in POISONED}
    server_log = (poisoned.d / "server.log").read_text()
    assert server_log.count(f"rejected update from client {EVIL}: update delta norm") == len(POISONED)
    assert "Traceback" not in server_log

    summary = [x for x in lines if x["type"] == "summary"][-1]
    base = [x for x in _strict_lines(baseline.d / "metrics.jsonl") if x["type"] == "summary"][-1]
    assert summary["status"] == base["status"] == "finished"
    assert base["final_accuracy"] > 0.5
    # the attacker's idle rounds carry 1 example of 3001: poisoned and baseline runs train alike
    assert abs(summary["final_accuracy"] - base["final_accuracy"]) <= 0.02, (summary, base)
