"""The async server's bookkeeping in-process (no TensorFlow): tickets, versions, staleness, drops,
updates from before a restart, and one FedAsync / FedBuff step through it against numpy."""
from __future__ import annotations

import time

import numpy as np
import pytest
from fedtf import config
from fedtf.async_coord import LIVE_S, AsyncCoordinator
from fedtf.strategies import make_strategy
from fedtf.transport import decode, encode

TOKEN = b"t" * 24
SHAPES = [(3, 2), (2,)]
SIZE = 8


def _coord(clients: int = 6, concurrency: int = 3, max_staleness: int = 2,
           timeout_s: float = 60.0) -> AsyncCoordinator:
    c = AsyncCoordinator(TOKEN, SHAPES, [10] * clients, (), concurrency=concurrency,
                         max_staleness=max_staleness, ticket_timeout_s=timeout_s)
    c.seen = {k: time.time() for k in range(clients)}  # every client's process has polled
    return c


def _task(c: AsyncCoordinator, ids: list[int], after: int = 0):
    msg = decode(c.poll(after, ids, "p", c.instance))
    assert msg.meta["status"] == "train" and msg.meta["mode"] == "async"
    return msg


def _update(client: int, seq: int, version: int, w: np.ndarray, inst: str, examples: int = 10) -> bytes:
    parts = [w[:6].reshape(3, 2).astype(np.float32), w[6:].astype(np.float32)]
    return encode({"client": client, "examples": examples, "round": version, "seq": seq,
                   "instance": inst, "loss": 1.0, "train_s": 0.1}, {"w": parts})


def test_tickets_fill_the_slots_with_distinct_idle_clients_seeded():
    picks = []
    for _ in range(2):
        c = _coord()
        c.publish(0, np.zeros(SIZE, np.float32), {})
        picks.append([t.client for t in c.dispatch(np.random.default_rng(5))])
    assert picks[0] == picks[1] and len(set(picks[0])) == 3  # seeded, no client twice
    assert c.dispatch(np.random.default_rng(5)) == []           # all slots busy


def test_clients_whose_process_stopped_polling_get_no_work():
    c = _coord(clients=4, concurrency=3)
    c.seen[1] = c.seen[3] = time.time() - LIVE_S - 1  # their process died a while ago
    c.publish(0, np.zeros(SIZE, np.float32), {})
    assert sorted(t.client for t in c.dispatch(np.random.default_rng(0))) == [0, 2]
    assert c.take(time.time() + 0.3) == []  # waits: a free slot but no live idle client to fill it
    c.seen[3] = time.time()                 # a process for client 3 polls again
    assert [t.client for t in c.dispatch(np.random.default_rng(0))] == [3]


def test_fedasync_through_the_coordinator_equals_the_mixing_rule():
    """buffer 1, constant staleness: x_{v+1} = (1 - lr) x_v + lr y, with y trained on an older version."""
    st = config.resolve({"clients": 6, "strategy": {"name": "fedasync", "concurrency": 2, "server_lr": 0.4,
                                                    "staleness": "constant"}})["strategy"]
    strat = make_strategy(st, SIZE, 6)
    c = _coord(concurrency=2, max_staleness=st["max_staleness"])
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=SIZE).astype(np.float32)
    c.publish(0, x0, {})
    first, second = c.dispatch(np.random.default_rng(1))
    # the first update arrives and is applied: version 1
    y1 = (x0 + 1).astype(np.float32)
    assert c.deliver(first.seq, first.client, _update(first.client, first.seq, 0, y1, c.instance))[0] == 200
    (a,) = c.take(0)
    assert a.staleness == 0 and np.array_equal(a.update.base, x0)
    x1 = strat.aggregate(x0, [a.update])
    np.testing.assert_allclose(x1, 0.6 * x0 + 0.4 * y1, rtol=1e-6)
    c.publish(1, x1, {})
    # the second was trained on version 0 and arrives at version 1: staleness 1, weight 1 (constant)
    y2 = (x0 - 2).astype(np.float32)
    assert c.deliver(second.seq, second.client, _update(second.client, second.seq, 0, y2, c.instance))[0] == 200
    (b,) = c.take(0)
    assert b.staleness == 1 and np.array_equal(b.update.base, x0) and b.metrics["staleness"] == 1
    np.testing.assert_allclose(strat.aggregate(x1, [b.update]), 0.6 * x1 + 0.4 * y2, rtol=1e-6)


