"""Never touch another run's or another folder's cloud machines, never leave ours billing.

Against moto's EC2 server on 127.0.0.1 (VPC 127.0.0.0/16, subnet 127.0.200.0/24: nothing leaves
127.0.0.0/8), with fedctl run as the installed console script, as a user runs it. Machines "of
another origin" are made here with boto3 and tagged as another folder's fedctl would tag them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedctl.providers.base import folder_origin
from tests.integration.moto_server import MotoEc2, moto_ec2  # noqa: F401
from tests.integration.test_aws import project
from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
STRANGER = "0123456789abcdef"  # another folder's fedctl-origin


def fedctl(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([FEDCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200", **(env or {})})


def origin_of(proj: Path) -> str:
    """The fedctl-origin tag fedctl puts on what it creates from ``proj`` (cwd is the real path)."""
    return folder_origin(Path(os.path.realpath(proj)) / ".fedctl")


def launch(moto: MotoEc2, run: str, origin: str, host: str = "fl-client-01") -> str:
    """An instance tagged as fedctl tags its own (run, origin, host)."""
    tags = [{"Key": "fedctl-run", "Value": run}, {"Key": "fedctl-origin", "Value": origin},
            {"Key": "fedctl-host", "Value": host}]
    return moto.client().run_instances(ImageId=moto.image, MinCount=1, MaxCount=1, SubnetId=moto.subnet,
                                       TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                                       )["Instances"][0]["InstanceId"]


def group(moto: MotoEc2, run: str, origin: str) -> str:
    """A security group tagged as fedctl tags a run's group."""
    return moto.client().create_security_group(
        GroupName=f"fedctl-{run}", Description="test", VpcId=moto.vpc, TagSpecifications=[{
            "ResourceType": "security-group", "Tags": [{"Key": "fedctl-run", "Value": run},
                                                       {"Key": "fedctl-origin", "Value": origin}]}])["GroupId"]


def state_of(moto: MotoEc2, iid: str) -> str:
    res = moto.client().describe_instances(InstanceIds=[iid])["Reservations"]
    return str(res[0]["Instances"][0]["State"]["Name"])


def groups(moto: MotoEc2) -> set[str]:
    return {g["GroupId"] for g in moto.client().describe_security_groups()["SecurityGroups"]}


