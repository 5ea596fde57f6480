"""The aws provider end to end: moto's EC2 server on 127.0.0.1, loopback sshd hosts where moto puts
the instances (127.0.200.4, .5, ...), and fedctl as a real subprocess, as a user runs it.

Nothing here talks to anything outside 127.0.0.0/8 (see ``moto_server.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.integration.moto_server import FAKE_KEY_ID, FAKE_SECRET, FIRST_HOST, MotoEc2, free_shared_port, moto_ec2  # noqa: F401
from tests.integration.sshd import SshdFleet, sshd_available
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"
NETWORK = "127.0.200"


def fedctl(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})


def start_fedctl(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedctl", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})


def project(tmp_path: Path, moto: MotoEc2, ssh_port: int, identity: str, user: str, name: str = "proj",
            client_instances: int = 3, rounds: int = 3) -> Path:
    proj = tmp_path / name
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO), "rounds": rounds, "echo_round_s": 0.2}))
    (proj / "aws.yaml").write_text(yaml.safe_dump({
        "provider": "aws",
        "aws": {"region": moto.region, "instance_type": "g4dn.xlarge", "server_instance_type": "t3.medium",
                "client_instances": client_instances, "image": moto.image, "subnet": moto.subnet,
                "address": "private", "endpoint_url": moto.url, "tags": {"project": "fedctl-tests"},
                "boot_timeout_s": 60},
        "defaults": {"user": user, "port": ssh_port, "identity_file": identity, "python": sys.executable,
                     "workdir": "~/fedctl", "host_key_policy": "accept-new"},
    }, sort_keys=False))
    return proj


def loopback_hosts(tmp_path: Path, n: int, port: int) -> SshdFleet:
    """``n`` sshd hosts on 127.0.200.4.. (where moto puts the instances), one port, one home each."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    return SshdFleet(tmp_path / "sshd", n, first_address=FIRST_HOST, network=NETWORK, port=port, own_home=True)


def read_state(proj: Path) -> dict:
    return json.loads((proj / ".fedctl" / "state.json").read_text())


def archived_state(proj: Path, run_id: str) -> dict:
    return json.loads((proj / ".fedctl" / "runs" / run_id / "state.json").read_text())


def addresses(n: int) -> list[str]:
    return [f"{NETWORK}.{FIRST_HOST + i}" for i in range(n)]


