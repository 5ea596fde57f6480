"""Client training in TensorFlow against numpy references (fast, in-process, but real TF)."""
import numpy as np
import pytest

pytestmark = pytest.mark.e2e

tf = pytest.importorskip("tensorflow")

from fedtf import models, training  # noqa: E402

TRAIN = {"epochs": 1, "batch_size": 4, "lr": 0.1, "optimizer": "sgd"}


def _data(n=10, f=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, f)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


def _numpy_sgd(w, b, x, y, perm, lr, bs, mu=0.0, w0=None, b0=None, cw=None, cb=None):
    """Reference local SGD for softmax regression with FedProx and SCAFFOLD terms."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    for s in range(0, len(perm), bs):
        idx = perm[s:s + bs]
        z = x[idx] @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1
        gw, gb = x[idx].T @ p / len(idx), p.mean(0)
        if mu:
            gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
        if cw is not None:
            gw, gb = gw + cw, gb + cb
        w, b = w - lr * gw, b - lr * gb
    return w, b


def _trainer(strategy="fedavg", mu=0.0, train=TRAIN, f=6):
    training.seed_everything(0)
    m = models.build_model("logreg", (f,), 3)
    return training.Trainer(m, (f,), train, strategy, mu)


@pytest.mark.parametrize("strategy,mu,scaffold", [("fedavg", 0, False), ("fedprox", 0.5, False),
                                                  ("scaffold", 0, True)])
def test_local_sgd_matches_numpy(strategy, mu, scaffold):
    x, y = _data()
    tr = _trainer(strategy, mu)
    rng0 = np.random.default_rng(3)
    start = tr.layout.get()
    w0, b0 = [p.copy() for p in tr.layout.split(start)]
    corr = np.random.default_rng(1).standard_normal(start.size).astype(np.float32) * 0.1 if scaffold else None
    anchor = start + 0.3  # FedProx pulls towards the global model, which need not be the start
    tr.layout.set(start)
    tr.train(tf.constant(x), tf.constant(y), len(y), np.random.default_rng(3), anchor, corr)
    got_w, got_b = tr.layout.split(tr.layout.get())
    perm = rng0.permutation(len(y))
    aw, ab = tr.layout.split(anchor)
    cw, cb = tr.layout.split(corr) if scaffold else (None, None)
    ref_w, ref_b = _numpy_sgd(w0, b0, x, y, perm, 0.1, 4, mu, aw, ab, cw, cb)
    np.testing.assert_allclose(got_w, ref_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-4, atol=1e-5)


def test_fedprox_mu0_equals_fedavg_and_mu_matters():
    x, y = _data(40)
    outs = {}
    for name, strategy, mu in (("avg", "fedavg", 0.0), ("prox0", "fedprox", 0.0), ("prox1", "fedprox", 1.0)):
        tr = _trainer(strategy, mu, dict(TRAIN, epochs=2))
        start = tr.layout.get()
        tr.layout.set(start)
        tr.train(tf.constant(x), tf.constant(y), len(y), np.random.default_rng(7), start + 1.0)
        outs[name] = tr.layout.get()
    np.testing.assert_array_equal(outs["avg"], outs["prox0"])
    assert not np.allclose(outs["avg"], outs["prox1"])


def test_no_retracing_across_clients_and_rounds():
    tr = _trainer()
    for n in (5, 9, 17, 33):  # shards of different sizes, as virtual clients have
        x, y = _data(n, seed=n)
        tr.train(tf.constant(x), tf.constant(y), n, np.random.default_rng(n), tr.layout.get())
    assert tr._epoch.experimental_get_tracing_count() == 1
    loss, acc = tr.evaluate(*_data(20))
    assert 0.0 <= acc <= 1.0 and loss > 0


def test_mlp_is_mcmahan_2nn():
    m = models.build_model("mlp", (28, 28, 1), 10)
    assert m.count_params() == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10  # 199,210
    cnn = models.build_model("cnn", (28, 28, 1), 10)
    assert cnn.count_params() == 1_663_370  # McMahan et al. 2017, Table 1 CNN
