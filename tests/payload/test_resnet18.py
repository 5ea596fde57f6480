"""`model: resnet18` (GroupNorm, CIFAR stem) and mixed precision: the model, and a real small run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml
from conftest import PAYLOAD_DIR
from fedtf import models
from test_cifar_data import cifar_npz

from tests.waiting import wait_until

TOKEN = "resnet-test-token-0123456789"
ENV = {**os.environ, "FEDTF_INTRA_THREADS": "2", "FEDTF_UNREACHABLE_S": "120"}


@pytest.fixture
def policy_restored():
    yield
    keras.mixed_precision.set_global_policy("float32")  # the policy is process-wide


def test_resnet18_shape_and_parameter_count(policy_restored):
    m = models.build_model("resnet18", (32, 32, 3), 10)
    # He et al.'s CIFAR ResNet-18 has 11,173,962 trainable weights with BatchNorm; GroupNorm has the
    # same gamma and beta and no running statistics, so every weight is trainable
    assert m.count_params() == 11_173_962
    assert sum(int(np.prod(w.shape)) for w in m.trainable_weights) == 11_173_962
    norms = [la for la in m.layers if isinstance(la, keras.layers.GroupNormalization)]
    assert len(norms) == 1 + 8 * 2 + 3 and all(la.groups == models.GN_GROUPS for la in norms)  # stem, blocks, projections
    assert not any(isinstance(la, (keras.layers.BatchNormalization, keras.layers.MaxPooling2D)) for la in m.layers)
    first = next(la for la in m.layers if isinstance(la, keras.layers.Conv2D))
    assert first.kernel_size == (3, 3) and first.strides == (1, 1)  # the CIFAR stem
    assert m(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)


def test_resnet18_refuses_flat_input(policy_restored):
    with pytest.raises(ValueError, match="resnet18 needs image data"):
        models.build_model("resnet18", (784,), 10)


def test_mixed_precision_off_and_auto_on_a_cpu_keep_float32(policy_restored):
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this checks a host without a GPU")
    assert models.precision_policy("off") == "float32"
    assert models.precision_policy("auto") == "float32"  # no GPU: float16 would only be slower
    m = models.build_model("mlp", (8, 8, 1), 10, mixed_precision="auto")
    assert m.dtype_policy.name == "float32" and all(w.dtype == "float32" for w in m.weights)


def test_mixed_precision_on_computes_float16_with_float32_weights_and_output(policy_restored):
    m = models.build_model("resnet18", (32, 32, 3), 10, mixed_precision="on")
    conv = next(la for la in m.layers if isinstance(la, keras.layers.Conv2D))
    assert conv.compute_dtype == "float16"
    assert {w.dtype for w in m.weights} == {"float32"}  # the wire, aggregation, checkpoints: float32
    assert m.get_layer("head").compute_dtype == "float32" and m.output.dtype == "float32"
    with pytest.raises(ValueError, match="valid: auto, on, off"):
        models.precision_policy("fp16")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_resnet18_trains_end_to_end_on_synthetic_cifar(tmp_path):
    """Server + a client process of 2 virtual clients, 2 rounds, 64 images a client: the round lines
    record finite losses and accuracies of the model of their own round."""
    data_path = cifar_npz(tmp_path / "cifar.npz", n_train=128, n_test=32)
    cfg = {"clients": 2, "rounds": 2, "seed": 0, "model": "resnet18",
           "data": {"dataset": "cifar10", "path": data_path, "partition": "iid"},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "mixed_precision": "auto"},
           "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 300}, "test_subset": 16}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "token").write_text(TOKEN)
    os.chmod(tmp_path / "token", 0o600)
    args = ["--config", str(tmp_path / "config.yaml"), "--run-dir", str(tmp_path),
            "--token-file", str(tmp_path / "token")]
    procs = []

    def spawn(script, extra, log):
        with open(tmp_path / log, "wb") as out:
            procs.append(subprocess.Popen([sys.executable, os.path.join(PAYLOAD_DIR, script), *args, *extra],
                                          stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd="/"))
        return procs[-1]

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in tmp_path.glob("*.log"))

    try:
        server = spawn("server.py", ["--host", "127.0.0.1", "--port", "0"], "server.log")

        def ready():
            assert server.poll() is None, logs()
            return _read_json(tmp_path / "server.ready")

        port = wait_until(ready, 180, interval=0.1, what="the server's ready file")["port"]
        spawn("client.py", ["--server", f"127.0.0.1:{port}", "--client-ids", "0,1"], "client.log")
        try:
            rcs = [p.wait(420) for p in procs]
        except subprocess.TimeoutExpired:
            raise AssertionError("run did not finish\n" + logs()) from None
        assert rcs == [0, 0], logs()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [x for x in lines if x["type"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["eval_round"] == r["round"] and r["reported"] == [0, 1]
        assert math.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0
        assert all(math.isfinite(c["loss"]) and c["examples"] == 64 for c in r["clients"].values())
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["status"] == "finished"
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    assert _read_json(tmp_path / "summary.json")["eval_examples"] == 16
    server_log = (tmp_path / "server.log").read_text()
    assert "11173962 weights" in server_log and "evaluated on 16" in server_log
    assert (tmp_path / "final_model.weights.h5").stat().st_size > 4 * 11_173_962


def test_loss_scale_keeps_float16_gradients_that_would_flush_to_zero(policy_restored):
    import tensorflow as tf
    from fedtf.loss_scale import DynamicLossScale

    keras.mixed_precision.set_global_policy("mixed_float16")
    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    x = tf.ones((1, 4))

    def grads(scale: DynamicLossScale | None):
        with tf.GradientTape() as tape:
            y = layer(x)                          # float16 compute
            loss = tf.cast(y, tf.float32) * 1e-9  # a gradient of 1e-9: below float16's smallest
            if scale is not None:
                loss = scale.scaled(loss)
        g = tape.gradient(loss, layer.trainable_variables)
        return (g, None) if scale is None else scale.unscale(g)

    plain, _ = grads(None)
    assert float(tf.reduce_max(tf.abs(plain[0]))) == 0.0  # flushed: no training signal at all
    scale = DynamicLossScale()
    kept, finite = grads(scale)
    assert bool(finite) and np.allclose(kept[0].numpy(), 1e-9, rtol=1e-2)
    # an overflow skips the step (zero gradient) and halves the scale
    big = DynamicLossScale(initial=1e38)
    with tf.GradientTape() as tape:
        loss = big.scaled(tf.cast(layer(x), tf.float32) * 1e3)
    out, finite = big.unscale(tape.gradient(loss, layer.trainable_variables))
    assert not bool(finite) and float(tf.reduce_max(tf.abs(out[0]))) == 0.0 and big.scale.numpy() == np.float32(1e38) / np.float32(2)
