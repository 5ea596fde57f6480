"""Vectorised virtual clients (fedtf/vectorised.py) against the sequential Trainer: the same clients
from the same weights with the same rng streams give the same weights and losses, per model, per
strategy, with shards of different sizes (partial last batches, clients that finish early) and a
chunk smaller than the number of clients; models that cannot be vectorised fall back or refuse."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fedtf import config, models, training, vectorised  # noqa: E402
from fedtf.vectorised_layers import Unsupported  # noqa: E402

SIZES = [7, 13, 4]  # batch 4: partial last batches; the 4-example client is done after 1 step/epoch
SHAPES = {"logreg": (6,), "mlp": (6,), "cnn": (8, 8, 1)}



@pytest.fixture(autouse=True)
def _xla_where_it_helps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The XLA path stays tested here (it is opt-in: FEDTF_VECTORIZE_XLA=auto or 1)."""
    monkeypatch.setenv("FEDTF_VECTORIZE_XLA", "auto")

def _train_cfg(**kw) -> dict:
    return {"epochs": 2, "batch_size": 4, "lr": 0.05, "optimizer": "sgd", "vectorize_chunk": 2, **kw}


def _compare(model: keras.Model, shape: tuple, strategy: str, tc: dict, classes: int = 3,
             sizes=SIZES) -> tuple[float, float, vectorised.VectorTrainer]:
    """(largest weight difference, largest loss difference, the vectorised trainer)."""
    tr = training.Trainer(model, shape, tc, strategy, 0.3)
    vt = vectorised.VectorTrainer(model, shape, tc, strategy, 0.3)
    rng = np.random.default_rng(5)
    xs = [rng.random((n, *shape)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, classes, n).astype(np.int32) for n in sizes]
    start = tr.layout.get()
    corr = [rng.standard_normal(start.size).astype(np.float32) * 0.05 if strategy == "scaffold" else None
            for _ in sizes]
    seq = []
    for k, n in enumerate(sizes):
        tr.layout.set(start)
        loss = tr.train(tf.constant(xs[k]), tf.constant(ys[k]), n, np.random.default_rng([1, k]), start, corr[k])
        seq.append((tr.layout.get(), loss))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    dw = dl = 0.0
    for _ in range(2 if vt.xla else 1):  # the plain graph first, XLA from a shape's 2nd call: check both
        jobs = [vectorised.Job(int(offsets[k]), n, np.random.default_rng([1, k]), start, corr[k])
                for k, n in enumerate(sizes)]
        got = vt.train(np.concatenate(xs), np.concatenate(ys), jobs)
    if vt.xla:
        assert vt.xla_error is None and set(vt.shapes_seen.values()) == {2}
        dw = max([dw] + [float(np.abs(w - r.weights).max()) for (w, _), r in zip(seq, got)])
        dl = max([dl] + [abs(loss - r.loss) for (_, loss), r in zip(seq, got)])
    moved = max(float(np.abs(w - start).max()) for w, _ in seq)
    assert moved > 1e-3  # training did something, so equality means something
    return dw, dl, vt


@pytest.mark.parametrize("model_name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold"])
def test_vectorised_equals_sequential(model_name, strategy):
    training.seed_everything(0)
    shape = SHAPES[model_name]
    dw, dl, vt = _compare(models.build_model(model_name, shape, 3), shape, strategy, _train_cfg())
    assert vt.forward.kind == "layers" and vt.chunk == 2 < len(SIZES)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    assert vt.xla == (model_name != "cnn" or gpu)  # XLA's grouped convolution is slow on a CPU
    assert dw < 1e-5 and dl < 1e-5


