"""train.mixed_precision in the client's own training step (CPU: float16 compute works, slowly).

The client builds its model under the configured policy; the Trainer then scales the loss so
float16 gradients do not flush to zero, and skips a step whose scaled gradients overflow (the
weights, SGD or Adam, are left as they were)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from fedtf import config, models, training  # noqa: E402


@pytest.fixture()
def float16_policy():
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")  # the policy is global to the process


def _data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 20)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_float16_training_scales_the_loss_and_learns(float16_policy, optimizer: str) -> None:
    import keras

    keras.utils.set_random_seed(0)  # the same initial weights whatever ran before in this process
    model = models.build_model("mlp", (20,), 3, mixed_precision="on")
    assert model.dtype_policy.name == "mixed_float16"
    lr = 0.05 if optimizer == "sgd" else 0.002  # Adam's steps are ~lr each: 0.05 overshoots here
    tr = training.Trainer(model, (20,), {"batch_size": 8, "epochs": 3, "lr": lr, "optimizer": optimizer})
    assert tr.loss_scale is not None
    x, y = _data()
    before = tr.layout.get()
    first = tr.train(x, y, len(y), np.random.default_rng(1), before)
    last = tr.train(x, y, len(y), np.random.default_rng(2), tr.layout.get())
    after = tr.layout.get()
    assert np.isfinite(after).all() and np.isfinite([first, last]).all()
    assert not np.allclose(before, after) and last < first
    assert after.dtype == np.float32  # variables stay float32: the wire format is unchanged


def test_an_overflowing_step_changes_no_weight(float16_policy) -> None:
    model = models.build_model("mlp", (20,), 3, mixed_precision="on")
    tr = training.Trainer(model, (20,), {"batch_size": 8, "epochs": 1, "lr": 0.05, "optimizer": "adam"})
    tr.loss_scale.scale.assign(3.0e38)  # any scaled gradient overflows float32: every step is skipped
    x, y = _data(8)
    before = tr.layout.get()
    tr.train(x, y, len(y), np.random.default_rng(1), before)
    assert np.array_equal(tr.layout.get(), before)
    assert float(tr.t.numpy()) == 0.0  # Adam's step count did not move either


def test_float32_training_has_no_loss_scale() -> None:
    model = models.build_model("mlp", (20,), 3, mixed_precision="off")
    assert training.Trainer(model, (20,), {"batch_size": 8, "epochs": 1, "lr": 0.05,
                                           "optimizer": "sgd"}).loss_scale is None


@pytest.mark.parametrize("raw, mode", [(False, "off"), (True, "on"), ("auto", "auto")])
def test_a_bare_yaml_on_or_off_is_read_as_the_mode(raw: object, mode: str) -> None:
    cfg = config.resolve({"clients": 2, "train": {"mixed_precision": raw}})
    assert cfg["train"]["mixed_precision"] == mode
