"""Simulated network and device heterogeneity, per client and seeded (recorded apart from measured
times: `simulated_delay_s` next to `train_s`)."""
from __future__ import annotations

import numpy as np


class Realism:
    def __init__(self, cfg: dict, clients: int, seed: int) -> None:
        self.cfg = cfg
        n_slow = int(round(cfg["slow_fraction"] * clients))
        rng = np.random.default_rng([seed, 4])
        self.slow = set(int(k) for k in rng.choice(clients, n_slow, replace=False)) if n_slow else set()

    def is_slow(self, client: int) -> bool:
        return client in self.slow

    def drops_out(self, rng: np.random.Generator) -> bool:
        """Draw whether a sampled client vanishes this round (always one draw: streams stay aligned)."""
        return bool(rng.random() < self.cfg["dropout"])

    def transfer_s(self, rng: np.random.Generator, nbytes: int) -> float:
        lat = self.cfg["latency_ms"]
        t = float(rng.exponential(lat / 1000.0)) if lat > 0 else 0.0
        bw = self.cfg["bandwidth_mbps"]
        if bw > 0:
            t += nbytes * 8 / (bw * 1e6)
        return t

    def delay(self, rng: np.random.Generator, down_bytes: int, up_bytes: int, train_s: float,
              slow: bool) -> float:
        """Simulated extra seconds for one client's round: download + upload transfer, and the
        slowdown of a slow device ((slow_factor - 1) x the measured training time)."""
        extra = (self.cfg["slow_factor"] - 1.0) * train_s if slow else 0.0
        return self.transfer_s(rng, down_bytes) + self.transfer_s(rng, up_bytes) + extra
