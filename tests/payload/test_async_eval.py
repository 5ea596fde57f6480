"""The server evaluates round r's model in the background while round r+1's clients train.

A real server.py process; this test is its two clients over the real protocol (so no client
TensorFlow start-up), and it holds every evaluation at a gate (FEDTF_EVAL_GATE, a FIFO: each
evaluation reads one byte from it before it runs). With round r's evaluation held, the server must
already hand out round r+1's task: before this change it evaluated inline, and the next task came
only after the evaluation. No sleeps: the test waits for tasks, files and lines.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import PAYLOAD_DIR
from fedtf.transport import Connection, decode, encode

from fedctl.contract.metrics import read_metrics
from tests.waiting import wait_until

TOKEN = "eval-test-token-0123456789abc"
CFG = {"clients": 2, "seed": 0, "model": "mlp",
       "data": {"dataset": "synthetic", "partition": "iid",
                "synthetic": {"train": 60, "test": 40, "features": 16, "classes": 4, "noise": 1.0}},
       "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 120}}


class Harness:
    """A server process, its gate, and the two clients it samples (played by this test)."""

    def __init__(self, d, **cfg) -> None:
        self.d = d
        (d / "config.yaml").write_text(yaml.safe_dump({**CFG, **cfg}))
        (d / "token").write_text(TOKEN)
        os.chmod(d / "token", 0o600)
        gate = d / "gate"
        os.mkfifo(gate)
        # read-write: never blocks on open, and keeps a writer so the server's open does not block
        self.gate = os.open(gate, os.O_RDWR)
        self.env = {**os.environ, "FEDTF_INTRA_THREADS": "1", "FEDTF_EVAL_GATE": str(gate)}
        self.server: subprocess.Popen | None = None
        self.n = 0
        self.after, self.inst = 0, ""

    def start(self, resume: bool = False) -> None:
        self.n += 1
        old = _read_json(self.d / "server.ready")
        cmd = [sys.executable, os.path.join(PAYLOAD_DIR, "server.py"), "--config", str(self.d / "config.yaml"),
               "--run-dir", str(self.d), "--token-file", str(self.d / "token"), "--host", "127.0.0.1",
               "--port", "0"] + (["--resume"] if resume else [])
        with open(self.d / f"server-{self.n}.log", "wb") as out:
            self.server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd="/")

        def ready():
            assert self.server.poll() is None, self.log()
            got = _read_json(self.d / "server.ready")
            return got if got and got != old and got["pid"] == self.server.pid else None

        port = wait_until(ready, 180, interval=0.05, what="the server's ready file")["port"]
        self.conn = Connection("127.0.0.1", port, TOKEN.encode(), timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            return self.conn.request(method, path, body)
        except OSError as e:
            raise AssertionError(f"{method} {path[:40]}: {e!r}\n{self.log()}") from e

    def task(self) -> dict:
        """The next task for clients 0 and 1 (long polls until there is one)."""
        while True:
            code, body = self.request("GET", f"/task?after={self.after}&inst={self.inst}&ids=0,1&proc=t")
            assert code == 200, body[:200]
            msg = decode(body)
            if msg.meta["status"] == "wait":
                assert self.server.poll() is None, self.log()
                continue
            if msg.meta["status"] == "train":
                self.after, self.inst = int(msg.meta["seq"]), str(msg.meta["instance"])
            return {"meta": msg.meta, "w": [np.array(w) for w in msg.group("w")]}

    def answer(self, task: dict) -> None:
        """Both clients send the global weights moved a little (a real, finite update)."""
        rnd = int(task["meta"]["round"])
        for k in (0, 1):
            ws = [w + np.float32(0.01 * (k + 1) * rnd) for w in task["w"]]
            up = encode({"client": k, "round": rnd, "seq": self.after, "examples": 5, "loss": 1.0,
                         "train_s": 0.01}, {"w": ws})
            code, body = self.request("POST", f"/update?seq={self.after}&id={k}", up)
            assert code == 200, body[:200]

    def release(self) -> None:
        """Let one evaluation run."""
        os.write(self.gate, b"x")

    def rounds(self) -> dict[int, dict]:
        path = self.d / "metrics.jsonl"
        if not path.exists():
            return {}
        return {x["round"]: x for x in map(json.loads, path.read_text().splitlines()) if x["type"] == "round"}

    def line(self, r: int) -> dict:
        return wait_until(lambda: self.rounds().get(r), 60, interval=0.02, what=f"round {r}'s line")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.d.glob("server-*.log")))

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        os.close(self.gate)


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(**cfg) -> Harness:
        made.append(Harness(tmp_path, **cfg))
        return made[-1]
    yield make
    for h in made:
        h.close()


def test_next_round_trains_while_the_last_is_evaluated_and_lines_say_which_model(harness):
    h = harness(rounds=4, evaluate_every=2, test_subset=10)
    h.start()
    t1 = h.task()
    assert t1["meta"]["round"] == 1
    h.answer(t1)
    # round 1 is not due for evaluation: its line comes at once, without an accuracy
    t2 = h.task()
    assert t2["meta"]["round"] == 2
    line1 = h.line(1)
    assert line1["eval_round"] is None and line1["accuracy"] is None
    h.answer(t2)
    # round 2's evaluation is held at the gate, and round 3's task arrives all the same
    t3 = h.task()
    assert t3["meta"]["round"] == 3
    assert 2 not in h.rounds()  # its line waits for the evaluation ...
    ckpt = _read_json(h.d / "checkpoint" / "checkpoint.json")
    assert ckpt["round"] == 2 and ckpt["info"]["eval_pending"] == 2  # ... which the checkpoint knows
    h.release()
    line2 = h.line(2)
    assert line2["eval_round"] == 2 and 0.0 <= line2["accuracy"] <= 1.0 and math.isfinite(line2["loss"])
    assert line2["eval_s"] >= 0
    h.answer(t3)
    t4 = h.task()
    assert t4["meta"]["round"] == 4 and h.rounds()[3]["eval_round"] is None
    h.answer(t4)
    # the last round is evaluated before the server says finished (held at the gate meanwhile)
    assert 4 not in h.rounds() and h.server.poll() is None
    h.release()
    assert h.task()["meta"]["status"] == "finished"
    assert h.server.wait(60) == 0, h.log()
    lines = [json.loads(x) for x in (h.d / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines if x["type"] == "round"] == [1, 2, 3, 4]
    assert lines[-1]["type"] == "summary" and lines[-1]["final_accuracy"] == lines[-2]["accuracy"]
    assert lines[-2]["eval_round"] == 4
    assert _read_json(h.d / "summary.json")["eval_examples"] == 10
    # fedctl's reader (results, watch, status) sees the accuracies and which model they belong to
    log = read_metrics(str(h.d / "metrics.jsonl"))
    assert log.series("accuracy") == ([2, 4], [line2["accuracy"], lines[-2]["accuracy"]])
    assert [r.eval_round for r in log.ordered] == [None, 2, None, 4]
    assert "eval_round" not in log.metric_names() and "eval_s" in log.metric_names()
    assert log.ordered[1].to_dict()["eval_round"] == 2


def test_server_killed_during_a_background_evaluation_evaluates_that_model_on_resume(harness):
    h = harness(rounds=2)
    h.start()
    t1 = h.task()
    h.answer(t1)
    assert h.task()["meta"]["round"] == 2  # round 1's evaluation is held at the gate
    h.server.send_signal(signal.SIGKILL)
    h.server.wait()
    assert 1 not in h.rounds()
    assert _read_json(h.d / "checkpoint" / "checkpoint.json")["info"]["eval_pending"] == 1
    h.release()  # the resumed server evaluates round 1's model from the checkpoint, before it serves
    h.start(resume=True)
    line1 = h.line(1)
    assert line1["eval_round"] == 1 and 0.0 <= line1["accuracy"] <= 1.0
    t2 = h.task()
    assert t2["meta"]["round"] == 2
    h.answer(t2)
    h.release()
    assert h.task()["meta"]["status"] == "finished"
    assert h.server.wait(60) == 0, h.log()
    rounds = h.rounds()
    assert sorted(rounds) == [1, 2] and rounds[2]["eval_round"] == 2
    second = (h.d / "server-2.log").read_text()
    assert "resumed from checkpoint after round 1" in second and "round 1/2 evaluated" in second
    summary = _read_json(h.d / "summary.json")
    assert summary["best_accuracy"] == max(rounds[1]["accuracy"], rounds[2]["accuracy"])


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