def test_a_task_is_that_versions_model_and_polls_hand_out_each_ticket_once():
    c = _coord(concurrency=2)
    x0 = np.arange(SIZE, dtype=np.float32)
    c.publish(0, x0, {"rounds": 5})
    t1, t2 = sorted(c.dispatch(np.random.default_rng(3)), key=lambda t: t.seq)
    msg = _task(c, [t1.client, t2.client])
    assert msg.meta["seq"] == t1.seq and msg.meta["sampled"] == [t1.client] and msg.meta["version"] == 0
    np.testing.assert_array_equal(msg.flat("w"), x0)
    assert _task(c, [t1.client, t2.client], after=t1.seq).meta["seq"] == t2.seq
    # a lost answer: polling again with the old `after` hands the same ticket out again
    assert _task(c, [t1.client, t2.client], after=0).meta["seq"] == t1.seq


def test_stale_updates_are_dropped_and_counted_and_duplicates_refused():
    c = _coord(concurrency=2, max_staleness=1)
    x = np.zeros(SIZE, np.float32)
    c.publish(0, x, {})
    old, fresh = c.dispatch(np.random.default_rng(0))
    c.publish(1, x + 1, {})
    c.publish(2, x + 2, {})  # `old` (version 0) is now 2 versions old > max_staleness 1
    code, why = c.deliver(old.seq, old.client, _update(old.client, old.seq, 0, x, c.instance))
    assert code == 409 and "stale" in why and c.counts["dropped_stale"] == 1
    assert old.client not in c.in_flight()  # its slot is free again
    code, why = c.deliver(old.seq, old.client, _update(old.client, old.seq, 0, x, c.instance))
    assert code == 409 and c.counts["dropped_stale"] == 1  # no ticket any more: not counted twice
    assert c.drop(fresh.seq, fresh.client, "dropout")[0] == 200 and c.counts["dropouts"] == 1
    # the next round line lists them under `dropped`, once
    assert c.take_dropped() == [(old.client, "stale: 2 versions old"), (fresh.client, "dropout")]
    assert c.take_dropped() == []


def test_a_ticket_past_its_timeout_frees_its_slot():
    c = _coord(concurrency=1, timeout_s=0.0)
    c.publish(0, np.zeros(SIZE, np.float32), {})
    (t,) = c.dispatch(np.random.default_rng(0))
    assert c.take(0) == [] and t.client not in c.in_flight() and c.counts["timeouts"] == 1
    assert c.take_dropped() == [(t.client, "timeout")]


def test_after_a_restart_old_updates_are_judged_by_their_version_and_taken_once():
    c = _coord(concurrency=1, max_staleness=3)
    x = np.zeros(SIZE, np.float32)
    c.publish(4, x, {})
    c.restored = 4  # a resumed server: versions before 4 are gone
    on_restored = _update(2, 7, 4, x + 0.5, "old-instance")
    on_older = _update(3, 6, 3, x + 0.5, "old-instance")
    assert c.deliver(7, 2, on_restored)[0] == 200
    assert c.deliver(7, 2, on_restored)[0] == 409  # a retried upload is not counted twice
    code, why = c.deliver(6, 3, on_older)
    assert code == 409 and "before the server restarted" in why
    (a,) = c.take(0)
    assert (a.update.client, a.version, a.staleness) == (2, 4, 0)
    assert c.counts["dropped_stale"] == 1


@pytest.mark.parametrize("bad_version", [None, "3", True])
def test_an_update_without_a_version_is_rejected(bad_version):
    c = _coord(concurrency=1)
    c.publish(0, np.zeros(SIZE, np.float32), {})
    (t,) = c.dispatch(np.random.default_rng(0))
    body = encode({"client": t.client, "examples": 10, "round": bad_version, "instance": c.instance},
                  {"w": [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]})
    assert c.deliver(t.seq, t.client, body)[0] == 400
