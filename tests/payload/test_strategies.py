import numpy as np
import pytest

from fedtf.strategies import Update, make_strategy, weighted_average

CFG = {"name": "fedavg", "mu": 0.0, "server_lr": 1.0, "server_momentum": 0.0}


def _updates(rng, k=4, size=50_000, extras=()):
    return [Update(i, int(rng.integers(1, 500)), rng.standard_normal(size).astype(np.float32),
                   {e: rng.standard_normal(size).astype(np.float32) for e in extras}) for i in range(k)]


def _ref_avg(updates):
    n = np.array([u.examples for u in updates], np.float64)
    return (np.stack([u.weights.astype(np.float64) for u in updates]) * (n / n.sum())[:, None]).sum(0)


def test_weighted_average_matches_reference():
    rng = np.random.default_rng(0)
    ups = _updates(rng, k=5, size=70_001)  # not a multiple of the block size
    got = weighted_average([u.weights for u in ups], [u.examples for u in ups])
    np.testing.assert_allclose(got, _ref_avg(ups), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        weighted_average([ups[0].weights], [0])


def test_fedavg_weights_by_examples():
    w = np.zeros(3, np.float32)
    ups = [Update(0, 1, np.array([1, 1, 1], np.float32)), Update(1, 3, np.array([5, 5, 5], np.float32))]
    out = make_strategy(CFG, 3, 2).aggregate(w, ups)
    np.testing.assert_allclose(out, [4, 4, 4])


def test_fedavgm_lr1_momentum0_equals_fedavg():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(1000).astype(np.float32)
    avg = make_strategy(CFG, 1000, 4)
    m = make_strategy({**CFG, "name": "fedavgm"}, 1000, 4)
    for _ in range(3):
        ups = _updates(rng, size=1000)
        np.testing.assert_allclose(m.aggregate(w, ups), avg.aggregate(w, ups), rtol=1e-5, atol=1e-5)


def test_fedavgm_momentum_reference():
    rng = np.random.default_rng(2)
    cfg = {**CFG, "name": "fedavgm", "server_lr": 0.5, "server_momentum": 0.9}
    s = make_strategy(cfg, 100, 4)
    w = rng.standard_normal(100).astype(np.float32)
    w_ref, m_ref = w.astype(np.float64), np.zeros(100)
    for _ in range(3):
        ups = _updates(rng, size=100)
        w = s.aggregate(w, ups)
        m_ref = 0.9 * m_ref + (_ref_avg(ups) - w_ref)
        w_ref = w_ref + 0.5 * m_ref
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(s.state()["m"], 0)


def test_fedadam_reference():
    rng = np.random.default_rng(3)
    s = make_strategy({**CFG, "name": "fedadam", "server_lr": 0.01}, 100, 4)
    w = rng.standard_normal(100).astype(np.float32)
    w_ref, m, v = w.astype(np.float64), np.zeros(100), np.zeros(100)
    for _ in range(3):
        ups = _updates(rng, size=100)
        w = s.aggregate(w, ups)
        d = _ref_avg(ups) - w_ref
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d * d
        w_ref = w_ref + 0.01 * m / (np.sqrt(v) + 1e-3)
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-5)


def test_scaffold_server_reference():
    rng = np.random.default_rng(4)
    n_clients = 10
    s = make_strategy({**CFG, "name": "scaffold", "server_lr": 0.7}, 200, n_clients)
    assert s.client_extras == ("dc",)
    w = rng.standard_normal(200).astype(np.float32)
    c_ref = np.zeros(200)
    for _ in range(2):
        np.testing.assert_allclose(s.broadcast()["c"], c_ref, rtol=1e-5, atol=1e-6)
        ups = _updates(rng, k=3, size=200, extras=("dc",))
        x_ref = w.astype(np.float64) + 0.7 * (_ref_avg(ups) - w)
        c_ref = c_ref + 3 / n_clients * np.mean([u.extras["dc"] for u in ups], axis=0)
        w = s.aggregate(w, ups)
        np.testing.assert_allclose(w, x_ref, rtol=1e-5, atol=1e-5)
    s2 = make_strategy({**CFG, "name": "scaffold"}, 200, n_clients)
    s2.load_state(s.state())
    np.testing.assert_array_equal(s2.broadcast()["c"], s.broadcast()["c"])


def test_unknown_strategy():
    with pytest.raises(ValueError, match="valid: fedavg"):
        make_strategy({**CFG, "name": "fedsgd"}, 10, 2)
