"""SCAFFOLD's state stays consistent: the server's c equals the mean over all clients of their c_i.

Real server (server.py's Server: its HTTP coordinator, round loop, aggregation and checkpoint) and
real clients (client.py's Client: TF training, uploads, commits), in this process on loopback. The
test drives each client process one poll at a time, so between rounds nothing moves and the
invariant can be checked on what a restart would read: the server's checkpoint and the clients'
saved c_i files. Faults are injected at the clients' network boundary (their HTTP connection):

- round 1: every update is accepted;
- then client process B (ids 2, 3) is restarted: a new Client object reads its state from disk;
- round 2: client 1's update is corrupted on the wire, the server rejects it (400);
- round 3: client 2's update is held until the round has closed, the server answers 409 (late);
- rounds 4 and 5: the updates of clients 0, 1 and 2 are corrupted, so client 3's accepted update is
  the only one and the server runs the round again (retries: 1), without it. In round 4 the 200 for
  client 3 reaches the client after the task of the second run; in round 5 before it;
- round 6: client 0's update is blown up 50 times: finite and under max_update_norm, so the server
  answers 200, and then leaves it out when the round closes (above max_norm_ratio times the median).
  The client learns it from round 7's task (``counted``);
- round 8 (the last): the 200 for client 1's update is lost on the way; the client retries, is
  answered 409, and learns from the server's final answer that the update was counted.

Before the fix the client changed c_i before the server took the update and never saved it, so
rounds 2 to 5 and the restart each broke c = mean(c_i); before ``counted``, rounds 6 and 8 did.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from conftest import PAYLOAD_DIR
from fedtf import checkpoint, config
from fedtf.scaffold_state import state_path
from fedtf.transport import decode, encode

from tests.waiting import wait_until

TOKEN = b"scaffold-state-test-token-0123456789"
CLIENTS, ROUNDS, ROUND_TIMEOUT_S = 4, 8, 12.0
CFG = {"clients": CLIENTS, "rounds": ROUNDS, "seed": 0, "model": "logreg",
       "strategy": {"name": "scaffold"},
       "data": {"dataset": "synthetic", "partition": "iid",
                "synthetic": {"train": 400, "test": 100, "features": 16, "classes": 4, "noise": 1.0}},
       "train": {"epochs": 1, "batch_size": 32, "lr": 0.1},
       "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": ROUND_TIMEOUT_S, "retries": 1}}
CORRUPT, LATE = (1, 2), (2, 3)  # (client id, round)
RERUN = (4, 5)  # rounds whose first run takes only client 3's update, which is then thrown away
OUTSIZED, LOST = (0, 6), (1, 8)  # answered 200 then left out at the close; taken but its 200 lost
BLOW_UP = 50.0  # x the update's change: far above max_norm_ratio (10) x the median, far below max_norm


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"fedavg_tf_{name}", os.path.join(PAYLOAD_DIR, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FaultyConnection:
    """A client's real Connection, with the test's faults applied to the uploads that pass."""

    def __init__(self, real, faults: "Faults", client) -> None:
        self.real, self.faults, self.client = real, faults, client

    def request(self, method, path, body=None, timeout=None, headers=None):
        upload = method == "POST" and path.startswith("/update")
        if upload:
            body = self.faults.apply(body)
        code, reply = self.real.request(method, path, body, timeout=timeout, headers=headers)
        if upload:
            meta = decode(body).meta
            self.faults.replies.setdefault((meta["client"], meta["round"]), []).append(code)
            if (meta["client"], meta["round"]) == LOST and len(self.faults.replies[LOST]) == 1:
                raise ConnectionResetError("the server's answer was lost (test)")
            if (meta["client"], meta["round"]) == (3, RERUN[0]) and self.faults.replies[(3, RERUN[0])] == [200]:
                # the answer reaches the client only after it has seen the round's second run
                wait_until(lambda: self.client.variates.seen[-1][1] > meta["seq"], timeout=60,
                           what="the client to see the second run of round 4")
        elif method == "GET" and path.startswith("/task") and code == 200:
            meta = decode(reply).meta
            if meta.get("status") == "train":
                with self.faults.lock:
                    self.faults.tasks.setdefault(id(self.client), []).append(meta["round"])
            if (meta.get("round"), meta.get("attempt")) == (RERUN[1], 1):
                # the second run of round 5 reaches the client after it committed the first run's update
                wait_until(lambda: self.client.uploading() == 0, timeout=60, what="the first run's answers")
        return code, reply


class Faults:
    def __init__(self, coord) -> None:
        self.coord = coord
        self.sent: list[tuple[int, int]] = []   # (client, round) of each upload
        self.tasks: dict[int, list[int]] = {}   # client process (id of its Client) -> rounds of its tasks
        self.replies: dict[tuple[int, int], list[int]] = {}
        self.lock = threading.Lock()

    def wrap(self, client) -> None:
        real = client._conn  # the client's own per-thread connection factory
        client._conn = lambda: FaultyConnection(real(), self, client)

    def apply(self, body: bytes) -> bytes:
        msg = decode(body)
        k, rnd, seq = msg.meta["client"], msg.meta["round"], msg.meta["seq"]
        with self.lock:
            first = (k, rnd) not in self.sent
            self.sent.append((k, rnd))
        if (k, rnd) == CORRUPT or (rnd in RERUN and k != 3 and first):
            # one NaN weight: the server's checks refuse the whole update
            groups = {g: [np.array(t) for t in msg.group(g)] for g in ("w", "dc")}
            groups["w"][0].flat[0] = np.nan
            return encode(msg.meta, groups)
        if (k, rnd) == OUTSIZED:
            ref = self.coord.state.global_w  # the model this round's updates are measured against
            w = ref + np.float32(BLOW_UP) * (msg.flat("w") - ref)
            sizes = np.cumsum([t.size for t in msg.group("w")])[:-1]
            groups = {"w": [a.reshape(t.shape) for a, t in zip(np.split(w, sizes), msg.group("w"))],
                      "dc": list(msg.group("dc"))}
            return encode(msg.meta, groups)
        if (k, rnd) == LATE:  # a straggler: arrives after the server closed its round
            wait_until(lambda: self.coord.state.seq != seq or not self.coord.state.open,
                       timeout=ROUND_TIMEOUT_S + 30, what=f"round {rnd} to close")
        return body

    def runs(self, client, rnd: int) -> int:
        """How many runs of round `rnd` the client process has received."""
        with self.lock:
            return self.tasks.get(id(client), []).count(rnd)


class Harness:
    def __init__(self, tmp_path, monkeypatch) -> None:
        monkeypatch.setenv("FEDTF_UNREACHABLE_S", "60")
        monkeypatch.setenv("FEDTF_CONNECT_WAIT_S", "120")
        self.run_dir = str(tmp_path)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(CFG))
        (tmp_path / "token").write_bytes(TOKEN)
        os.chmod(tmp_path / "token", 0o600)
        self.common = ["--config", str(tmp_path / "config.yaml"), "--run-dir", self.run_dir,
                       "--token-file", str(tmp_path / "token")]
        self.cfg = config.load(tmp_path / "config.yaml")
        self.server_mod, self.client_mod = _load("server"), _load("client")
        args = self.server_mod.parse_args([*self.common, "--host", "127.0.0.1", "--port", "0"])
        self.server = self.server_mod.Server(args, self.cfg, TOKEN)
        self.server.serve()
        self.faults = Faults(self.server.coord)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.server.run()), daemon=True)
        self.thread.start()

    def client(self, ids: list[int]):
        port = self.server.httpd.server_address[1]
        args = self.client_mod.parse_args([*self.common, "--server", f"127.0.0.1:{port}",
                                           "--client-ids", ",".join(map(str, ids))])
        cl = self.client_mod.Client(args, self.cfg, TOKEN, ids)
        self.faults.wrap(cl)
        return cl

    def play_round(self, r: int, procs: list, runs: int = 1) -> None:
        """Each client process polls until it has trained the `runs` runs of round r; then wait until
        the server has checkpointed round r and every upload has its answer (and nothing moves until
        the next call)."""
        def until_trained(cl):
            while self.faults.runs(cl, r) < runs:
                assert cl.step() is None, f"{cl.role} stopped before round {r}"
        with ThreadPoolExecutor(len(procs)) as ex:
            list(ex.map(until_trained, procs))
        wait_until(lambda: (checkpoint.load(self.server.ckpt_dir) or (0,))[0] == r,
                   timeout=ROUND_TIMEOUT_S + 60, what=f"the server's checkpoint of round {r}")
        wait_until(lambda: all(cl.uploading() == 0 for cl in procs), timeout=60,
                   what=f"the answers to round {r}'s uploads")

    def saved_c_i(self, k: int) -> np.ndarray:
        got = checkpoint.load_arrays(state_path(self.run_dir, k))
        c = None if got is None else got.get("c")
        return np.zeros(self.server.layout.size, np.float32) if c is None else c

    def check(self, procs: list, when: str) -> np.ndarray:
        """c == mean(c_i) over all clients, on disk; every live client's c_i equals its saved one."""
        _, _, state, _ = checkpoint.load(self.server.ckpt_dir)
        saved = {k: self.saved_c_i(k) for k in range(CLIENTS)}
        for cl in procs:
            for k in cl.ids:
                live = cl.variates.base(k)
                np.testing.assert_array_equal(live, saved[k], err_msg=f"{when}: client {k} in memory vs on disk")
        mean = np.mean(np.stack(list(saved.values())), axis=0)
        np.testing.assert_allclose(state["c"], mean, rtol=1e-4, atol=1e-6, err_msg=f"{when}: c != mean(c_i)")
        assert np.abs(state["c"]).max() > 1e-3, f"{when}: c is still zero; the check proves nothing"
        return saved

    def rounds(self) -> dict[int, dict]:
        with open(os.path.join(self.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            lines = [json.loads(x) for x in f if x.strip()]
        return {x["round"]: x for x in lines if x["type"] == "round"}

    def close(self, procs: list) -> None:
        if self.thread.is_alive():
            self.server.coord.finish("failed")
        for cl in procs:
            cl.stop.set()
            cl.uploads.shutdown(wait=False, cancel_futures=True)


def test_c_is_the_mean_of_committed_c_i_through_rejections_late_updates_reruns_and_a_restart(
        tmp_path, monkeypatch, capfd):
    h = Harness(tmp_path, monkeypatch)
    a, b = h.client([0, 1]), h.client([2, 3])
    procs = [a, b]
    try:
        h.play_round(1, procs)
        saved = h.check(procs, "after round 1")
        assert all(np.abs(saved[k]).max() > 0 for k in range(CLIENTS))

        # client process B restarts: its replacement reads c_2 and c_3 from disk
        b.stop.set()
        b.uploads.shutdown(wait=True)
        b = h.client([2, 3])
        procs = [a, b]
        for k in (2, 3):
            np.testing.assert_array_equal(b.variates.base(k), saved[k])
        h.check(procs, "after restarting client process B")

        h.play_round(2, procs)
        assert h.faults.replies[CORRUPT] == [400]
        new = h.check(procs, "after round 2 (client 1's update rejected)")
        np.testing.assert_array_equal(new[1], saved[1])  # the rejected client's c_i did not move
        assert not np.array_equal(new[0], saved[0])

        h.play_round(3, procs)
        assert h.faults.replies[LATE] == [409]
        newer = h.check(procs, "after round 3 (client 2's update late)")
        np.testing.assert_array_equal(newer[2], new[2])
        assert not np.array_equal(newer[3], new[3])

        for r in RERUN:
            h.play_round(r, procs, runs=2)
            assert h.faults.replies[(3, r)] == [200, 200]
            assert [h.faults.replies[(k, r)] for k in (0, 1, 2)] == [[400, 200]] * 3
            before = h.check(procs, f"after round {r} (run twice)")

        h.play_round(6, procs)
        assert h.faults.replies[OUTSIZED] == [200]
        assert not np.array_equal(h.saved_c_i(0), before[0])  # taken: committed for now
        h.play_round(7, procs)  # round 7's task says client 0's round 6 update was left out
        h.check(procs, "after round 7 (client 0's round 6 update answered 200, then left out)")

        def to_the_end(cl):  # round 8, the last; then the server's final answer
            while (rc := cl.step()) is None:
                pass
            return rc
        with ThreadPoolExecutor(2) as ex:
            assert list(ex.map(to_the_end, procs)) == [0, 0]  # "finished"
        assert h.faults.replies[LOST] == [200, 409]
        h.thread.join(60)
        assert h.result == [0]
        h.check(procs, "after the run (client 1's round 8 update taken, its 200 lost, then 409)")
    finally:
        h.close(procs)
    rounds = h.rounds()
    assert rounds[2]["reported"] == [0, 2, 3] and rounds[2]["rejected"] == 1
    assert rounds[3]["reported"] == [0, 1, 3] and rounds[3]["dropped"] == [{"id": 2, "reason": "timeout"}]
    assert [rounds[r]["reported"] for r in (1, 4, 5, 7, 8)] == [[0, 1, 2, 3]] * 5
    assert rounds[6]["reported"] == [1, 2, 3] and rounds[6]["rejected"] == 1
    err = capfd.readouterr().err
    assert "client 0: the server left its round 6 update out when the round closed" in err
    assert "client 1: the server counted its round 8 update though it did not answer 200" in err
    assert "client 3: round 4 is being run again; its update is not counted" in err  # answer after the rerun
    assert "client 3: the server runs round 5 again: c_i is back to before that round" in err  # answer before


def test_a_saved_c_i_of_another_model_is_refused(tmp_path):
    from fedtf.scaffold_state import ControlVariates

    logged = []
    cv = ControlVariates(str(tmp_path), [0], 5, lambda *a: logged.append(a))
    assert cv.commit(0, np.arange(5, dtype=np.float32), ("i", 1, 1))
    assert sorted(os.listdir(tmp_path / "client-state")) == ["scaffold-0.npz"]  # no temp file left
    again = ControlVariates(str(tmp_path), [0], 5, logged.append)
    np.testing.assert_array_equal(again.base(0), np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match=r"this model needs float32 \(7,\)"):
        ControlVariates(str(tmp_path), [0], 7, logged.append)
    (tmp_path / "client-state" / "scaffold-0.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a saved state file"):
        ControlVariates(str(tmp_path), [0], 5, logged.append)


def test_control_variate_rules_for_reruns_and_late_answers(tmp_path):
    from fedtf.scaffold_state import ControlVariates

    logged = []
    cv = ControlVariates(str(tmp_path), [0], 2, lambda msg, level="info": logged.append((level, msg)))
    one, ten = np.ones(2, np.float32), np.full(2, 10, np.float32)
    cv.task_seen("i", 1, 1)
    assert cv.commit(0, one, ("i", 1, 1))
    cv.task_seen("i", 2, 2)
    assert cv.commit(0, ten, ("i", 2, 2))
    np.testing.assert_array_equal(cv.base(0), [11, 11])
    cv.task_seen("j", 1, 2)  # a restarted server runs round 2 again: its commit is undone
    np.testing.assert_array_equal(cv.base(0), [1, 1])
    np.testing.assert_array_equal(ControlVariates(str(tmp_path), [0], 2, print).base(0), [1, 1])  # saved
    cv.task_seen("j", 2, 3)
    assert not cv.commit(0, ten, ("i", 2, 2))  # the old server's answer, read after the rerun: not counted
    np.testing.assert_array_equal(cv.base(0), [1, 1])
    assert cv.commit(0, one, ("j", 1, 2))  # the rerun's answer, read after round 3's task: counted
    np.testing.assert_array_equal(cv.base(0), [2, 2])
    cv.task_seen("k", 1, 1)  # round 1 again: the server's c is 0
    np.testing.assert_array_equal(cv.base(0), [0, 0])
    for r in (1, 2, 3):
        cv.task_seen("k", r + 1, r)
        assert cv.commit(0, one, ("k", r + 1, r))
    cv.task_seen("k", 9, 2)  # two rounds back: cannot be undone, and says so
    assert logged[-1][0] == "error" and "cannot be undone" in logged[-1][1]


@pytest.mark.parametrize("optimizer", ["adam"])
def test_scaffold_with_a_non_sgd_optimizer_is_refused(optimizer):
    with pytest.raises(config.ConfigProblem) as e:
        config.validate({"strategy": {"name": "scaffold"}, "train": {"optimizer": optimizer}})
    assert e.value.key_path == "train.optimizer"
    assert e.value.valid.startswith("sgd")
    assert "scaffold" in str(e.value) and repr(optimizer) in str(e.value)
    # the same optimizer stays valid for the other strategies
    assert config.validate({"strategy": {"name": "fedavg"}, "train": {"optimizer": optimizer}})["train"][
        "optimizer"] == optimizer


def test_the_servers_count_settles_c_i_whatever_order_the_answers_come_in(tmp_path):
    """``counted`` ({"through": R, "last": {id: r}}) against 200s, 409s and lost answers, before and
    after it arrives; what is settled is saved."""
    from fedtf.scaffold_state import ControlVariates

    logged = []
    cv = ControlVariates(str(tmp_path), [0, 1], 2, lambda msg, level="info": logged.append((level, msg)))
    one, ten = np.ones(2, np.float32), np.full(2, 10, np.float32)
    cv.task_seen("i", 1, 1)
    assert cv.commit(0, one, ("i", 1, 1)) and cv.commit(1, one, ("i", 1, 1))
    cv.task_seen("i", 2, 2)
    cv.settle({"through": 1, "last": {"0": 1, "1": 1}})  # both counted: nothing moves
    assert cv.commit(0, ten, ("i", 2, 2))  # a 200 ...
    cv.uncertain(1, ten, ("i", 2, 2))  # ... and a 409 after a lost 200
    np.testing.assert_array_equal(cv.base(0), [11, 11])
    np.testing.assert_array_equal(cv.base(1), [1, 1])
    cv.task_seen("i", 3, 3)
    cv.settle({"through": 2, "last": {"0": 1, "1": 2}})  # 0 left out at the close, 1 counted
    np.testing.assert_array_equal(cv.base(0), [1, 1])
    np.testing.assert_array_equal(cv.base(1), [11, 11])
    again = ControlVariates(str(tmp_path), [0, 1], 2, print)  # a restarted process reads the same
    np.testing.assert_array_equal(again.base(0), [1, 1])
    np.testing.assert_array_equal(again.base(1), [11, 11])

    # answers that come after the server's word on their round are judged by it at once
    cv.task_seen("i", 4, 4)
    cv.settle({"through": 3, "last": {"0": 3, "1": 2}})
    cv.uncertain(0, one, ("i", 3, 3))  # counted: committed
    assert not cv.commit(1, one, ("i", 3, 3))  # left out: a 200 read late commits nothing
    np.testing.assert_array_equal(cv.base(0), [2, 2])
    np.testing.assert_array_equal(cv.base(1), [11, 11])
    # an uncertain update of a round the server runs again was never counted
    cv.uncertain(0, ten, ("i", 4, 4))
    cv.task_seen("i", 5, 4)
    cv.settle({"through": 4, "last": {"0": 4, "1": 2}})  # round 4's second run: 0 counted there
    np.testing.assert_array_equal(cv.base(0), [2, 2])  # not the first run's update
    # a server that does not say (fedavg, an old checkpoint) changes nothing
    cv.settle(None)
    cv.settle({"through": "4", "last": {}})
    cv.settle({"through": 9, "last": {"²": 9}})
    np.testing.assert_array_equal(cv.base(0), [2, 2])
    assert [m for lvl, m in logged if "left its round 2 update out" in m]
    assert [m for lvl, m in logged if "counted its round 2 update though it did not answer 200" in m]
