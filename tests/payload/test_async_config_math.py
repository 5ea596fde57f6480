"""fedbuff / fedasync: the config keys, the staleness weights and one server step against numpy."""
from __future__ import annotations

import numpy as np
import pytest
from fedtf import config
from fedtf.async_strategies import staleness_weight
from fedtf.strategies import Update, make_strategy


def _st(**kw) -> dict:
    return config.resolve({"clients": 6, "strategy": kw})["strategy"]


def test_async_keys_resolve_with_defaults_from_the_fleet():
    st = _st(name="fedbuff", concurrency=3, buffer_size=2)
    assert (st["concurrency"], st["buffer_size"], st["max_staleness"]) == (3, 2, 2 * 2 + 4)
    assert st["staleness"] == "polynomial" and st["staleness_exponent"] == 0.5
    st = _st(name="fedasync", concurrency=4)
    assert st["server_lr"] == 0.6 and st["max_staleness"] == 2 * 4 + 4
    assert _st(name="fedbuff")["concurrency"] == 6  # the sync sample size (fraction 1.0)


@pytest.mark.parametrize("keys, path, words", [
    ({"name": "fedbuff", "concurrency": 7}, "strategy.concurrency", "more than the 6 clients"),
    ({"name": "fedbuff", "concurrency": 0}, "strategy.concurrency", ">= 1"),
    ({"name": "fedbuff", "buffer_size": 0}, "strategy.buffer_size", ">= 1"),
    ({"name": "fedbuff", "staleness": "linear"}, "strategy.staleness", "constant, polynomial, hinge"),
    ({"name": "fedbuff", "server_optimizer": "rmsprop"}, "strategy.server_optimizer", "sgd, momentum, adam"),
    ({"name": "fedbuff", "max_staleness": -1}, "strategy.max_staleness", ">= 0"),
    ({"name": "fedbuff", "staleness_exponent": "x"}, "strategy.staleness_exponent", "expected a number"),
    ({"name": "fedbuff", "hinge_b": 1.5}, "strategy.hinge_b", "integer"),
    ({"name": "fedbuff", "local": "scaffold"}, "strategy.local", "SCAFFOLD is synchronous only"),
    ({"name": "fedasync", "server_lr": 1.5}, "strategy.server_lr", "at most 1"),
    ({"name": "fedbuf"}, "strategy.name", "fedbuff, fedasync"),
])
def test_async_keys_are_refused_with_their_path(keys, path, words):
    with pytest.raises(config.ConfigProblem) as e:
        _st(**keys)
    assert e.value.key_path == path and words in str(e.value)


def test_fedprox_local_objective_is_accepted_with_async():
    st = _st(name="fedasync", local="fedprox", mu=0.1)
    assert (st["local"], st["mu"]) == ("fedprox", 0.1)
    with pytest.raises(config.ConfigProblem, match="plain, fedprox, scaffold"):
        _st(name="fedbuff", local="prox")


def test_async_keys_are_accepted_but_unused_by_sync_strategies():
    st = _st(name="fedavg", buffer_size=4, staleness="hinge")  # one file, sync and async side by side
    assert st["name"] == "fedavg" and st["buffer_size"] == 4


def test_staleness_weights():
    cfg = {"staleness": "polynomial", "staleness_exponent": 0.5, "hinge_a": 10.0, "hinge_b": 4}
    assert [staleness_weight(s, cfg) for s in (0, 3, 8)] == pytest.approx([1.0, 0.5, 1 / 3])
    cfg["staleness"] = "hinge"
    assert [staleness_weight(s, cfg) for s in (0, 4, 5, 6)] == pytest.approx([1, 1, 1 / 11, 1 / 21])
    cfg["staleness"] = "constant"
    assert staleness_weight(100, cfg) == 1.0
    with pytest.raises(ValueError):
        staleness_weight(-1, cfg)


def _updates(rng, w_versions, specs):
    """specs: (client, examples, version, staleness)."""
    out = []
    for c, n, v, s in specs:
        base = w_versions[v]
        out.append(Update(c, n, (base + rng.normal(size=base.shape)).astype(np.float32), base=base, staleness=s))
    return out


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_one_fedbuff_step_matches_numpy(opt):
    rng = np.random.default_rng(0)
    size = 50
    versions = {v: rng.normal(size=size).astype(np.float32) for v in (3, 4, 5)}
    w = versions[5]
    ups = _updates(rng, versions, [(0, 10, 5, 0), (1, 30, 3, 2), (2, 20, 4, 1)])
    st = _st(name="fedbuff", concurrency=3, buffer_size=3, server_optimizer=opt, server_lr=0.5,
             server_momentum=0.8)
    strat = make_strategy(st, size, 6)
    m0 = rng.normal(size=size).astype(np.float32)
    v0 = np.abs(rng.normal(size=size)).astype(np.float32)
    strat.load_state({"m": m0, "v": v0})
    # the reference, in float64
    ws = np.array([(1 + u.staleness) ** -0.5 for u in ups])
    n = np.array([u.examples for u in ups], float)
    d = sum(nk * wk * (u.weights.astype(float) - u.base) for nk, wk, u in zip(n, ws, ups)) / n.sum()
    if opt == "sgd":
        want = w + 0.5 * d
    elif opt == "momentum":
        want = w + 0.5 * (0.8 * m0 + d)
    else:
        m = 0.9 * m0 + 0.1 * d
        v = 0.99 * v0 + 0.01 * d * d
        want = w + 0.5 * m / (np.sqrt(v) + 1e-3)
    got = strat.aggregate(w, ups)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32


def test_fedasync_constant_staleness_is_the_mixing_rule():
    rng = np.random.default_rng(1)
    versions = {0: rng.normal(size=20).astype(np.float32), 2: rng.normal(size=20).astype(np.float32)}
    st = _st(name="fedasync", concurrency=2, staleness="constant", server_lr=0.3)
    strat = make_strategy(st, 20, 6)
    (u,) = _updates(rng, versions, [(1, 7, 0, 2)])
    got = strat.aggregate(versions[2], [u])
    np.testing.assert_allclose(got, 0.7 * versions[2] + 0.3 * u.weights, rtol=1e-5, atol=1e-6)
    st["staleness"] = "polynomial"  # s=2: a = 0.3 / sqrt(3)
    a = 0.3 / np.sqrt(3)
    np.testing.assert_allclose(make_strategy(st, 20, 6).aggregate(versions[2], [u]),
                               (1 - a) * versions[2] + a * u.weights, rtol=1e-5, atol=1e-6)
