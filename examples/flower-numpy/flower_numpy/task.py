"""The model and the data: multinomial logistic regression in NumPy on a synthetic task.

Every client generates its own partition from a seed, so nothing is downloaded and the same
partition-id always gives the same data. The partitions share one "true" weight matrix (seed 0)
and differ in their feature distribution (a shift per partition), so the federation has something
to learn and some heterogeneity.
"""

from __future__ import annotations

import numpy as np

CLASSES = 4


def init_params(features: int) -> list[np.ndarray]:
    return [np.zeros((features, CLASSES), dtype=np.float32), np.zeros(CLASSES, dtype=np.float32)]


def load_partition(partition_id: int, num_partitions: int, features: int, n: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) of one partition; 80/20 split."""
    truth = np.random.default_rng(0).normal(size=(features, CLASSES)).astype(np.float32)
    rng = np.random.default_rng(1000 + partition_id)
    shift = (partition_id / max(1, num_partitions) - 0.5) * 0.5
    x = rng.normal(loc=shift, size=(n, features)).astype(np.float32)
    y = np.argmax(x @ truth + rng.normal(scale=0.5, size=(n, CLASSES)), axis=1)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of the model on (x, y)."""
    w, b = params
    p = _softmax(x @ w + b)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-9)))
    acc = float(np.mean(np.argmax(p, axis=1) == y))
    return loss, acc


def train(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          batch: int = 32) -> list[np.ndarray]:
    """Mini-batch gradient descent; returns new parameters."""
    w, b = (p.copy() for p in params)
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    rng = np.random.default_rng(len(y))
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            g = _softmax(x[idx] @ w + b) - onehot[idx]
            w -= lr * x[idx].T @ g / len(idx)
            b -= lr * g.mean(axis=0)
    return [w, b]
