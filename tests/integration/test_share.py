"""``server.share``: files the server writes before it is ready reach every client host through
fedctl's own SSH connections (the Flower payload's run CA certificate travels this way), on real
sshd hosts."""

from __future__ import annotations

import shutil

import pytest
import yaml

from fedctl.errors import ConfigError
from fedctl.payload import load_manifest
from tests.integration.test_lifecycle import ECHO, fedctl, project, state

pytestmark = pytest.mark.integration


def _echo_sharing(tmp_path, share):
    """A copy of the echo payload whose manifest shares ``share``."""
    dest = tmp_path / "echo-share"
    shutil.copytree(ECHO, dest)
    manifest = yaml.safe_load((dest / "payload.yaml").read_text())
    manifest["name"] = "echo-share"
    manifest["server"]["share"] = share
    (dest / "payload.yaml").write_text(yaml.safe_dump(manifest))
    return dest


def test_shared_files_reach_every_client_host_before_the_clients_start(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    payload = _echo_sharing(tmp_path, ["{run_dir}/server.ready", "{run_dir}/never-written.pem"])
    proj = project(tmp_path, fleet, rounds=3, round_s=0.2)
    cfg = yaml.safe_load((proj / "fedctl.yaml").read_text())
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({**cfg, "payload": str(payload)}))
    fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    run_id = state(proj)["run_id"]
    server_copy = (fleet.hosts[0].workdir / "runs" / run_id / "server.ready").read_bytes()
    for host in fleet.hosts[1:]:
        run_dir = host.workdir / "runs" / run_id
        assert (run_dir / "server.ready").read_bytes() == server_copy
        assert oct((run_dir / "server.ready").stat().st_mode & 0o777) == "0o644"
        assert not (run_dir / "never-written.pem").exists()  # nothing written: nothing shared
    td = fedctl(proj, "teardown", "--yes")
    assert td.returncode == 0, td.stdout + td.stderr


@pytest.mark.parametrize("bad", ["/etc/passwd", "{run_dir}/../x", "{run_dir}/a/b", "{payload_dir}/x", "{run_dir}/"])
def test_a_shared_file_must_be_a_plain_name_in_the_run_dir(tmp_path, bad):
    with pytest.raises(ConfigError) as e:
        load_manifest(_echo_sharing(tmp_path, [bad]))
    assert "server.share[0]" in str(e.value) and "must be {run_dir}/<a plain file name>" in str(e.value)


def test_a_manifest_that_shares_files_keeps_its_own_name(tmp_path):
    manifest = load_manifest(_echo_sharing(tmp_path, ["{run_dir}/server.ready"]))
    assert manifest.name == "echo-share" and manifest.server.share == ("{run_dir}/server.ready",)
