"""The first hour of a new user (issue 16 item 6) against real sshd hosts on loopback: fix-and-rerun
of a failed host, progress while a host's set-up runs, set-up kept with a kept env."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from fedctl import hostenv
from fedctl.connectors.ssh import SSHConnector
from fedctl.model import EnvSettings
from fedctl.state import HostRecord
from tests.integration.test_lifecycle import fedctl, project, state


def _set_host(proj: Path, name: str, **settings: object) -> None:
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    next(h for h in inv["hosts"] if h["name"] == name).update(settings)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))


def _hosts(proj: Path) -> dict[str, dict]:
    return {h["info"]["name"]: h for h in state(proj)["hosts"]}


def test_a_failed_host_fixed_in_the_inventory_takes_the_same_provision_again(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet)
    _set_host(proj, "h2", setup=["echo the image lacks a package >&2; exit 3"])
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 3 and _hosts(proj)["h2"]["status"] == "failed", res.stdout + res.stderr
    run_id = state(proj)["run_id"]
    # what the README says to do: fix the host's settings, run the same provision again
    _set_host(proj, "h2", setup=["true"], environment={"PIP_INDEX_URL": "http://127.0.0.1:9/simple"})
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "another address" not in res.stdout + res.stderr
    assert state(proj)["run_id"] == run_id and _hosts(proj)["h2"]["status"] == "provisioned"
    # moving a host that holds a folder of the run is refused, naming what changed
    _set_host(proj, "h2", workdir=str(tmp_path / "elsewhere"))
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    assert res.returncode != 0
    old = fleet.hosts[1].workdir
    assert f"h2 changed workdir '{old}' -> '{tmp_path / 'elsewhere'}'" in res.stderr, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    _set_host(proj, "h2", workdir=str(old))
    fedctl(proj, "teardown", "--yes", check=True)


def test_a_long_setup_shows_its_last_line_while_it_runs(sshd_fleet, known_hosts, tmp_path, monkeypatch):
    fleet = sshd_fleet(1)
    monkeypatch.setattr(hostenv, "PROGRESS_EVERY_S", 0.1)
    go = tmp_path / "go"
    # the command goes on only once fedctl has shown its line (or gives up after ~15 s and fails)
    wait = f"i=0; while [ ! -e {go} ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done; test -e {go}"
    host = dataclasses.replace(fleet.host_infos()[0], python_env=EnvSettings(
        setup=(f"echo 'Downloading tensorflow-2.16.1.whl (589.8 MB)'; {wait}",)))
    shown: list[str] = []

    def progress(line: str) -> None:
        shown.append(line)
        if "Downloading tensorflow" in line:
            go.touch()

    conn = SSHConnector(host, known_hosts=known_hosts)
    try:
        assert hostenv.run_setup(conn, HostRecord(host), host.workdir, progress)
    finally:
        conn.close()
    line = next(s for s in shown if "Downloading" in s)
    assert line.startswith("h1: setup (0m") and line.endswith("): Downloading tensorflow-2.16.1.whl (589.8 MB)")


def test_setup_does_not_run_again_after_a_keep_env_teardown(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet)
    counter = tmp_path / "setup-ran"
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    inv["defaults"].update(setup=[f"echo ran >> {counter}"], keep_env=True)
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    assert counter.read_text().splitlines() == ["ran", "ran"]  # once per host
    fedctl(proj, "teardown", "--yes", check=True)
    kept = [p for h in fleet.hosts for p in Path(h.workdir).glob("envs/setup-*/.done")]
    assert len(kept) == 2, kept
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    assert counter.read_text().splitlines() == ["ran", "ran"]  # found done, not run again
    fedctl(proj, "teardown", "--yes", check=True)


def test_exec_prints_each_long_output_line_once_with_its_prefix(sshd_fleet, tmp_path):
    import os
    import subprocess
    import sys

    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet)
    long_line = "x" * 150 + " " + "y" * 150  # wider than the 80 columns, with a space to break at
    res = subprocess.run(
        [sys.executable, "-m", "fedctl", "exec", "-i", "inventory.yaml", "--",
         f"echo {long_line}; echo short; echo {long_line} >&2"],
        cwd=proj, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for host in ("h1", "h2"):
        assert lines.count(f"{host} | {long_line}") == 1, res.stdout
        assert lines.count(f"{host} ! {long_line}") == 1 and f"{host} | short" in lines, res.stdout
    assert not any(line.startswith(("x", "y")) for line in lines), res.stdout  # no wrapped remainder


def test_resume_before_any_round_says_the_run_starts_again_from_round_1(sshd_fleet, tmp_path):
    import os
    import signal

    from tests.integration.test_lifecycle import gone, run_pids, status_json
    from tests.waiting import wait_until

    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=2, round_s=60)  # round 1 never ends before the kill
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    st = state(proj)
    server = next(p for p in st["hosts"][0]["processes"] if p["role"] == "server")
    os.kill(server["pid"], signal.SIGKILL)
    wait_until(lambda: gone(server["pid"]), 10, what="the killed server to exit")
    wait_until(lambda: status_json(proj)["phase"] == "failed", 30, interval=0.3, what="the run to be seen failed")
    res = fedctl(proj, "start", "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "last checkpoint" not in out
    assert "with --resume: no round had finished, so the run starts again from round 1" in out, out
    fedctl(proj, "teardown", "--yes", check=True)
    assert run_pids(st["run_id"]) == []


def test_a_gpu_server_device_on_a_host_without_a_gpu_is_an_error_naming_key_and_host(sshd_fleet, tmp_path):
    from tests.integration.test_lifecycle import run_pids

    fleet = sshd_fleet(2)  # loopback hosts: nvidia-smi lists no GPU there
    proj = project(tmp_path, fleet, placement={"server_device": "gpu"})
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    res = fedctl(proj, "start")
    assert res.returncode != 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "placement.server_device is gpu, but the server's host h1 has no GPU" in out, out
    assert "Traceback" not in out
    run_id = state(proj)["run_id"]
    assert not any(p.get("pid") for h in state(proj)["hosts"] for p in h["processes"] if p["role"] == "server")
    fedctl(proj, "teardown", "--yes", check=True)
    assert run_pids(run_id) == []


def test_logs_names_a_client_process_by_the_client_ids_it_holds(sshd_fleet, tmp_path):
    import json as _json

    from tests.waiting import wait_until

    fleet = sshd_fleet(3)  # h1 server; h2 holds clients 0-1, h3 clients 2-3
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    wait_until(lambda: _json.loads(fedctl(proj, "status", "--json", check=True).stdout)["phase"] == "finished",
               60, interval=0.3, what="the run to finish")
    procs = {h["info"]["name"]: [p for p in h["processes"] if p["role"] == "client"] for h in state(proj)["hosts"]}
    assert [p["client_ids"] for p in procs["h3"]] == [[2, 3]]
    by_id = fedctl(proj, "logs", "client-03", "-n", "50", check=True).stdout.splitlines()
    by_name = fedctl(proj, "logs", "clients-2-3", "-n", "50", check=True).stdout.splitlines()
    assert by_id == by_name and by_id, by_id
    # the name shown is the one logs takes: the client ids, never the per-host process index
    assert all(line.startswith("h3 clients-2-3 | ") for line in by_id), by_id
    everything = fedctl(proj, "logs", "-n", "50", check=True).stdout
    assert "h2 clients-0-1 | " in everything and " client-0 | " not in everything, everything
    res = fedctl(proj, "logs", "clients-2-9")
    assert res.returncode == 2 and "clients-<first>-<last>" in res.stderr, res.stderr
    fedctl(proj, "teardown", "--yes", check=True)


def test_provision_with_a_wrong_identity_file_names_it_at_once(sshd_fleet, tmp_path):
    import time

    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet)
    wrong = tmp_path / "id_ed25519_typo"
    _set_host(proj, "h2", identity_file=str(wrong))
    t0 = time.monotonic()
    res = fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes")
    out = res.stdout + res.stderr
    assert res.returncode == 3, out
    h2 = _hosts(proj)["h2"]
    assert h2["status"] == "failed" and f"identity_file {wrong} does not exist" in h2["error"], h2
    assert "attempt" not in h2["error"] and "Traceback" not in out
    assert time.monotonic() - t0 < 30  # no backoff: one look at the file
    # fixed in the inventory, the same provision goes on (the key is how to log in, not which host)
    _set_host(proj, "h2", identity_file=fleet.identity_file)
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "teardown", "--yes", check=True)