def test_run_creates_instances_runs_and_destroys_them(moto_ec2, tmp_path):
    port = free_shared_port(addresses(4))
    hosts = loopback_hosts(tmp_path, 4, port)  # 1 server + 3 client instances for 6 clients
    with hosts:
        # enough rounds that the clients still run when start checks them on a loaded machine
        proj = project(tmp_path, moto_ec2, port, hosts.identity_file, hosts.user, rounds=10)
        res = fedctl(proj, "run", "--clients", "6", "-i", "aws.yaml", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        run_id = next(p.name for p in (proj / ".fedctl" / "runs").iterdir())
        st = archived_state(proj, run_id)
        assert st["phase"] == "torn_down"

        # every instance of the run was created, tagged, self-destructing, and is terminated now
        inst = moto_ec2.instances(run_id)
        assert len(inst) == 4 and moto_ec2.billed(run_id) == []
        assert {i["State"]["Name"] for i in inst} == {"terminated"}
        tags = [{t["Key"]: t["Value"] for t in i["Tags"]} for i in inst]
        assert sorted(t["fedctl-host"] for t in tags) == ["fl-client-01", "fl-client-02", "fl-client-03", "fl-server"]
        assert all(t["project"] == "fedctl-tests" for t in tags)
        assert sorted(i["InstanceType"] for i in inst) == ["g4dn.xlarge"] * 3 + ["t3.medium"]
        ec2 = moto_ec2.client()
        attr = ec2.describe_instance_attribute(InstanceId=inst[0]["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        udata = ec2.describe_instance_attribute(InstanceId=inst[0]["InstanceId"], Attribute="userData")
        import base64

        assert "shutdown -h +" in base64.b64decode(udata["UserData"]["Value"]).decode()
        assert moto_ec2.groups(run_id) == []  # the security group it created is gone

        # the state recorded the ids and the API's launch times; cost has them
        ids = {h["info"]["machine"]["id"] for h in st["hosts"]}
        assert ids == {i["InstanceId"] for i in inst}
        launched = {i["InstanceId"]: i["LaunchTime"].timestamp() for i in inst}
        for h in st["hosts"]:
            assert abs(h["acquired_at"] - launched[h["info"]["machine"]["id"]]) < 1.0
            assert h["released_at"] is not None and h["released_at"] >= h["acquired_at"] - 1.0
        assert (proj / "results" / run_id).is_dir()

        # no credential value anywhere fedctl wrote or printed (hosts included)
        leaks = []
        for where in [proj / ".fedctl", proj / "results", *[h.dir for h in hosts.hosts]]:
            for f in where.rglob("*"):
                if f.is_file():
                    data = f.read_bytes()
                    if FAKE_KEY_ID.encode() in data or FAKE_SECRET.encode() in data:
                        leaks.append(str(f))
        listing = fedctl(proj, "instances", "-i", "aws.yaml", "--all")
        for text in (res.stdout, res.stderr, listing.stdout, listing.stderr):
            assert FAKE_KEY_ID not in text and FAKE_SECRET not in text
        assert leaks == []
        assert listing.returncode == 0 and run_id in listing.stdout and "terminated" in listing.stdout


def _kill_provision_when(proj: Path, point: Callable[[], bool]) -> None:
    proc = start_fedctl(proj, "provision", "--clients", "4", "-i", "aws.yaml", "--yes")
    try:
        wait_until(lambda: point() or proc.poll() is not None, 60, interval=0.01, what="the crash point")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)


def test_sigkill_during_provision_then_teardown_leaves_nothing(moto_ec2, tmp_path):
    """No sshd answers here, so provision sits in create and wait-for-SSH until it is killed; it is
    killed at each crash point of docs/aws.md's table in turn."""
    def crash_points(proj: Path, before: int) -> dict[str, Callable[[], bool]]:
        return {
            "state": lambda: (proj / ".fedctl" / "state.json").exists(),
            "group": lambda: bool(moto_ec2.groups()),
            "first instance": lambda: len(moto_ec2.instances()) > before,
            "all instances": lambda: len(moto_ec2.instances()) >= before + 3,
        }

    created = 0
    for name in ("state", "group", "first instance", "all instances"):
        proj = project(tmp_path, moto_ec2, 22022, str(tmp_path / "no-key"), "nobody", name=f"kill-{name.replace(' ', '-')}")
        before = len(moto_ec2.instances())
        _kill_provision_when(proj, crash_points(proj, before)[name])
        created += len(moto_ec2.instances()) - before
        if (proj / ".fedctl" / "state.json").exists():
            res = fedctl(proj, "teardown", "--yes")
            assert res.returncode == 0, res.stdout + res.stderr
        assert moto_ec2.billed() == [], f"after a kill at {name}"
        assert moto_ec2.groups() == [], f"after a kill at {name}"
    assert created > 0  # at least one kill landed after instances existed


def test_retried_provision_adopts_instead_of_creating_twice(moto_ec2, tmp_path):
    port = free_shared_port(addresses(3))
    proj = project(tmp_path, moto_ec2, port, str(tmp_path / "sshd" / "id_ed25519"), "nobody", client_instances=2)
    proc = start_fedctl(proj, "provision", "--clients", "2", "-i", "aws.yaml", "--yes")
    wait_until(lambda: len(moto_ec2.billed()) >= 3, 30, what="the three instances")
    proc.send_signal(signal.SIGKILL)  # in the wait for SSH: the instances exist, nothing answers
    proc.communicate(timeout=10)
    first = sorted(moto_ec2.billed())
    assert len(first) == 3
    hosts = loopback_hosts(tmp_path, 3, port)
    proj_inv = yaml.safe_load((proj / "aws.yaml").read_text())
    proj_inv["defaults"]["user"], proj_inv["defaults"]["identity_file"] = hosts.user, hosts.identity_file
    (proj / "aws.yaml").write_text(yaml.safe_dump(proj_inv))
    with hosts:
        res = fedctl(proj, "provision", "--clients", "2", "-i", "aws.yaml", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
        assert sorted(moto_ec2.billed()) == first  # adopted, none created twice
        assert "adopting" in res.stderr
        res = fedctl(proj, "teardown", "--yes")
        assert res.returncode == 0, res.stdout + res.stderr
    assert moto_ec2.billed() == [] and moto_ec2.groups() == []


def test_orphans_are_listed_and_swept(moto_ec2, tmp_path):
    proj = project(tmp_path, moto_ec2, 22022, str(tmp_path / "no-key"), "nobody", client_instances=2)
    proc = start_fedctl(proj, "provision", "--clients", "2", "-i", "aws.yaml", "--yes")
    wait_until(lambda: len(moto_ec2.billed()) >= 3, 30, what="the three instances")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    run_id = read_state(proj)["run_id"]
    shutil.rmtree(proj / ".fedctl")  # the state is gone: the instances are orphans now
    # an instance another folder started: listed, never swept without --any-folder
    foreign = moto_ec2.client().run_instances(
        ImageId=moto_ec2.image, MinCount=1, MaxCount=1, SubnetId=moto_ec2.subnet, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "fedctl-run", "Value": "elsewhere-run"},
                                                 {"Key": "fedctl-origin", "Value": "0123456789abcdef"}]}],
    )["Instances"][0]["InstanceId"]

    listing = fedctl(proj, "instances", "-i", "aws.yaml", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["instances"]
    whose = {r["id"]: r["whose"] for r in rows}
    assert [w for i, w in whose.items() if i != foreign] == ["orphan"] * 3 and whose[foreign] == "other folder"
    assert "orphan" in fedctl(proj, "instances", "-i", "aws.yaml").stdout

    declined = fedctl(proj, "instances", "-i", "aws.yaml", "--sweep")  # no terminal, no --yes: refused
    assert declined.returncode == 2 and len(moto_ec2.billed(run_id)) == 3
    swept = fedctl(proj, "instances", "-i", "aws.yaml", "--sweep", "--yes")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert moto_ec2.billed(run_id) == [] and moto_ec2.groups(run_id) == []
    assert moto_ec2.billed() == [foreign]
