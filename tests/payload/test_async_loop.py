"""The async server loop without TensorFlow: a fake server around a real AsyncCoordinator."""
from __future__ import annotations

import time

import numpy as np
from fedtf import config
from fedtf.async_coord import AsyncCoordinator
from fedtf.async_loop import run_async

SIZE = 8


class FakeServer:
    """What run_async uses of server.Server; clients never answer."""

    def __init__(self, round_timeout_s: float) -> None:
        self.cfg = config.resolve({"clients": 4, "rounds": 3, "seed": 0,
                                   "strategy": {"name": "fedbuff", "concurrency": 2, "buffer_size": 2},
                                   "sampling": {"round_timeout_s": round_timeout_s, "retries": 0}})
        self.coord = AsyncCoordinator(b"t" * 24, [(SIZE,)], [10] * 4, (), concurrency=2,
                                      max_staleness=4, ticket_timeout_s=3600.0)
        self.coord.seen = {k: time.time() for k in range(4)}  # every client's process has polled
        self.rng = np.random.default_rng(0)
        self.weights = np.zeros(SIZE, np.float32)
        self.start_round = 1
        self.statuses: list[dict] = []
        self.ended: tuple | None = None

    def wait_clients(self) -> None:
        pass

    def status(self, **fields) -> None:
        self.statuses.append(fields)

    def finish(self, status: str, reason: str | None, t_start: float) -> int:
        self.ended = (status, reason)
        return 3


def test_an_idle_async_run_leaves_status_alone_and_fails_after_the_stall_bound():
    """status.json's time is the budget watchdog's sign of life: it moves on a change only."""
    srv = FakeServer(round_timeout_s=2.5)
    assert run_async(srv, 0.0) == 3
    assert srv.ended[0] == "failed" and "no client update for 2.5s" in srv.ended[1]
    assert len(srv.statuses) == 1, srv.statuses  # the loop went round several times meanwhile
    (st,) = srv.statuses
    assert st["phase"] == "training" and st["version"] == 0 and len(st["sampled"]) == 2