def test_adam_equals_sequential():
    """Adam divides by sqrt(v): where a gradient is ~0, its float rounding (1e-9: a masked mean sums
    in another order) moves the step by a fraction of lr, also between two sequential runs that
    differ only in summation order; so within 2e-3 x lr per step here, not 1e-5."""
    training.seed_everything(0)
    tc = _train_cfg(optimizer="adam")
    dw, dl, _ = _compare(models.build_model("mlp", (6,), 3), (6,), "fedavg", tc)
    steps = tc["epochs"] * -(-max(SIZES) // tc["batch_size"])
    assert dw < 2e-3 * tc["lr"] * steps and dl < 1e-5


def _resnet_like(shape=(8, 8, 3), classes=3) -> keras.Model:
    """A functional model with what resnet18 uses: conv without bias, GroupNorm, a residual add,
    global average pooling."""
    inp = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.Activation("relu")(keras.layers.GroupNormalization(2, epsilon=1e-5)(x))
    y = keras.layers.Conv2D(4, 3, strides=1, padding="same", use_bias=False)(x)
    y = keras.layers.GroupNormalization(2, epsilon=1e-5)(y)
    x = keras.layers.Activation("relu")(keras.layers.Add()([x, y]))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="valid")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_functional_conv_groupnorm_residual(strategy):
    training.seed_everything(0)
    dw, dl, vt = _compare(_resnet_like(), (8, 8, 3), strategy, _train_cfg(epochs=1))
    assert vt.forward.kind == "layers"
    assert dw < 1e-5 and dl < 1e-5


class Scale(keras.layers.Layer):
    """A user's layer with a weight: not a built-in form, so the generic path takes it."""

    def build(self, input_shape):
        self.s = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.s


class UserConv(keras.layers.Layer):
    """A user's convolution: per-client filters are what vectorized_map cannot batch."""

    def build(self, input_shape):
        self.k = self.add_weight(shape=(3, 3, input_shape[-1], 2), initializer="glorot_uniform")

    def call(self, x):
        return tf.nn.conv2d(x, self.k, 1, "SAME")


def _seq(*layers, shape=(6,)) -> keras.Model:
    return keras.Sequential([keras.Input(shape), *layers, keras.layers.Flatten(),
                             keras.layers.Dense(3, activation="softmax")])


def test_user_layer_takes_the_generic_path():
    training.seed_everything(0)
    model = _seq(keras.layers.Dense(5, activation="tanh"), Scale())
    dw, dl, vt = _compare(model, (6,), "fedprox", _train_cfg())
    assert vt.forward.kind == "vmap" and "Scale" in vt.forward.why_vmap
    assert dw < 1e-5 and dl < 1e-5


@pytest.mark.parametrize("model,why", [
    (lambda: _seq(keras.layers.BatchNormalization()), "BatchNormalization"),
    (lambda: _seq(keras.layers.Dropout(0.5)), "Dropout"),
    (lambda: _seq(UserConv(), shape=(4, 4, 1)), "Conv2D"),  # vectorized_map refuses (pfor)
])
def test_cannot_vectorise_falls_back_or_refuses(model, why):
    training.seed_everything(0)
    m = model()
    shape = tuple(m.inputs[0].shape[1:])
    lines: list[str] = []
    assert vectorised.make(m, shape, _train_cfg(vectorize="auto"), "fedavg", 0.0, lines.append) is None
    assert len(lines) == 1 and "one at a time" in lines[0] and why in lines[0], lines
    with pytest.raises(Unsupported, match=f"train.vectorize: on.*{why}"):
        vectorised.make(m, shape, _train_cfg(vectorize="on"), "fedavg", 0.0, lines.append)
    assert vectorised.make(m, shape, _train_cfg(vectorize="off"), "fedavg", 0.0, lines.append) is None


def test_make_off_and_on():
    training.seed_everything(0)
    m = models.build_model("logreg", (6,), 3)
    lines: list[str] = []
    assert vectorised.make(m, (6,), _train_cfg(vectorize="off"), "fedavg", 0.0, lines.append) is None
    assert lines == []
    vt = vectorised.make(m, (6,), _train_cfg(vectorize="on"), "fedavg", 0.0, lines.append)
    assert isinstance(vt, vectorised.VectorTrainer) and len(lines) == 1 and "vectorised training" in lines[0]


def test_chunk_follows_the_memory_budget(monkeypatch):
    """No train.vectorize_chunk: as many clients per computation as FEDTF_VECTORIZE_MB holds."""
    training.seed_everything(0)
    model = models.build_model("mlp", (784,), 10)  # 199,210 weights: ~5 MB per client and more
    tc = _train_cfg(vectorize_chunk=None, batch_size=10)
    monkeypatch.setenv("FEDTF_VECTORIZE_MB", "12")
    small = vectorised.VectorTrainer(model, (784,), tc).chunk
    monkeypatch.setenv("FEDTF_VECTORIZE_MB", "2048")
    big = vectorised.VectorTrainer(model, (784,), tc).chunk
    assert 1 <= small <= 2 and big >= 100


