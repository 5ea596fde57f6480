"""start's liveness check: a client that dies at once while the server runs fails start, on real
sshd hosts (the server is asked after the clients, so a tiny run that ended is not a failure)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.integration.test_lifecycle import ECHO, fedctl, project, run_pids, state

pytestmark = pytest.mark.integration


def test_a_client_that_dies_at_once_fails_start_with_its_log(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    payload = tmp_path / "echo-dies"
    shutil.copytree(ECHO, payload)
    manifest = yaml.safe_load((payload / "payload.yaml").read_text())
    manifest["name"] = "echo-dies"
    manifest["client"]["command"] = "{python} -c \"import sys; print('no such module: fl_client'); sys.exit(3)\""
    (payload / "payload.yaml").write_text(yaml.safe_dump(manifest))
    proj = project(tmp_path, fleet, rounds=200, round_s=0.2)
    cfg = yaml.safe_load((proj / "fedctl.yaml").read_text())
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({**cfg, "payload": str(payload)}))
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    res = fedctl(proj, "start")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "client-0 exited" in out and "no such module: fl_client" in out, out
    st = state(proj)
    assert st["phase"] == "failed"
    clients = [p for h in st["hosts"] for p in h["processes"] if p["role"] == "client"]
    assert clients and all(p["status"] == "failed" for p in clients)
    td = fedctl(proj, "teardown", "--yes")
    assert td.returncode == 0, td.stdout + td.stderr
    assert run_pids(st["run_id"]) == []
