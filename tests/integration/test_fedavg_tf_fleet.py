"""The real fedavg_tf payload (Keras training) started by fedctl on a fleet of real sshd hosts."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import yaml

from tests.integration.test_lifecycle import fedctl, files_under, run_pids, state

# The hosts (this machine) import TensorFlow: a missing install fails here, loudly, instead of
# skipping; found without importing it (seconds of CPU this process does not need).
if importlib.util.find_spec("tensorflow") is None:
    raise ImportError("tensorflow is not installed; install the test extras: pip install -e '.[tf,results,test]'")


@pytest.mark.e2e
def test_fedavg_tf_run_on_sshd_fleet(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({
        "rounds": 2,
        "model": "mlp",
        "data": {"dataset": "digits", "partition": "iid"},
        "sampling": {"min_clients": 2, "round_timeout_s": 120},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1},
    }))
    fleet.write_inventory(proj / "inventory.yaml")
    res = fedctl(proj, "run", "--clients", "4", "-i", "inventory.yaml", "--yes", "--interval", "1",
                 timeout=600, check=True)
    assert "finished" in res.stdout
    st = state(proj)
    run_id = st["run_id"]
    assert st["phase"] == "torn_down"
    # facts recorded at provision name the TensorFlow the hosts import
    assert st["hosts"][1]["facts"]["tensorflow"]
    results = proj / "results" / run_id
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    per_round = [r for r in rounds if r.get("type") == "round"]
    assert [r["round"] for r in per_round] == [1, 2]
    assert sorted(per_round[-1]["reported"]) == [0, 1, 2, 3]
    assert 0.0 < per_round[-1]["accuracy"] <= 1.0
    assert (results / "logs" / "h2" / "client-0.log").exists()
    assert run_pids(run_id) == [] and files_under(fleet) == []


@pytest.mark.e2e
def test_config_files_are_shipped_to_the_hosts(sshd_fleet, tmp_path):
    """An npz data set and a model file named in fedctl.yaml exist only here: fedctl ships them."""
    fleet = sshd_fleet(2)
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 3, 240), rng.integers(0, 3, 60)
    # classes are separable by brightness, so a tiny model learns them in one round
    x_train = (y_train[:, None, None] * 80 + rng.integers(0, 20, (240, 6, 6))).astype("uint8")
    x_test = (y_test[:, None, None] * 80 + rng.integers(0, 20, (60, 6, 6))).astype("uint8")
    np.savez(proj / "data" / "tiny.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (proj / "tiny_model.py").write_text(
        "import keras\n\n"
        "def build(input_shape, classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(classes, activation='softmax')])\n"
    )
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({
        "rounds": 2,
        "model": "tiny_model.py:build",
        "data": {"dataset": "npz", "path": "data/tiny.npz"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.1},
    }))
    fleet.write_inventory(proj / "inventory.yaml")
    res = fedctl(proj, "run", "--clients", "2", "-i", "inventory.yaml", "--yes", "--interval", "1",
                 timeout=600, check=True)
    assert "finished" in res.stdout
    run_id = state(proj)["run_id"]
    lines = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines()]
    rounds = [x for x in lines if x.get("type") == "round"]
    assert len(rounds) == 2 and 0.0 <= rounds[-1]["accuracy"] <= 1.0
    # the shipped model (36 x 3 + 3 weights), not the default 2NN, is what the clients trained
    uploads = [c["upload_bytes"] for c in rounds[-1]["clients"].values()]
    assert uploads and all(u < 2000 for u in uploads), uploads
    assert files_under(fleet) == []  # the shipped copies went with the teardown


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["sshd", "local"])
def test_fedbuff_run_through_fedctl(sshd_fleet, tmp_path, where):
    """``fedctl run --set strategy.name=fedbuff``: asynchronous rounds on real sshd hosts and on the
    local provider; each server update's round line carries its staleness; nothing is left."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({
        "rounds": 4,
        "model": "mlp",
        "data": {"dataset": "digits", "partition": "iid"},
        "sampling": {"round_timeout_s": 120},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1},
    }))
    args = ["run", "--clients", "4", "--yes", "--interval", "1", "--set", "strategy.name=fedbuff",
            "--set", "strategy.concurrency=3", "--set", "strategy.buffer_size=2"]
    fleet = None
    if where == "sshd":
        fleet = sshd_fleet(2)
        fleet.write_inventory(proj / "inventory.yaml")
        args += ["-i", "inventory.yaml"]
    res = fedctl(proj, *args, timeout=600, check=True)
    assert "finished" in res.stdout
    run_id = state(proj)["run_id"]
    lines = [json.loads(x) for x in (proj / "results" / run_id / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in lines if r.get("type") == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["strategy"] == "fedbuff" and r["aggregated"] == 2 and len(r["updates"]) == 2 for r in rounds)
    assert all(0 <= r["staleness_min"] <= r["staleness_mean"] <= r["staleness_max"] for r in rounds)
    assert rounds[-1]["client_updates"] == sum(r["aggregated"] for r in rounds)
    assert run_pids(run_id) == []
    if fleet is not None:
        assert files_under(fleet) == []
