"""A client that holds the run token but sends finite, huge updates must not reach the model.

Unit level: the norm checks on delivery, the median rule at round close, aggregation that cannot
go non-finite, and metrics/summary files that stay strict JSON.
"""
import json

import numpy as np
import pytest
from fedtf import checkpoint
from fedtf.config import ConfigProblem, validate
from fedtf.coordinator import Coordinator
from fedtf.metrics import MetricsWriter
from fedtf.robust import UpdateLimits, delta_norm, norm_outliers, safe_aggregate
from fedtf.strategies import Update, make_strategy
from fedtf.transport import encode

SHAPES = [(4, 3), (3,), (3, 2), (2,)]
SIZE = sum(int(np.prod(s)) for s in SHAPES)
TOKEN = b"s3cret-token"
CFG = {"name": "fedavg", "mu": 0.0, "server_lr": 1.0, "server_momentum": 0.0}


def _strict_loads(line: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


def _split(flat):
    out, pos = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(flat[pos:pos + n].reshape(s))
        pos += n
    return out


def _body(client, flat, examples=5):
    return encode({"client": client, "examples": examples, "train_s": 0.1, "loss": 1.0},
                  {"w": _split(np.asarray(flat, np.float32))})


def _coord(sampled, global_w, limits=None, shard=600):
    c = Coordinator(TOKEN, SHAPES, [shard] * 8, (), limits=limits)
    c.open_round(1, sampled, np.asarray(global_w, np.float32), {}, {})
    return c


# -- norms ----------------------------------------------------------------------------------------
def test_delta_norm_is_exact_and_does_not_overflow():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(70_001).astype(np.float32)  # more than one block
    b = rng.standard_normal(70_001).astype(np.float32)
    assert delta_norm(a, b) == pytest.approx(np.linalg.norm(a.astype(np.float64) - b), rel=1e-9)
    huge = np.full(1000, 1e30, np.float32)
    assert delta_norm(huge) == pytest.approx(1e30 * np.sqrt(1000), rel=1e-6)  # float32 would be inf
    assert np.isnan(delta_norm(np.array([1.0, np.nan], np.float32)))


def test_norm_outliers_uses_the_median():
    assert norm_outliers({0: 1.0, 1: 1.2, 2: 0.9, 3: 10.9}, 10.0) == {}  # median 1.1: 10.9 is 9.9x
    got = norm_outliers({0: 1.0, 1: 1.2, 2: 0.9, 3: 50.0}, 10.0)
    assert list(got) == [3] and "median" in got[3]
    assert norm_outliers({0: 1.0, 1: 1.2, 2: 0.9, 3: 50.0}, None) == {}
    assert norm_outliers({0: 1.0, 1: 500.0}, 10.0) == {}          # two updates: no majority to trust
    assert norm_outliers({0: 0.0, 1: 0.0, 2: 3.0}, 10.0) == {}    # zero median: rule off, not "reject all"


# -- on delivery ----------------------------------------------------------------------------------
def test_finite_but_huge_update_is_rejected_on_delivery():
    c = _coord([0, 1, 2], np.zeros(SIZE))
    code, why = c.deliver(c.state.seq, 0, _body(0, np.full(SIZE, 1e30), examples=500))
    assert code == 400 and "max_update_norm" in why
    assert c.state.updates == {} and c.state.rejected and c.state.dropped[0].startswith("rejected: ")
    code, _ = c.deliver(c.state.seq, 1, _body(1, np.full(SIZE, 0.01)))
    assert code == 200 and c.state.client_metrics[1]["update_norm"] == pytest.approx(0.01 * np.sqrt(SIZE), rel=1e-3)


def test_update_is_measured_against_the_global_model():
    g = np.full(SIZE, 100.0)  # ||g|| = 480: far above the cap of 10 used here
    c = _coord([0, 1], g, UpdateLimits(max_norm=10.0))
    assert c.deliver(c.state.seq, 0, _body(0, g + 0.5))[0] == 200      # delta 2.4: fine
    code, why = c.deliver(c.state.seq, 1, _body(1, np.zeros(SIZE)))    # delta 480: not
    assert code == 400 and "update delta norm 480" in why


def test_close_round_rejects_an_update_far_above_the_median():
    c = _coord([0, 1, 2, 3, 4], np.zeros(SIZE))
    rng = np.random.default_rng(1)
    for k in range(4):
        assert c.deliver(c.state.seq, k, _body(k, rng.normal(0, 0.1, SIZE)))[0] == 200
    assert c.deliver(c.state.seq, 4, _body(4, np.full(SIZE, 50.0)))[0] == 200  # under the absolute cap
    st = c.close_round()
    assert sorted(st.updates) == [0, 1, 2, 3] and list(st.rejected) == [4]
    assert st.dropped[4].startswith("rejected: update norm") and 4 not in st.client_metrics


def test_close_round_rule_can_be_turned_off():
    c = _coord([0, 1, 2], np.zeros(SIZE), UpdateLimits(max_norm_ratio=None))
    for k, v in enumerate([0.1, 0.1, 50.0]):
        assert c.deliver(c.state.seq, k, _body(k, np.full(SIZE, v)))[0] == 200
    assert sorted(c.close_round().updates) == [0, 1, 2]


# -- aggregation ----------------------------------------------------------------------------------
def _ups(rng, size, k=3):
    return [Update(i, 10 + i, rng.normal(0, 0.1, size).astype(np.float32)) for i in range(k)]


def test_fedadam_state_overflow_is_caught_and_the_update_left_out():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, 100).astype(np.float32)
    honest = _ups(rng, 100)
    bad = Update(9, 500, np.full(100, 1e22, np.float32))  # finite, but delta^2 overflows float32
    plain = make_strategy({**CFG, "name": "fedadam", "server_lr": 0.01}, 100, 10)
    with np.errstate(over="ignore", invalid="ignore"):
        plain.aggregate(w, honest + [bad])
    assert not np.isfinite(plain.state()["v"]).all()  # the hazard this guards against

    s = make_strategy({**CFG, "name": "fedadam", "server_lr": 0.01}, 100, 10)
    ref = make_strategy({**CFG, "name": "fedadam", "server_lr": 0.01}, 100, 10)
    new, left_out = safe_aggregate(s, w, honest + [bad])
    assert list(left_out) == [9]
    np.testing.assert_array_equal(new, ref.aggregate(w, honest))
    for k, v in ref.state().items():
        np.testing.assert_array_equal(s.state()[k], v)


