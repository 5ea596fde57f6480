"""Asynchronous aggregation (pure numpy): FedBuff and FedAsync, with staleness weights.

An update arrives with the model version it was trained from (`Update.base`, the weights of that
version) and its staleness s = the server's version now - that version.

- FedBuff (Nguyen et al., AISTATS 2022): K updates are buffered; their deltas y_i - x_{v_i}, each
  scaled by w(s_i), are averaged (weighted by examples, as every strategy here) and that delta goes
  through the server optimiser: sgd (x += lr * d), momentum (m = beta m + d; x += lr * m), adam
  (FedAdam's step).
- FedAsync (Xie et al., 2019): after each update, x = (1 - a) x + a y with a = server_lr * w(s).

Staleness weights (Xie et al.): constant 1; polynomial (1 + s) ** -exponent; hinge 1 for s <= b,
else 1 / (a (s - b) + 1).
"""
from __future__ import annotations

import numpy as np

from .strategies import FedAdam, Strategy, Update, register, weighted_average


def staleness_weight(s: int, cfg: dict) -> float:
    """w(s) for an update `s` server versions old, as `cfg` (the strategy section) chooses."""
    if s < 0:
        raise ValueError(f"staleness must be >= 0, got {s}")
    kind = cfg["staleness"]
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + s) ** -float(cfg["staleness_exponent"]))
    if kind == "hinge":
        b = int(cfg["hinge_b"])
        return 1.0 if s <= b else 1.0 / (float(cfg["hinge_a"]) * (s - b) + 1.0)
    raise ValueError(f"strategy.staleness: unknown {kind!r}")


class AsyncStrategy(Strategy):
    """Updates carry `base` (their version's weights) and `staleness`."""

    def _check(self, updates: list[Update]) -> None:
        for u in updates:
            if u.base is None:
                raise ValueError(f"update of client {u.client} has no base model version")


@register("fedbuff")
class FedBuff(AsyncStrategy):
    def __init__(self, cfg, size, clients):
        super().__init__(cfg, size, clients)
        self.m = np.zeros(size, np.float32)
        self.v = np.zeros(size, np.float32)

    def buffered_delta(self, updates: list[Update]) -> np.ndarray:
        """The example-weighted mean of the staleness-scaled deltas w(s_i) (y_i - x_{v_i})."""
        self._check(updates)
        deltas = [np.float32(staleness_weight(u.staleness, self.cfg)) * (u.weights - u.base)
                  for u in updates]
        return weighted_average(deltas, [u.examples for u in updates])

    def aggregate(self, w, updates):
        d = self.buffered_delta(updates)
        lr, opt = np.float32(self.cfg["server_lr"]), self.cfg["server_optimizer"]
        if opt == "sgd":
            return w + lr * d
        if opt == "momentum":
            self.m = np.float32(self.cfg["server_momentum"]) * self.m + d
            return w + lr * self.m
        b1, b2, tau = (np.float32(x) for x in (FedAdam.beta1, FedAdam.beta2, FedAdam.tau))
        self.m = b1 * self.m + (np.float32(1) - b1) * d
        self.v = b2 * self.v + (np.float32(1) - b2) * d * d
        return w + lr * self.m / (np.sqrt(self.v) + tau)

    def state(self):
        return {"m": self.m, "v": self.v}


@register("fedasync")
class FedAsync(AsyncStrategy):
    def aggregate(self, w, updates):
        """Mix each update in turn (the server loop passes one)."""
        self._check(updates)
        for u in updates:
            a = np.float32(min(1.0, float(self.cfg["server_lr"]) * staleness_weight(u.staleness, self.cfg)))
            w = (np.float32(1) - a) * w + a * u.weights
        return w
