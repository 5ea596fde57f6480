import os

import numpy as np

from fedtf import checkpoint


def test_save_load_round_trip_without_pickle(tmp_path):
    d = str(tmp_path / "ck")
    rng = np.random.default_rng(0)
    gen = np.random.default_rng(9)
    gen.random(3)
    w = rng.standard_normal(1000).astype(np.float32)
    checkpoint.save(d, 1, w * 0, {}, {"rng": gen.bit_generator.state})
    checkpoint.save(d, 2, w, {"c": w * 2}, {"rng": gen.bit_generator.state, "best": 0.5})
    rnd, w2, state, info = checkpoint.load(d)
    assert rnd == 2 and np.array_equal(w2, w) and np.array_equal(state["c"], w * 2)
    g2 = np.random.default_rng(0)
    g2.bit_generator.state = info["rng"]
    assert g2.random() == gen.random()  # the sampling RNG continues where it stopped
    assert sorted(f for f in os.listdir(d) if f.endswith(".npz")) == ["ckpt-000002.npz"]
    assert not [f for f in os.listdir(d) if ".tmp" in f]
    with np.load(os.path.join(d, "ckpt-000002.npz"), allow_pickle=False) as z:
        assert set(z.files) == {"weights", "strategy__c"}


def test_load_missing_returns_none(tmp_path):
    assert checkpoint.load(str(tmp_path)) is None