def test_fedavgm_non_finite_model_is_redone_without_the_offender():
    w = np.full(50, -3e38, np.float32)
    # example-weighted mean ~2.9e38, minus w = -3e38: the delta overflows to inf
    ups = [Update(0, 5, np.full(50, -3e38, np.float32)), Update(1, 500, np.full(50, 3e38, np.float32))]
    s = make_strategy({**CFG, "name": "fedavgm", "server_momentum": 0.0}, 50, 2)
    new, left_out = safe_aggregate(s, w, ups)
    assert np.isfinite(new).all() and list(left_out) == [1]
    assert np.isfinite(s.state()["m"]).all()


def test_no_finite_aggregate_keeps_the_model():
    w = np.full(50, -3e38, np.float32)
    s = make_strategy({**CFG, "name": "fedavgm", "server_momentum": 0.0}, 50, 2)
    new, left_out = safe_aggregate(s, w, [Update(1, 5, np.full(50, 3e38, np.float32))])
    assert new is w and list(left_out) == [1] and not s.state()["m"].any()


# -- files stay strict JSON -----------------------------------------------------------------------
def test_metrics_and_summary_never_hold_nan(tmp_path):
    mw = MetricsWriter(str(tmp_path / "metrics.jsonl"))
    mw.write({"type": "round", "round": 1, "loss": float("nan"), "accuracy": float("inf"),
              "clients": {"0": {"loss": float("-inf"), "examples": 3}}, "sampled": [0]})
    line = (tmp_path / "metrics.jsonl").read_text()
    obj = _strict_loads(line)
    assert obj["loss"] is None and obj["accuracy"] is None and obj["clients"]["0"] == {"loss": None, "examples": 3}
    checkpoint.atomic_write_json(str(tmp_path / "summary.json"), {"final_loss": float("nan"), "final": [1.0, float("nan")]})
    assert _strict_loads((tmp_path / "summary.json").read_text()) == {"final_loss": None, "final": [1.0, None]}


# -- config ---------------------------------------------------------------------------------------
def test_robustness_defaults_and_checks():
    rob = validate({})["robustness"]
    assert rob == {"max_update_norm": 1e6, "max_norm_ratio": 10.0, "read_timeout_s": 60.0, "max_connections": None}
    assert validate({"robustness": {"max_norm_ratio": None, "max_connections": 50}})["robustness"]["max_connections"] == 50
    for bad, path in [({"max_update_norm": 0}, "robustness.max_update_norm"),
                      ({"max_norm_ratio": 1.0}, "robustness.max_norm_ratio"),
                      ({"read_timeout_s": -1}, "robustness.read_timeout_s"),
                      ({"max_connections": 1}, "robustness.max_connections"),
                      ({"max_conns": 1}, "robustness.max_conns")]:
        with pytest.raises(ConfigProblem) as e:
            validate({"robustness": bad})
        assert e.value.key_path == path
    with pytest.raises(ConfigProblem, match=r"YAML reads this as text: write e\.g\. 1\.0e\+6"):
        validate({"robustness": {"max_update_norm": "1e6"}})
