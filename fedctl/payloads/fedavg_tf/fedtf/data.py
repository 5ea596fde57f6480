"""Data sets and client partitions.

Every process derives the same split and the same shards from (dataset, clients, partition, seed):
the train/test split and the partition use only seeded numpy generators, so shards are identical
on every host, disjoint, cover the training set and are never empty.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from . import npzfile


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # float32 in [0, 1] (CIFAR: standardised per channel); images (H, W, C), flat (F,)
    y_train: np.ndarray  # int32 labels 0..classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    name: str


def _scale(x: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]. No copy beyond the one float32 array: a process's training set is its
    largest array, and every extra copy while loading was a peak of its memory."""
    x = np.asarray(x)
    if x.dtype == np.uint8 or (x.size and float(x.max()) > 1.0):
        hi = 255.0 if x.dtype == np.uint8 or float(x.max()) > 16.0 else 16.0
        out = x.astype(np.float32)  # a copy (x is not float32, or is float32 above 1)
        out /= np.float32(hi)
        return out
    return x.astype(np.float32, copy=False)


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


def load_dataset(data_cfg: dict, seed: int, train_features: bool = True) -> Dataset:
    """Load the configured data set, scaled to float32 in [0, 1], labels int32.

    train_features=False (the server: it partitions by the labels and evaluates on the test set,
    and never reads a training example): x_train is a read-only placeholder of the right shape
    that holds no memory, and an npz's x_train is not even read (the largest array: the server's
    peak memory was the whole training set)."""
    name = data_cfg["dataset"]
    if not train_features and name == "npz":
        return _labels_and_test(data_cfg["path"])
    ds = _load(data_cfg, seed)
    return ds if train_features else _without_train_features(ds, ds.x_train.shape)


def _placeholder(shape: tuple) -> np.ndarray:
    """A read-only, zero-filled float32 array of `shape` that holds one example's worth of memory
    (a broadcast view)."""
    return np.broadcast_to(np.zeros(shape[1:], np.float32), shape)


def _without_train_features(ds: Dataset, shape: tuple) -> Dataset:
    return Dataset(_placeholder(shape), ds.y_train, ds.x_test, ds.y_test, ds.classes, ds.name)


def _labels_and_test(path: str) -> Dataset:
    """An npz's training labels and test set; x_train's shape from its header (read in full only
    when its header is one np.load reads and fedtf/npzfile.py does not)."""
    ytr, xte, yte = read_npz(path, keys=("y_train", "x_test", "y_test"))
    infos = npzfile.read_infos(path)  # read_npz has checked the file: headers only
    if infos is not None:
        shape = tuple(infos["x_train"].shape)
    else:
        shape = read_npz(path, keys=("x_train",))[0].shape
    # _images on the zero-stride view gives a full load's shape and still holds no memory
    return _dataset(_images(_placeholder(shape)), ytr, _images(_scale(xte)), yte, "npz")


def _load(data_cfg: dict, seed: int) -> Dataset:
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
        xtr, ytr, xte, yte = read_npz(data_cfg["path"])
        xtr, xte = _images(_scale(xtr)), _images(_scale(xte))
    elif name == "cifar10":  # never downloads: a CIFAR-shaped npz, or Keras's cache
        if data_cfg["path"]:
            xtr, ytr, xte, yte = read_npz(data_cfg["path"], cifar=True)
        else:
            xtr, ytr, xte, yte = keras_cifar10_cache()
        xtr, xte = per_channel(xtr, xte)
    else:  # keras.datasets: downloads on first use, needs internet on the host
        import keras  # noqa: PLC0415
        mod = getattr(keras.datasets, name)
        (xtr, ytr), (xte, yte) = mod.load_data()
        xtr, xte = _images(_scale(xtr)), _images(_scale(xte))
    return _dataset(np.ascontiguousarray(xtr, np.float32), ytr, xte, yte, name)


def _dataset(xtr: np.ndarray, ytr, xte, yte, name: str) -> Dataset:
    """The Dataset of loaded arrays: labels int32 and flat, classes from both label sets, the test
    features contiguous float32 (`xtr` as given: a full load makes it contiguous, the server's
    placeholder must stay a view)."""
    ytr = np.asarray(ytr).reshape(-1).astype(np.int32)
    yte = np.asarray(yte).reshape(-1).astype(np.int32)
    classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(xtr, ytr, np.ascontiguousarray(xte, np.float32), yte, classes, name)


