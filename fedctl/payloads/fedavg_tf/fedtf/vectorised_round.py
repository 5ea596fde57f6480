"""A client process's local training of one round (or one async wave): its virtual clients' shards
and the choice between one-at-a-time (fedtf/training.py) and one vectorised computation
(fedtf/vectorised.py); client.py does the networking and the bookkeeping around it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


class VirtualClient:
    """One federated client's own state inside a shared process: its shard, as its own tensors
    (sequential) or as rows of the process's pool (vectorised): [offset, offset + n), or `rows`
    when the pool is the whole training set."""

    def __init__(self, cid: int, x, y, n: int, slow: bool, offset: int = 0, rows=None) -> None:
        self.cid, self.x, self.y, self.n, self.slow, self.offset = cid, x, y, n, slow, offset
        self.rows = rows


@dataclass
class Work:
    """One sampled client of one task: what it trains from, and its rng (drawn for the drop-out
    before, for the permutations here, for the simulated delay after)."""
    k: int
    seq: int
    rnd: int
    task: tuple            # (instance, seq, round)
    start: np.ndarray      # flat global weights of the task
    rng: np.random.Generator
    download_bytes: int
    c: np.ndarray | None = None      # SCAFFOLD: the server's c
    base: np.ndarray | None = None   # SCAFFOLD: this client's committed c_i


@dataclass
class Trained:
    weights: np.ndarray
    loss: float
    train_s: float


#: a process whose shards hold at least this share of the training set pools all of it as it is
WHOLE_POOL_SHARE = 2 / 3


def load_clients(ds, shards: list, ids: list[int], realism, pooled: bool):
    """The VirtualClients of `ids` and, when `pooled`, the (x, y) pool tensors that hold their
    shards (one copy: the clients then hold no tensors of their own): back to back, or, when they
    cover most of the training set (one process holding every client), the training set as it is,
    each client naming its rows. That spares a gathered copy of the largest array while the
    process loads: the peak is the set and its tensor, not those and the gathered array too."""
    import tensorflow as tf  # noqa: PLC0415

    if not pooled:
        return {k: VirtualClient(k, tf.constant(ds.x_train[shards[k]]), tf.constant(ds.y_train[shards[k]]),
                                 len(shards[k]), realism.is_slow(k)) for k in ids}, None
    held = sum(len(shards[k]) for k in ids)
    if held >= WHOLE_POOL_SHARE * len(ds.y_train):
        pool = (tf.constant(ds.x_train), tf.constant(ds.y_train))
        return {k: VirtualClient(k, None, None, len(shards[k]), realism.is_slow(k),
                                 rows=np.asarray(shards[k], np.int32)) for k in ids}, pool
    offsets = np.concatenate([[0], np.cumsum([len(shards[k]) for k in ids])]).astype(np.int64)
    rows = np.concatenate([shards[k] for k in ids])
    pool = (tf.constant(ds.x_train[rows]), tf.constant(ds.y_train[rows]))
    return {k: VirtualClient(k, None, None, len(shards[k]), realism.is_slow(k), int(offsets[i]))
            for i, k in enumerate(ids)}, pool


def train_works(trainer, vec, pool, clients: dict, works: list[Work]) -> Iterator[Trained]:
    """Train `works`, yielding one result each, in order: all at the end of one computation when
    `vec` (a VectorTrainer) is given, else each as soon as it is trained on `trainer`'s model (so
    its upload goes while the next one trains)."""
    if vec is not None:
        from .vectorised import Job  # noqa: PLC0415
        jobs = [Job(clients[w.k].offset, clients[w.k].n, w.rng, w.start,
                    None if w.c is None else w.c - w.base, clients[w.k].rows) for w in works]
        for r in vec.train(pool[0], pool[1], jobs):
            yield Trained(r.weights, r.loss, r.train_s)
        return
    for w in works:
        vc = clients[w.k]
        trainer.layout.set(w.start)
        t0 = time.perf_counter()
        loss = trainer.train(vc.x, vc.y, vc.n, w.rng, w.start, None if w.c is None else w.c - w.base)
        new_w = trainer.layout.get()
        yield Trained(new_w, loss, time.perf_counter() - t0)