def whose(proj: Path) -> dict[str, str]:
    res = fedctl(proj, "instances", "-i", "aws.yaml", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return {r["id"]: r["whose"] for r in json.loads(res.stdout)["instances"]}


def new_project(tmp_path: Path, moto: MotoEc2, **kw: Any) -> Path:
    return project(tmp_path, moto, 22022, str(tmp_path / "no-key"), "nobody", **kw)


def test_sweep_terminates_exactly_the_orphans_it_listed(moto_ec2, tmp_path):
    proj = new_project(tmp_path, moto_ec2)
    me = origin_of(proj)
    orphan = launch(moto_ec2, "r-gone", me)
    same_run_elsewhere = launch(moto_ec2, "r-gone", STRANGER)  # another folder, the same run tag
    my_group = group(moto_ec2, "r-gone", me)
    # a leftover group of this folder whose run tag another origin's live instance carries
    stranger_run = launch(moto_ec2, "r-shared", STRANGER)
    shared_group = group(moto_ec2, "r-shared", me)
    unused_group = group(moto_ec2, "r-old", me)  # a leftover group no instance uses
    assert whose(proj) == {orphan: "orphan", same_run_elsewhere: "other folder", stranger_run: "other folder"}

    swept = fedctl(proj, "instances", "-i", "aws.yaml", "--sweep", "--yes", "--json")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert json.loads(swept.stdout)["swept"] == [orphan]
    assert state_of(moto_ec2, orphan) == "terminated"
    assert state_of(moto_ec2, same_run_elsewhere) == "running"
    assert state_of(moto_ec2, stranger_run) == "running"
    left = groups(moto_ec2)
    assert my_group in left and shared_group in left  # their run tags are on live instances elsewhere
    assert unused_group not in left


def test_sweep_rechecks_tags_just_before_terminating(moto_ec2, tmp_path):
    """Listed as an orphan, re-tagged by someone before the call: left alone, and said so."""
    from fedctl.config.inventory import load_inventory
    from fedctl.providers.aws import AwsProvider
    from fedctl.providers.base import Machine

    proj = new_project(tmp_path, moto_ec2)
    me = origin_of(proj)
    stays, goes = launch(moto_ec2, "r1", me), launch(moto_ec2, "r1", me)
    said: list[str] = []
    provider = AwsProvider(hosts=list(load_inventory(str(proj / "aws.yaml")).hosts), progress=said.append, poll_s=0.1)
    listed = [m for m in provider.machines(all_runs=True) if m.id in (stays, goes)]
    assert sorted(m.id for m in listed) == sorted([stays, goes]) and all(isinstance(m, Machine) for m in listed)
    moto_ec2.client().create_tags(Resources=[stays], Tags=[{"Key": "fedctl-origin", "Value": STRANGER}])
    assert provider.sweep(listed, [], {me}) == [goes]
    assert state_of(moto_ec2, stays) == "running" and state_of(moto_ec2, goes) == "terminated"
    assert stays in provider.refused and any(stays in s and "not terminating" in s for s in said)


def _provision_then_kill(proj: Path, moto: MotoEc2, n: int, billed: int) -> None:
    """Provision until the ``n`` instances of this project have their ids journaled (``billed``
    instances bill in all), then SIGKILL fedctl (no sshd answers, so it waits for SSH until then)."""
    proc = subprocess.Popen([FEDCTL, "provision", "--clients", "2", "-i", "aws.yaml", "--yes"], cwd=proj,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(moto.billed()) >= billed, 60, what=f"{n} instances of the provision")
        wait_until(lambda: (proj / ".fedctl" / "state.json").exists() and sum(
            1 for h in json.loads((proj / ".fedctl" / "state.json").read_text())["hosts"]
            if (h["info"]["machine"] or {}).get("id")) == n, 30, what="the ids journaled")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_teardown_refuses_a_recorded_instance_of_another_run(moto_ec2, tmp_path):
    proj = new_project(tmp_path, moto_ec2, client_instances=2)
    foreign = launch(moto_ec2, "someone-elses-run", STRANGER)
    _provision_then_kill(proj, moto_ec2, 3, billed=4)  # 1 server + 2 clients, and the foreign one
    path = proj / ".fedctl" / "state.json"
    st = json.loads(path.read_text())
    mine = [h["info"]["machine"]["id"] for h in st["hosts"]]
    st["hosts"][1]["info"]["machine"]["id"] = foreign  # an edited (or stale) state
    path.write_text(json.dumps(st))

    td = fedctl(proj, "teardown", "--yes")
    assert td.returncode == 0, td.stdout + td.stderr
    assert f"refusing to terminate {foreign}" in td.stderr and "someone-elses-run" in td.stderr
    assert state_of(moto_ec2, foreign) == "running"
    assert [state_of(moto_ec2, i) for i in mine] == ["terminated"] * 3  # found by their tags
    assert moto_ec2.billed() == [foreign]


def test_unreadable_state_makes_this_folders_instances_unknown_and_sweep_refuses(moto_ec2, tmp_path):
    proj = new_project(tmp_path, moto_ec2)
    live = launch(moto_ec2, "r-live", origin_of(proj))
    (proj / ".fedctl").mkdir()
    (proj / ".fedctl" / "state.json").write_text(json.dumps({"version": 999, "run_id": "r-live"}))  # a newer fedctl's

    assert whose(proj) == {live: "unknown (state unreadable)"}
    shown = fedctl(proj, "instances", "-i", "aws.yaml")
    assert shown.returncode == 0 and "--sweep" not in shown.stderr and "cannot be read" in shown.stderr

    refused = fedctl(proj, "instances", "-i", "aws.yaml", "--sweep", "--yes")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert live in refused.stderr and "--any-folder" in refused.stderr
    assert state_of(moto_ec2, live) == "running"

    forced = fedctl(proj, "instances", "-i", "aws.yaml", "--sweep", "--any-folder", "--yes")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert state_of(moto_ec2, live) == "terminated"


def test_provision_failing_inside_run_terminates_what_it_created(moto_ec2, tmp_path):
    """No sshd answers at the instances' addresses: provision fails after the instances exist."""
    proj = new_project(tmp_path, moto_ec2, client_instances=2)
    inv = yaml.safe_load((proj / "aws.yaml").read_text())
    inv["aws"]["boot_timeout_s"] = 10
    (proj / "aws.yaml").write_text(yaml.safe_dump(inv))

    res = fedctl(proj, "run", "--clients", "2", "-i", "aws.yaml", "--yes")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "terminating the machines it created" in res.stderr
    assert len(moto_ec2.instances()) == 3  # they were created...
    assert moto_ec2.billed() == [] and moto_ec2.groups() == []  # ...and none bills any more
    st = json.loads((proj / ".fedctl" / "state.json").read_text())
    assert st["phase"] == "torn_down"


def test_a_missing_boto3_says_exactly_what_to_install(tmp_path):
    """boto3 absent (a package on the path that fails to import, as a missing one does)."""
    shadow = tmp_path / "shadow" / "boto3"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named boto3', name='boto3')\n")
    env = {"PYTHONPATH": str(shadow.parent), "AWS_EC2_METADATA_DISABLED": "true"}
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "aws.yaml").write_text(yaml.safe_dump({
        "provider": "aws", "aws": {"region": "us-east-1", "instance_type": "t3.large", "image": "ami-12345678",
                                   "endpoint_url": "http://127.0.0.1:9", "address": "private"}}))
    res = fedctl(proj, "run", "--clients", "2", "-i", "aws.yaml", "--yes", env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'pip install "fedctl-fl[aws]"' in res.stderr and "Traceback" not in res.stderr
    td = fedctl(proj, "teardown", "--yes", env=env)
    assert td.returncode == 2 and 'pip install "fedctl-fl[aws]"' in td.stderr


def test_ctrl_c_during_provision_inside_run_terminates_what_it_created(moto_ec2, tmp_path):
    """Ctrl-C while `fedctl run` waits for SSH on the instances it made: exit 130, nothing bills."""
    proj = new_project(tmp_path, moto_ec2, client_instances=2)
    proc = subprocess.Popen([FEDCTL, "run", "--clients", "2", "-i", "aws.yaml", "--yes"], cwd=proj,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(moto_ec2.billed()) >= 3, 60, what="the run's three instances")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "terminating the machines it created" in err
    assert moto_ec2.billed() == [] and moto_ec2.groups() == []
