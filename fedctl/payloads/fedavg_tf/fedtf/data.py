"""Data sets and client partitions.

Every process derives the same split and the same shards from (dataset, clients, partition, seed):
the train/test split and the partition use only seeded numpy generators, so shards are identical
on every host, disjoint, cover the training set and are never empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32 in [0, 1]; image data keeps (H, W, C), flat data (F,)
    y_train: np.ndarray  # int32 labels 0..classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    name: str


def _scale(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8 or (x.size and float(x.max()) > 1.0):
        hi = 255.0 if x.dtype == np.uint8 or float(x.max()) > 16.0 else 16.0
        return (x.astype(np.float32) / hi).astype(np.float32)
    return x.astype(np.float32)


def _images(x: np.ndarray) -> np.ndarray:
    """28x28 grey images get a channel axis; colour and flat data stay as they are."""
    return x[..., None] if x.ndim == 3 else x


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Seeded stratified split (same on every host)."""
    rng = np.random.default_rng([seed, 1])
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.append(idx[: max(1, int(round(len(idx) * test_fraction)))])
    test = np.sort(np.concatenate(test_idx))
    mask = np.ones(len(y), bool)
    mask[test] = False
    return x[mask], y[mask], x[test], y[test]


def synthetic(train: int, test: int, features: int, classes: int, noise: float, seed: int) -> tuple:
    """Gaussian blobs around random class prototypes, clipped to [0, 1] (MNIST-shaped by default)."""
    rng = np.random.default_rng([seed, 2])
    protos = rng.random((classes, features), dtype=np.float32)
    n = train + test
    y = rng.integers(0, classes, n).astype(np.int32)
    x = protos[y] + rng.standard_normal((n, features), dtype=np.float32) * np.float32(noise * 0.5)
    np.clip(x, 0.0, 1.0, out=x)
    return x[:train], y[:train], x[train:], y[train:]


def load_dataset(data_cfg: dict, seed: int) -> Dataset:
    """Load the configured data set, scaled to float32 in [0, 1], labels int32."""
    name = data_cfg["dataset"]
    if name == "digits":
        from sklearn.datasets import load_digits  # noqa: PLC0415 - only when used
        d = load_digits()
        x = (d.data.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
        xtr, ytr, xte, yte = _split(x, d.target.astype(np.int32), data_cfg["test_fraction"], seed)
    elif name == "synthetic":
        s = data_cfg["synthetic"]
        xtr, ytr, xte, yte = synthetic(s["train"], s["test"], s["features"], s["classes"],
                                       s["noise"], seed)
    elif name == "npz":
        with np.load(data_cfg["path"], allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise ValueError(f"data.path: {data_cfg['path']} lacks {', '.join(missing)}")
            xtr, ytr, xte, yte = (_images(_scale(f["x_train"])), f["y_train"],
                                  _images(_scale(f["x_test"])), f["y_test"])
    else:  # keras.datasets: downloads on first use, needs internet on the host
        import keras  # noqa: PLC0415
        mod = getattr(keras.datasets, name)
        (xtr, ytr), (xte, yte) = mod.load_data()
        xtr, xte = _images(_scale(xtr)), _images(_scale(xte))
    ytr = np.asarray(ytr).reshape(-1).astype(np.int32)
    yte = np.asarray(yte).reshape(-1).astype(np.int32)
    classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(np.ascontiguousarray(xtr, np.float32), ytr,
                   np.ascontiguousarray(xte, np.float32), yte, classes, name)


def partition(labels: np.ndarray, clients: int, how: str, seed: int, alpha: float = 0.5,
              shards_per_client: int = 2) -> list[np.ndarray]:
    """Split training indices into `clients` disjoint, covering, non-empty shards."""
    n = len(labels)
    if n < clients:
        raise ValueError(f"clients: {clients} clients but only {n} training examples")
    rng = np.random.default_rng([seed, 3])
    if how == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif how == "dirichlet":
        parts = _dirichlet(labels, clients, alpha, rng)
    elif how == "shards":
        parts = _shards(labels, clients, shards_per_client, rng)
    else:
        raise ValueError(f"data.partition: unknown partition {how!r} (valid: iid, dirichlet, shards)")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, clients: int, alpha: float, rng) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, cuts)):
            buckets[k].append(part)
    parts = [np.concatenate(b) for b in buckets]
    # Never empty: an empty client takes one example from the currently largest shard.
    for k in range(clients):
        if len(parts[k]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            parts[k], parts[big] = parts[big][-1:], parts[big][:-1]
    return parts


def _shards(labels: np.ndarray, clients: int, per_client: int, rng) -> list[np.ndarray]:
    """McMahan's pathological split: sort by label, cut into clients*per_client shards, deal them."""
    total = clients * per_client
    if len(labels) < total:
        raise ValueError(f"data.shards_per_client: {clients}x{per_client} shards need at least "
                         f"{total} training examples, there are {len(labels)}")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, total)
    deal = rng.permutation(total)
    return [np.concatenate([shards[s] for s in deal[k * per_client:(k + 1) * per_client]])
            for k in range(clients)]


def client_shards(ds: Dataset, cfg: dict) -> list[np.ndarray]:
    d = cfg["data"]
    return partition(ds.y_train, cfg["clients"], d["partition"], cfg["seed"], d["alpha"],
                     d["shards_per_client"])
