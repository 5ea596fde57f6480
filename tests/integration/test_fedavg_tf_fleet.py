"""The real fedavg_tf payload (Keras training) started by fedctl on a fleet of real sshd hosts."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.test_lifecycle import fedctl, files_under, run_pids, state

pytest.importorskip("tensorflow")


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