def test_train_clients_entry_point():
    """The benchmark's entry point: same results as the trainer it wraps, one per shard, and the
    compiled trainer reused across calls."""
    rng = np.random.default_rng(0)
    shards = [(rng.random((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)) for n in (9, 5)]
    cfg = {"train": {"epochs": 1, "batch_size": 4, "lr": 0.1, "optimizer": "sgd"}, "seed": 3, "classes": 3}
    training.seed_everything(3)
    w0 = training.WeightLayout(models.build_model("logreg", (6,), 3)).get()
    out = vectorised.train_clients("logreg", w0, shards, cfg)
    cached = dict(vectorised._CACHE)
    again = vectorised.train_clients("logreg", w0, shards, cfg)  # XLA from a shape's 2nd call
    assert len(out) == 2 and vectorised._CACHE == cached
    np.testing.assert_allclose(out[0], again[0], atol=1e-6)
    tr = training.Trainer(models.build_model("logreg", (6,), 3), (6,), cfg["train"])
    tr.layout.set(w0)
    tr.train(tf.constant(shards[1][0]), tf.constant(shards[1][1]), 5, np.random.default_rng([3, 1]), w0)
    np.testing.assert_allclose(out[1], tr.layout.get(), atol=1e-6)


@pytest.mark.parametrize("value,want", [("auto", "auto"), ("on", "on"), (False, "off"), (True, "on")])
def test_config_vectorize_values(value, want):
    got = config.validate({"train": {"vectorize": value, "vectorize_chunk": 3}})["train"]
    assert got["vectorize"] == want and got["vectorize_chunk"] == 3


@pytest.mark.parametrize("train,key", [({"vectorize": "sometimes"}, "train.vectorize"),
                                       ({"vectorize_chunk": 0}, "train.vectorize_chunk"),
                                       ({"vectorize_chunk": "4"}, "train.vectorize_chunk")])
def test_config_vectorize_rejects(train, key):
    with pytest.raises(config.ConfigProblem) as e:
        config.validate({"train": train})
    assert e.value.key_path == key
    assert config.validate({})["train"]["vectorize"] == "auto"


def test_a_process_holding_most_clients_pools_the_training_set_as_it_is():
    """load_clients: a process whose shards cover the training set pools it as it is (clients
    name their rows: no gathered copy while loading); one holding few clients gathers theirs back
    to back. Both train to the same weights for the same clients."""
    from fedtf import data
    from fedtf.realism import Realism
    from fedtf.vectorised_round import Work, load_clients, train_works

    cfg = config.resolve({"clients": 6, "seed": 2, "model": "logreg",
                          "data": {"dataset": "synthetic", "partition": "iid",
                                   "synthetic": {"train": 90, "test": 10, "features": 6, "classes": 3}}})
    ds = data.load_dataset(cfg["data"], cfg["seed"])
    shards = data.client_shards(ds, cfg)
    realism = Realism(cfg["realism"], cfg["clients"], cfg["seed"])
    every, whole = load_clients(ds, shards, list(range(6)), realism, True)
    few, gathered = load_clients(ds, shards, [1, 4], realism, True)
    assert int(whole[0].shape[0]) == 90 and all(every[k].rows is not None for k in every)
    assert int(gathered[0].shape[0]) == len(shards[1]) + len(shards[4]) and few[4].rows is None
    training.seed_everything(0)
    model = models.build_model("logreg", (6,), 3)
    vt = vectorised.VectorTrainer(model, (6,), _train_cfg())
    start = vt.layout.get()

    def works():
        return [Work(k, 1, 1, ("i", 1, 1), start, np.random.default_rng([7, k]), 0) for k in (1, 4)]

    a = [t.weights for t in train_works(None, vt, whole, every, works())]
    b = [t.weights for t in train_works(None, vt, gathered, few, works())]
    assert max(float(np.abs(w - start).max()) for w in a) > 1e-3
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, atol=1e-6)
