"""CIFAR-shaped data: an .npz like keras.datasets.cifar10's arrays, or Keras's cache; never a download."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from fedtf import data, npzfile
from fedtf.config import ConfigProblem, resolve, validate


def cifar_npz(path, n_train=40, n_test=12, seed=0, **override) -> str:
    """A small synthetic set shaped like keras.datasets.cifar10.load_data()'s arrays."""
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 10, (n_train, 1)).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
              "y_test": rng.integers(0, 10, (n_test, 1)).astype(np.uint8)}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _cfg(path, clients=2) -> dict:
    return resolve({"clients": clients, "model": "resnet18", "data": {"dataset": "cifar10", "path": path}})


def test_cifar_npz_is_loaded_and_standardised_per_channel(tmp_path):
    p = cifar_npz(tmp_path / "c.npz")
    cfg = _cfg(p)
    ds = data.load_dataset(cfg["data"], 0)
    assert ds.x_train.shape == (40, 32, 32, 3) and ds.x_test.shape == (12, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.y_train.shape == (40,)
    # each channel of the training set: mean 0, standard deviation 1 (the test set uses the same numbers)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    raw = np.load(p)["x_test"].astype(np.float32) / 255.0
    xtr = np.load(p)["x_train"].astype(np.float32) / 255.0
    want = (raw - xtr.mean(axis=(0, 1, 2))) / xtr.std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.x_test, want, atol=1e-4)


@pytest.mark.parametrize("override, key, valid", [
    ({"x_train": np.zeros((40, 28, 28, 3), np.uint8)}, "x_train", "uint8 [N, 32, 32, 3]"),
    ({"x_test": np.zeros((12, 32, 32, 3), np.float32)}, "x_test", "uint8 [N, 32, 32, 3]"),
    ({"x_train": np.zeros((40, 32, 32), np.uint8)}, "x_train", "uint8 [N, 32, 32, 3]"),
    ({"y_train": np.zeros((39, 1), np.uint8)}, "y_train", "N = 40"),
    ({"y_test": np.zeros((12, 1), np.float32)}, "y_test", "integers [N] or [N, 1]"),
    ({"y_test": None}, "y_test", "x_train, y_train, x_test, y_test"),
])
def test_bad_cifar_npz_names_the_key_and_what_is_valid(tmp_path, override, key, valid):
    p = cifar_npz(tmp_path / "bad.npz", **override)
    # on the host, at start: a ValueError that the server and clients log as the reason
    with pytest.raises(ValueError) as got:
        data.read_npz(p, cifar=True)
    assert key in str(got.value) and valid in str(got.value) and p in str(got.value)
    # and before any host: fedctl's validation of the experiment says the same, on data.path
    with pytest.raises(ConfigProblem) as problem:
        _cfg(p)
    assert problem.value.key_path == "data.path" and key in problem.value.problem and valid in problem.value.problem


def test_header_that_promises_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    p = cifar_npz(tmp_path / "c.npz")
    infos = npzfile.read_infos(p)
    lying = {**infos, "x_train": infos["x_train"]._replace(shape=(10 ** 7, 32, 32, 3))}
    with pytest.raises(npzfile.NpzProblem, match="x_train's header says shape"):
        npzfile.check_bounded(p, lying)
    npzfile.check_bounded(p, infos)  # the honest file passes


def test_negative_label_is_refused(tmp_path):
    p = cifar_npz(tmp_path / "c.npz", y_train=np.full((40,), -1, np.int64))
    with pytest.raises(ValueError, match="y_train holds a negative label -1"):
        data.read_npz(p, cifar=True)


def test_resnet18_on_flat_data_is_refused_by_the_config():
    with pytest.raises(ConfigProblem) as problem:
        validate({"model": "resnet18", "data": {"dataset": "synthetic"}}, core={"clients": 2, "rounds": 1, "seed": 0})
    assert problem.value.key_path == "model" and "(784,)" in problem.value.problem


def _write_cache(root, seed=0) -> np.ndarray:
    """Keras 3's extracted cifar-10-python.tar.gz under `root`/datasets, batches of 4 images."""
    folder = root / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, (4, 3072), dtype=np.uint8)  # CIFAR's layout: channel-major rows
        first = rows if first is None else first
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in rng.integers(0, 10, 4)],
                         b"batch_label": b"x"}, f, protocol=2)
    return first


def test_cifar10_is_read_from_the_keras_cache(tmp_path, monkeypatch):
    first = _write_cache(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    xtr, ytr, xte, yte = data.keras_cifar10_cache()
    assert xtr.shape == (20, 32, 32, 3) and xte.shape == (4, 32, 32, 3) and xtr.dtype == np.uint8
    assert ytr.shape == (20,)
    # pixel (row 0, col 1) of image 0: red, green, blue come from the three 1024-value planes
    assert list(xtr[0, 0, 1]) == [first[0, 1], first[0, 1024 + 1], first[0, 2048 + 1]]


def test_no_cache_is_a_clear_error_and_never_a_download(tmp_path, monkeypatch):
    import keras
    import keras.src.datasets.cifar10 as keras_cifar10

    def no_download(*a, **k):
        raise AssertionError("keras tried to download")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr(keras_cifar10, "get_file", no_download)  # what load_data() calls
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cfg = resolve({"clients": 2, "data": {"dataset": "cifar10"}})
    with pytest.raises(ValueError) as got:
        data.load_dataset(cfg["data"], 0)
    msg = str(got.value)
    assert str(tmp_path / "datasets" / "cifar-10-batches-py") in msg and "never downloads" in msg
    assert "data.path" in msg


def test_eval_subset_is_fixed_and_of_the_size_asked(tmp_path):
    cfg = _cfg(cifar_npz(tmp_path / "c.npz", n_test=30))
    ds = data.load_dataset(cfg["data"], 0)
    x1, y1 = data.eval_subset(ds, 7, 0)
    x2, y2 = data.eval_subset(ds, 7, 0)
    assert x1.shape == (7, 32, 32, 3) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert data.eval_subset(ds, None, 0)[0] is ds.x_test and data.eval_subset(ds, 99, 0)[0] is ds.x_test
