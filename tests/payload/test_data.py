import numpy as np
import pytest

from fedtf.config import resolve
from fedtf import data
from fedtf.data import client_shards, load_dataset, partition


def _labels(n=6000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.int32)


def _check_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and covering
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("how", ["iid", "dirichlet", "shards"])
def test_partitions_disjoint_covering_nonempty_deterministic(how):
    y = _labels()
    parts = partition(y, 50, how, seed=3, alpha=0.05, shards_per_client=2)
    _check_cover(parts, len(y))
    again = partition(y, 50, how, seed=3, alpha=0.05, shards_per_client=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(y, 50, how, seed=4, alpha=0.05, shards_per_client=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_never_empty_even_when_extreme():
    y = _labels(300)
    _check_cover(partition(y, 100, "dirichlet", seed=0, alpha=0.01), 300)


def _skew(parts, y):
    return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])


def test_dirichlet_skew_grows_as_alpha_falls():
    y = _labels()
    skews = [_skew(partition(y, 20, "dirichlet", seed=1, alpha=a), y) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.2 and skews[2] > 0.6
    assert _skew(partition(y, 20, "iid", seed=1), y) < 0.2


def test_shards_give_requested_classes_per_client():
    y = np.repeat(np.arange(10), 120).astype(np.int32)  # balanced: every shard is single-class
    for spc in (1, 2, 3):
        parts = partition(y, 20, "shards", seed=0, shards_per_client=spc)
        _check_cover(parts, len(y))
        classes = [len(np.unique(y[p])) for p in parts]
        assert max(classes) <= spc
        assert np.mean(classes) > spc - 1 if spc > 1 else all(c == 1 for c in classes)


def test_shards_needs_enough_examples():
    with pytest.raises(ValueError, match="shards_per_client"):
        partition(_labels(30), 20, "shards", seed=0, shards_per_client=2)


def test_digits_split_and_shards_identical_across_loads():
    cfg = resolve({"clients": 7, "seed": 5})
    a, b = load_dataset(cfg["data"], 5), load_dataset(cfg["data"], 5)
    assert a.x_train.shape[1:] == (8, 8, 1) and a.classes == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0 and a.x_train.dtype == np.float32
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert len(a.y_train) + len(a.y_test) == 1797
    sa, sb = client_shards(a, cfg), client_shards(b, cfg)
    assert all(np.array_equal(x, y) for x, y in zip(sa, sb))
    _check_cover(sa, len(a.y_train))


def test_npz_dataset_scaled(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "m.npz"
    np.savez(p, x_train=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 50),
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 20))
    cfg = resolve({"clients": 2, "data": {"dataset": "npz", "path": str(p)}})
    ds = load_dataset(cfg["data"], 0)
    assert ds.x_train.shape == (50, 28, 28, 1) and ds.x_train.max() <= 1.0 and ds.x_train.dtype == np.float32


@pytest.mark.parametrize("images", [False, True])
def test_the_server_loads_labels_and_test_set_but_no_training_example(tmp_path, images, monkeypatch):
    """train_features=False: same labels, test set, classes and x_train shape as a full load;
    x_train holds no memory, and an npz's x_train member is never read."""
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (50, 28, 28) if images else (50, 12)).astype(np.uint8)
    xte = rng.integers(0, 256, (20, 28, 28) if images else (20, 12)).astype(np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=xtr, y_train=rng.integers(0, 5, 50), x_test=xte, y_test=rng.integers(0, 5, 20))
    cfg = {"dataset": "npz", "path": str(path)}
    full = data.load_dataset(cfg, 0)
    read = []
    real_load = np.load

    class Spy:  # records which members are read
        def __init__(self, *a, **kw):
            self.f = real_load(*a, **kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getitem__(self, key):
            read.append(key)
            return self.f[key]

    monkeypatch.setattr(data.np, "load", Spy)
    lean = data.load_dataset(cfg, 0, train_features=False)
    assert "x_train" not in read and read
    assert lean.x_train.shape == full.x_train.shape and lean.x_train.nbytes == full.x_train.nbytes
    assert lean.x_train.base is not None and not lean.x_train.flags.writeable
    assert lean.x_train.strides[0] == 0  # a broadcast view: one example's worth of memory
    np.testing.assert_array_equal(lean.y_train, full.y_train)
    np.testing.assert_array_equal(lean.x_test, full.x_test)
    np.testing.assert_array_equal(lean.y_test, full.y_test)
    assert lean.classes == full.classes
    cfgs = resolve({"clients": 5, "seed": 0, "data": {"dataset": "npz", "path": str(path),
                                                      "partition": "dirichlet", "alpha": 0.5}})
    assert [s.tolist() for s in client_shards(lean, cfgs)] == [s.tolist() for s in client_shards(full, cfgs)]


def test_without_training_features_a_generated_set_keeps_its_labels_and_test_set():
    cfg = {"dataset": "synthetic", "synthetic": {"train": 40, "test": 10, "features": 6, "classes": 3,
                                                 "noise": 1.0}}
    cfg = resolve({"clients": 4, "data": cfg})["data"]
    full, lean = load_dataset(cfg, 3), load_dataset(cfg, 3, train_features=False)
    assert lean.x_train.shape == (40, 6) and lean.x_train.strides[0] == 0 and not lean.x_train.any()
    np.testing.assert_array_equal(lean.y_train, full.y_train)
    np.testing.assert_array_equal(lean.x_test, full.x_test)
