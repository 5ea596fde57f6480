"""The shipped templates and example inventories load, and the echo test payload runs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fedctl.config.experiment import CORE_KEYS, load_experiment
from fedctl.config.inventory import load_inventory
from fedctl.config.loader import load_yaml
from fedctl.plan import make_plan
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
# the keys the fedavg_tf payload declares it owns (its manifest), not a copy that drifts
FEDAVG_KEYS = yaml.safe_load((REPO / "fedctl" / "payloads" / "fedavg_tf" / "payload.yaml").read_text())["config"]["keys"]


@pytest.mark.parametrize("name", ["local.yaml", "cloud-gpu.yaml", "jump-host.yaml", "loopback.yaml"])
def test_example_inventories_load(name):
    inv = load_inventory(str(REPO / "inventories" / name))
    if name == "local.yaml":
        assert inv.provider == "local" and inv.hosts == ()
    else:
        assert inv.provider == "static" and len(inv.hosts) >= 2
        assert sum("server" in h.roles for h in inv.hosts) == 1


def test_cloud_inventory_has_prices_and_a_private_server_address():
    inv = load_inventory(str(REPO / "inventories" / "cloud-gpu.yaml"))
    server = next(h for h in inv.hosts if "server" in h.roles)
    assert server.private_address and all(h.price_per_hour for h in inv.hosts)


def test_loopback_inventory_uses_distinct_loopback_addresses():
    inv = load_inventory(str(REPO / "inventories" / "loopback.yaml"))
    addrs = [h.address for h in inv.hosts]
    assert len(set(addrs)) == len(addrs) and all(a.startswith("127.0.0.") and a != "127.0.0.1" for a in addrs)


def test_inventory_template_loads_and_plans(tmp_path):
    inv = load_inventory(str(REPO / "fedctl" / "templates" / "inventory.yaml"))
    assert inv.hosts[0].name == "fl-server" and inv.hosts[1].name == "fl-client-01"
    exp = load_experiment(None, [f"payload={REPO / 'tests/payloads/echo'}"], cwd=tmp_path)
    plan = make_plan(inv, exp, clients=8)
    assert plan.server.name == "fl-server" and len(plan.client_hosts) == 4


def test_experiment_template_sets_every_core_key():
    raw = load_yaml(REPO / "fedctl" / "templates" / "fedctl.yaml")
    assert set(CORE_KEYS) <= set(raw)
    assert set(FEDAVG_KEYS) <= set(raw)


def test_experiment_template_core_keys_validate(tmp_path):
    """Against a stand-in payload that owns the fedavg_tf keys without validating them."""
    d = tmp_path / "standin"
    d.mkdir()
    (d / "payload.yaml").write_text(textwrap.dedent(f"""
        name: standin
        files: ["payload.yaml"]
        config: {{keys: {FEDAVG_KEYS}}}
        server: {{command: "{{python}} s.py"}}
        client: {{command: "{{python}} c.py"}}
    """))
    exp = load_experiment(str(REPO / "fedctl" / "templates" / "fedctl.yaml"), [f"payload={d}"], cwd=tmp_path)
    assert exp.clients == 10 and exp.rounds == 20 and exp.placement.clients_per_host == "auto"
    assert exp.payload_config["data"]["dataset"] == "digits"


@pytest.mark.skipif(not (REPO / "fedctl" / "payloads" / "fedavg_tf" / "payload.yaml").exists(),
                    reason="fedctl/payloads/fedavg_tf is not there")
def test_experiment_template_validates_with_the_real_payload(tmp_path):
    exp = load_experiment(str(REPO / "fedctl" / "templates" / "fedctl.yaml"), [], cwd=tmp_path)
    assert exp.payload.name == "fedavg_tf"
    resolved = exp.resolved()
    assert resolved["strategy"]["name"] == "fedavg" and resolved["clients"] == 10


def test_echo_payload_runs_a_short_federation(tmp_path):
    """The echo server/client pair (used by integration tests) speaks the contract."""
    echo = REPO / "tests" / "payloads" / "echo"
    (tmp_path / "config.yaml").write_text(json.dumps(
        {"clients": 2, "rounds": 3, "echo_round_s": 0.0, "echo_wait_s": 10, "fail_at_round": None}))
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "bad").write_text("wrong\n")
    common = ["--config", str(tmp_path / "config.yaml"), "--run-dir", str(tmp_path)]
    server = subprocess.Popen([sys.executable, str(echo / "server.py"), *common, "--token-file", str(tmp_path / "token"),
                               "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = tmp_path / "server.ready"

        def is_ready() -> bool:
            assert server.poll() is None, server.stdout.read()
            return ready.exists()

        wait_until(is_ready, 20, interval=0.02, what="the echo server's ready file")
        info = json.loads(ready.read_text())
        assert info["pid"] == server.pid
        addr = f"127.0.0.1:{info['port']}"
        client = [sys.executable, str(echo / "client.py"), *common, "--server", addr]
        rejected = subprocess.run([*client, "--token-file", str(tmp_path / "bad"), "--client-ids", "9"], timeout=20)
        assert rejected.returncode == 2
        clients = [subprocess.Popen([*client, "--token-file", str(tmp_path / "token"), "--client-ids", ids])
                   for ids in ("0", "1")]
        assert [c.wait(timeout=20) for c in clients] == [0, 0]
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines if x["type"] == "round"] == [1, 2, 3]
    assert lines[-1]["type"] == "summary" and lines[-1]["status"] == "finished"
    assert lines[0]["sampled"] == [0, 1] and lines[-2]["accuracy"] == 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["rounds_completed"] == 3
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_echo_server_fails_at_the_configured_round(tmp_path):
    echo = REPO / "tests" / "payloads" / "echo"
    (tmp_path / "config.yaml").write_text(json.dumps(
        {"clients": 1, "rounds": 5, "echo_round_s": 0.0, "echo_wait_s": 0, "fail_at_round": 2}))
    (tmp_path / "token").write_text("t\n")
    res = subprocess.run([sys.executable, str(echo / "server.py"), "--config", str(tmp_path / "config.yaml"),
                          "--run-dir", str(tmp_path), "--token-file", str(tmp_path / "token"), "--host", "127.0.0.1"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 1 and "fail_at_round" in res.stdout
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["round", "event"]
    assert not (tmp_path / "summary.json").exists()