def read_npz(path: str, cifar: bool = False, keys: tuple[str, ...] = npzfile.NPZ_KEYS) -> tuple:
    """The arrays `keys` (default x_train, y_train, x_test, y_test) of an .npz, in that order,
    checked from its headers before any array is read (fedtf/npzfile.py): plain numbers only, each
    header agreeing with the bytes stored, and with `cifar` the shapes of keras.datasets.cifar10.
    ValueError names the file, key and what is valid."""
    try:
        infos = npzfile.read_infos(path)
        if infos is not None:
            npzfile.check_bounded(path, infos)
            if cifar:
                npzfile.check_cifar(path, infos)
    except OSError as e:
        raise ValueError(f"data.path: cannot read {path}: {e.strerror or e}") from None
    except npzfile.NpzProblem as e:
        raise ValueError(f"data.path: {e}") from None
    with np.load(path, allow_pickle=False) as f:
        arrays = tuple(f[k] for k in keys)
    if cifar:
        for key, y in ((k, a) for k, a in zip(keys, arrays) if k in ("y_train", "y_test")):
            if y.size and int(y.min()) < 0:
                raise ValueError(f"data.path: {path}: {key} holds a negative label {int(y.min())} "
                                 "(valid: class numbers 0, 1, ...)")
    return arrays


# Where keras.datasets.cifar10.load_data() leaves the extracted batches (Keras 3, then Keras 2).
CIFAR_CACHE = ("cifar-10-batches-py-target/cifar-10-batches-py", "cifar-10-batches-py")


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickles (dicts of numpy arrays and lists): load those and nothing
    else, so a tampered cache file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 spells bytes (a python 3 pickle of a batch)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="bytes").load()
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(d[b"labels"], np.int32)


def keras_cifar10_cache() -> tuple:
    """CIFAR-10 from Keras's download cache ($KERAS_HOME or ~/.keras, datasets/), never a download."""
    root = os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "datasets")
    for sub in CIFAR_CACHE:
        folder = os.path.join(root, sub)
        if os.path.isfile(os.path.join(folder, "test_batch")):
            break
    else:
        raise ValueError(
            f"data.dataset cifar10: no CIFAR-10 in Keras's cache on this host (looked for "
            f"{os.path.join(root, CIFAR_CACHE[-1])}/data_batch_1..5 and test_batch); fedctl never "
            "downloads it. Put the extracted cifar-10-python.tar.gz there, or give data.path: an .npz "
            "with x_train uint8 [N, 32, 32, 3], y_train, x_test, y_test (keras.datasets.cifar10's arrays)")
    try:
        train = [_cifar_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
        xte, yte = _cifar_batch(os.path.join(folder, "test_batch"))
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise ValueError(f"data.dataset cifar10: the Keras cache in {folder} is unreadable: {e}") from None
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), xte, yte)


def per_channel(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images scaled to [0, 1], then standardised per channel with the training set's mean and
    standard deviation (the same numbers on every host: they come from the same arrays)."""
    xtr = xtr.astype(np.float32) / np.float32(255.0)
    xte = xte.astype(np.float32) / np.float32(255.0)
    axes = tuple(range(xtr.ndim - 1))
    mean = xtr.mean(axis=axes, dtype=np.float64).astype(np.float32)
    std = np.maximum(xtr.std(axis=axes, dtype=np.float64), 1e-3).astype(np.float32)
    xtr -= mean
    xtr /= std
    xte -= mean
    xte /= std
    return xtr, xte


def eval_subset(ds: Dataset, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The test examples the server evaluates on: all (n None), or a fixed seeded sample of n
    (the same every round, so accuracies of different rounds compare)."""
    if n is None or n >= len(ds.y_test):
        return ds.x_test, ds.y_test
    idx = np.sort(np.random.default_rng([seed, 8]).choice(len(ds.y_test), n, replace=False))
    return ds.x_test[idx], ds.y_test[idx]


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
