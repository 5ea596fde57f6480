"""Server-side aggregation strategies on flat float32 weight vectors (pure numpy).

A client update carries the client's new weights (flat, in the model's variable order) and its
example count; SCAFFOLD adds the change of the client's control variate (`dc`). FedProx differs
from FedAvg only on the client (the proximal term lives in training.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STRATEGIES: dict[str, type] = {}
_CHUNK = 1 << 14  # floats per block: the running sum and scratch stay in cache


def register(name: str):
    def deco(cls):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return deco


@dataclass
class Update:
    client: int
    examples: int
    weights: np.ndarray                      # flat float32: the client's weights after training
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    base: np.ndarray | None = None           # async: the weights of the version it trained from
    staleness: int = 0                       # async: server versions since that one


def weighted_average(vectors: list[np.ndarray], weights, out: np.ndarray | None = None) -> np.ndarray:
    """sum_k weights_k * vectors_k / sum(weights), blocked so each input is read once from memory."""
    w = np.asarray(weights, dtype=np.float64)
    if len(vectors) == 0 or w.sum() <= 0:
        raise ValueError("weighted_average needs at least one vector with a positive weight")
    w = (w / w.sum()).astype(np.float32)
    size = vectors[0].shape[0]
    if out is None:
        out = np.empty(size, dtype=np.float32)
    tmp = np.empty(min(_CHUNK, size), dtype=np.float32)
    for s in range(0, size, _CHUNK):
        e = min(size, s + _CHUNK)
        o, t = out[s:e], tmp[: e - s]
        np.multiply(vectors[0][s:e], w[0], out=o)
        for v, wk in zip(vectors[1:], w[1:]):
            np.multiply(v[s:e], wk, out=t)
            np.add(o, t, out=o)
    return out


class Strategy:
    name = "base"
    client_extras: tuple[str, ...] = ()   # extra vectors each update must carry

    def __init__(self, cfg: dict, size: int, clients: int) -> None:
        self.cfg, self.size, self.clients = cfg, size, clients

    def broadcast(self) -> dict[str, np.ndarray]:
        """Strategy state sent to clients with the global weights."""
        return {}

    def aggregate(self, w: np.ndarray, updates: list[Update]) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, np.array(v, dtype=np.float32))

    @staticmethod
    def average(updates: list[Update]) -> np.ndarray:
        return weighted_average([u.weights for u in updates], [u.examples for u in updates])


@register("fedavg")
class FedAvg(Strategy):
    """McMahan et al. 2017: example-weighted mean of the client models."""

    def aggregate(self, w, updates):
        return self.average(updates)


@register("fedprox")
class FedProx(FedAvg):
    """Li et al. 2020: FedAvg aggregation; clients add mu/2*||w - w_global||^2."""


@register("fedavgm")
class FedAvgM(Strategy):
    """Hsu et al. 2019: server momentum on the averaged delta. lr=1, momentum=0 is FedAvg."""

    def __init__(self, cfg, size, clients):
        super().__init__(cfg, size, clients)
        self.m = np.zeros(size, np.float32)

    def aggregate(self, w, updates):
        delta = self.average(updates) - w
        self.m = np.float32(self.cfg["server_momentum"]) * self.m + delta
        return w + np.float32(self.cfg["server_lr"]) * self.m

    def state(self):
        return {"m": self.m}


@register("fedadam")
class FedAdam(Strategy):
    """Reddi et al. 2021 (FedOpt): Adam on the averaged delta as pseudo-gradient."""
    beta1, beta2, tau = 0.9, 0.99, 1e-3

    def __init__(self, cfg, size, clients):
        super().__init__(cfg, size, clients)
        self.m = np.zeros(size, np.float32)
        self.v = np.zeros(size, np.float32)

    def aggregate(self, w, updates):
        delta = self.average(updates) - w
        self.m = np.float32(self.beta1) * self.m + np.float32(1 - self.beta1) * delta
        self.v = np.float32(self.beta2) * self.v + np.float32(1 - self.beta2) * delta * delta
        return w + np.float32(self.cfg["server_lr"]) * self.m / (np.sqrt(self.v) + np.float32(self.tau))

    def state(self):
        return {"m": self.m, "v": self.v}


@register("scaffold")
class Scaffold(Strategy):
    """Karimireddy et al. 2020, option II control variates.

    Server: x += lr_g * (example-weighted mean of y_i - x);  c += |S|/N * mean(dc_i).
    """
    client_extras = ("dc",)

    def __init__(self, cfg, size, clients):
        super().__init__(cfg, size, clients)
        self.c = np.zeros(size, np.float32)

    def broadcast(self):
        return {"c": self.c}

    def aggregate(self, w, updates):
        new = w + np.float32(self.cfg["server_lr"]) * (self.average(updates) - w)
        mean_dc = weighted_average([u.extras["dc"] for u in updates], [1.0] * len(updates))
        self.c = self.c + np.float32(len(updates) / self.clients) * mean_dc
        return new

    def state(self):
        return {"c": self.c}


from . import async_strategies  # noqa: E402,F401 - registers fedbuff and fedasync


def make_strategy(cfg: dict, size: int, clients: int) -> Strategy:
    name = cfg["name"]
    if name not in STRATEGIES:
        raise ValueError(f"strategy.name: unknown strategy {name!r} (valid: {', '.join(STRATEGIES)})")
    return STRATEGIES[name](cfg, size, clients)
