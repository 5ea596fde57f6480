"""Screening of client updates against the global model, and aggregation that cannot go non-finite.

A client that holds the run token can still send an update that is finite yet huge (every weight
1e30): the example-weighted mean then overflows or drowns every honest update, the model turns to
NaN and the run is lost. Three layers stop that (pure numpy, no TensorFlow):

1. on delivery, each update's delta ||w_client - w_global|| (and each extra vector, e.g. SCAFFOLD's
   dc) must be finite and at most `max_norm` (an absolute cap far above any honest update);
2. when the round closes, an update whose norm is more than `max_norm_ratio` times the median norm
   of the round's updates is dropped (honest updates measured within ~3x of the median even on a
   Dirichlet(0.05) split, so 10x leaves a wide margin);
3. after aggregating, the new model and the strategy's state must be finite; if not, the round is
   aggregated again without the update that moved the model most, until it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .strategies import Strategy, Update

_CHUNK = 1 << 16  # floats per block: the float64 scratch stays small for any model size


@dataclass(frozen=True)
class UpdateLimits:
    """Bounds every accepted update must meet (config section `robustness`)."""

    max_norm: float = 1e6                   # absolute cap on an update's delta norm
    max_norm_ratio: float | None = 10.0     # cap relative to the round's median norm; None = off

    @classmethod
    def from_config(cls, rob: dict) -> UpdateLimits:
        """From the resolved `robustness` section (see fedtf.config)."""
        return cls(float(rob["max_update_norm"]),
                   None if rob["max_norm_ratio"] is None else float(rob["max_norm_ratio"]))


def delta_norm(new: np.ndarray, ref: np.ndarray | None = None) -> float:
    """L2 norm of new - ref (or of new alone), in float64 so 1e30-sized values neither overflow
    nor round to a small number. inf or nan when any input element is not finite."""
    size = new.shape[0]
    if ref is not None and ref.shape[0] != size:
        raise ValueError(f"vectors differ in length: {size} vs {ref.shape[0]}")
    total = 0.0
    for s in range(0, size, _CHUNK):
        d = new[s:s + _CHUNK].astype(np.float64)
        if ref is not None:
            d -= ref[s:s + _CHUNK]
        total += float(np.dot(d, d))
    return math.sqrt(total) if math.isfinite(total) else total


def update_norms(upd: Update, ref: np.ndarray | None) -> dict[str, float]:
    """The norm of each group of one update: "w" as a delta from `ref`, extras as they are (they
    are already changes, e.g. SCAFFOLD's dc)."""
    out = {"w": delta_norm(upd.weights, ref)}
    for g, v in upd.extras.items():
        out[g] = delta_norm(v)
    return out


def norm_outliers(norms: dict[int, float], ratio: float | None) -> dict[int, str]:
    """Clients whose norm exceeds `ratio` times the median of `norms`, with a reason each.

    The median of two or fewer updates cannot tell an attacker from an honest client (the absolute
    cap guards those rounds); a zero median (clients echoing the global model) turns the rule off
    for the round rather than rejecting every client that trained.
    """
    if ratio is None or len(norms) < 3:
        return {}
    med = float(np.median(list(norms.values())))
    if not med > 0.0:
        return {}
    return {k: f"update norm {n:.3g} is {n / med:.0f}x the round's median {med:.3g} "
               f"(robustness.max_norm_ratio {ratio:g})"
            for k, n in norms.items() if n > ratio * med}


def _worst_norm(norms: dict[str, float]) -> float:
    # nan compares false with everything: count it as the largest so its update goes first
    return max(math.inf if math.isnan(n) else n for n in norms.values())


def _finite(v: np.ndarray) -> bool:
    return bool(np.isfinite(v).all())


def safe_aggregate(strategy: Strategy, w: np.ndarray,
                   updates: list[Update]) -> tuple[np.ndarray, dict[int, str]]:
    """Aggregate `updates` into a new global model that is finite, as is the strategy's state.

    Returns (new weights, {client: reason} of updates left out). Screened updates keep this a
    no-op in practice; it is the last line: should the result still be non-finite, the strategy's
    state is restored and the round aggregated again without the update with the largest norm,
    until the result is finite. With no update left the model and state stay as they were.
    """
    saved = {k: np.array(v, copy=True) for k, v in strategy.state().items()}
    remaining = list(updates)
    left_out: dict[int, str] = {}
    while remaining:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected just below
            new = np.ascontiguousarray(strategy.aggregate(w, remaining), np.float32)
        if _finite(new) and all(_finite(v) for v in strategy.state().values()):
            return new, left_out
        strategy.load_state(saved)
        worst = max(remaining, key=lambda u: _worst_norm(update_norms(u, w)))
        remaining.remove(worst)
        left_out[worst.client] = "the aggregate was not finite with this update"
    return w, left_out
