import os
import subprocess
import sys

import pytest
from conftest import PAYLOAD_DIR

from fedtf.config import ConfigProblem, load, resolve, samples_per_round, validate


def test_defaults_filled():
    out = validate({})
    assert out["model"] == "mlp" and out["data"]["dataset"] == "digits"
    assert out["strategy"]["name"] == "fedavg" and out["strategy"]["server_lr"] == 1.0
    assert out["sampling"]["fraction"] == 1.0 and out["train"]["optimizer"] == "sgd"
    assert out["tensorboard"] is False


def test_unknown_strategy_message():
    with pytest.raises(ConfigProblem) as e:
        validate({"strategy": {"name": "fedsgd"}})
    assert e.value.key_path == "strategy.name"
    assert str(e.value).startswith("strategy.name: unknown strategy 'fedsgd' (valid: fedavg, fedprox, ")
    assert isinstance(e.value, ValueError) and "scaffold" in e.value.valid


@pytest.mark.parametrize("cfg,path", [
    ({"modle": "mlp"}, "modle"),
    ({"data": {"datset": "digits"}}, "data.datset"),
    ({"train": {"epochs": "2"}}, "train.epochs"),
    ({"train": {"lr": -0.1}}, "train.lr"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"sampling": {"fraction": 0}}, "sampling.fraction"),
    ({"sampling": {"fraction": 1.5}}, "sampling.fraction"),
    ({"sampling": {"min_clients": True}}, "sampling.min_clients"),
    ({"realism": {"dropout": 1.0}}, "realism.dropout"),
    ({"realism": {"latency_ms": -1}}, "realism.latency_ms"),
    ({"realism": {"slow_factor": 0.5}}, "realism.slow_factor"),
    ({"data": {"partition": "zipf"}}, "data.partition"),
    ({"data": {"dataset": "npz"}}, "data.path"),
    ({"model": "resnet"}, "model"),
    ({"strategy": {"mu": "big"}}, "strategy.mu"),
    ({"tensorboard": "yes"}, "tensorboard"),
    ({"evaluate_every": 0}, "evaluate_every"),
])
def test_invalid_values_name_the_key(cfg, path):
    with pytest.raises(ConfigProblem) as e:
        validate(cfg)
    assert e.value.key_path == path
    assert str(e.value).startswith(path + ":")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigProblem) as e:
        validate({"sampling": {"fractoin": 0.5}})
    assert "fraction" in e.value.valid and "min_clients" in e.value.valid


def test_model_file_spec_and_fedadam_default_lr():
    assert validate({"model": "my_model.py:build"})["model"] == "my_model.py:build"
    assert validate({"strategy": {"name": "fedadam"}})["strategy"]["server_lr"] == 0.01


def test_resolve_ignores_fedctl_keys_and_checks_core():
    full = {"clients": 10, "rounds": 5, "seed": 1, "name": "x", "payload": "fedavg_tf",
            "placement": {}, "server": {"port": 0}, "budget": {}, "on_finish": "keep",
            "sampling": {"fraction": 0.1, "min_clients": 1}}
    out = resolve(full)
    assert out["clients"] == 10 and out["rounds"] == 5 and "name" not in out
    assert samples_per_round(out) == 1
    with pytest.raises(ConfigProblem) as e:
        resolve({"clients": 0})
    assert e.value.key_path == "clients"
    with pytest.raises(ConfigProblem) as e:
        resolve({"clients": 2, "sampling": {"min_clients": 3}})
    assert e.value.key_path == "sampling.min_clients"


def test_load_reads_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("clients: 4\nrounds: 3\nstrategy:\n  name: fedprox\n  mu: 0.1\n")
    out = load(p)
    sync_keys = {k: out["strategy"][k] for k in ("name", "mu", "server_lr", "server_momentum")}
    assert sync_keys == {"name": "fedprox", "mu": 0.1, "server_lr": 1.0, "server_momentum": 0.9}


def test_config_module_is_light():
    code = ("import sys; sys.path.insert(0, %r); import fedtf.config; "
            "bad = [m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules]; print(bad)") % PAYLOAD_DIR
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
