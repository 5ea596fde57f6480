"""The seeded random streams of a run, one definition for every process that draws them (the
server, the clients, and bench/flower_torch_limit.py, whose curve must be the run's).

- the server's sampling: one generator from (seed, 7), one `choice` per round attempt;
- a sampled client's stream in one task: (seed, client, round, attempt[, ticket]); it gives the
  simulated drop-out draw first (always drawn, so the rest does not depend on the drop-out rate),
  then the local training's permutations, then the simulated delay.
"""
from __future__ import annotations

import numpy as np


def sampler(seed: int) -> np.random.Generator:
    """The server's round-sampling generator (its state is checkpointed)."""
    return np.random.default_rng([seed, 7])


def sample(rng: np.random.Generator, clients: int, m: int) -> list[int]:
    """One round attempt's sampled client ids, sorted."""
    return sorted(int(k) for k in rng.choice(clients, m, replace=False))


def client_stream(seed: int, client: int, rnd: int, attempt: int = 0, ticket: int | None = None) -> np.random.Generator:
    """A sampled client's generator for one task (`ticket`: async tasks, where one client may train
    the same model version twice)."""
    return np.random.default_rng([seed, client, rnd, attempt] + ([ticket] if ticket is not None else []))
