"""The aws provider against moto's in-process EC2 mock (no sockets): journal, adopt, release."""

from __future__ import annotations

import pytest

pytest.importorskip("moto")
pytest.importorskip("boto3")

from moto import mock_aws  # noqa: E402

from fedctl.config.inventory import parse_inventory  # noqa: E402
from fedctl.providers.aws import AwsProvider  # noqa: E402
from fedctl.providers.base import HostUpdate, RunContext  # noqa: E402


@pytest.fixture
def ec2_mock(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr("fedctl.providers.aws._ssh_banner", lambda *a, **k: True)
    with mock_aws():
        import boto3

        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        yield ec2, subnet, image


def hosts(subnet: str, image: str, n: int = 2):
    raw = {"provider": "aws", "aws": {"region": "us-east-1", "instance_type": "t3.large", "image": image,
                                      "subnet": subnet, "address": "private", "client_instances": n}}
    return list(parse_inventory(raw, "aws.yaml").hosts)


def test_acquire_journals_ids_adopts_on_retry_and_release_ends_everything(ec2_mock):
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image)
    log: list[HostUpdate] = []
    ctx = RunContext(run_id="r1", origin="o", journal=log.append, max_hours=1.0)
    p = AwsProvider(hs, run=ctx, poll_s=0)
    got = p.acquire(hs)
    ids = {h.machine.id for h in got}
    assert len(ids) == 3 and all(h.address.startswith("10.9.1.") for h in got)
    first_ids = [u.info.machine.id for u in log if u.info is not None and u.info.machine.id][:3]
    assert set(first_ids) == ids  # journaled as launched, before the wait
    # each create was journaled as an intent (no id yet) before it ran
    for h in hs:
        mine = [u.info.machine for u in log if u.info is not None and u.name == h.name]
        first_id = next(i for i, m in enumerate(mine) if m.id)
        assert any(m.intent == "create" and m.id is None for m in mine[:first_id])

    again = AwsProvider(hs, run=ctx, poll_s=0).acquire(hs)  # a retry adopts what exists
    assert {h.machine.id for h in again} == ids
    assert len(p.machines()) == 3

    p.release(got)
    assert p.machines() == []
    assert all(m.state == "terminated" for m in p.machines(include_ended=True))
    assert {u.name for u in log if u.released_at} == {h.name for h in hs}
    groups = ec2.describe_security_groups(Filters=[{"Name": "tag:fedctl-run", "Values": ["r1"]}])["SecurityGroups"]
    assert groups == []
    AwsProvider(hs, run=ctx, poll_s=0).release(got)  # a second release (a teardown run again) is harmless
    assert p.machines() == [] and all(u.info.machine.done[-1] == "terminate" for u in log[-3:])


def test_hosts_a_corrected_plan_dropped_are_terminated(ec2_mock):
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=3)
    ctx = RunContext(run_id="r2", origin="o")
    AwsProvider(hs, run=ctx, poll_s=0).acquire(hs)
    fewer = hs[:2]
    p = AwsProvider(fewer, run=ctx, poll_s=0)
    p.acquire(fewer)
    assert sorted(m.host for m in p.machines()) == sorted(h.name for h in fewer)


def _foreign(ec2, image, subnet, run, origin, host="fl-server"):
    tags = [{"Key": "fedctl-run", "Value": run}, {"Key": "fedctl-origin", "Value": origin},
            {"Key": "fedctl-host", "Value": host}]
    return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, TagSpecifications=[
        {"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]


def _state(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_another_origins_instance_with_our_run_tag_is_neither_adopted_nor_terminated(ec2_mock):
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=1)
    other = _foreign(ec2, image, subnet, "r3", "someone-else")
    said: list[str] = []
    p = AwsProvider(hs, run=RunContext(run_id="r3", origin="o", progress=said.append), poll_s=0)
    got = p.acquire(hs)
    assert other not in {h.machine.id for h in got}  # launched its own, not adopted
    assert all(h.machine.origin == "o" for h in got)  # the origin is recorded with the id
    assert _state(ec2, other) == "running"
    p.release(got)
    assert _state(ec2, other) == "running" and p.machines() == []
    assert any(other in s and "refusing" in s for s in said)
    # the run's group stays while the other origin's instance carries the run tag
    assert ec2.describe_security_groups(Filters=[{"Name": "tag:fedctl-run", "Values": ["r3"]}])["SecurityGroups"]


def test_release_refuses_a_recorded_id_of_another_run(ec2_mock):
    import dataclasses

    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=1)
    stranger = _foreign(ec2, image, subnet, "not-ours", "o")
    said: list[str] = []
    p = AwsProvider(hs, run=RunContext(run_id="r4", origin="o", progress=said.append), poll_s=0)
    got = p.acquire(hs)
    edited = [dataclasses.replace(got[0], machine=dataclasses.replace(got[0].machine, id=stranger)), *got[1:]]
    p.release(edited)
    assert _state(ec2, stranger) == "running"
    assert all(_state(ec2, h.machine.id) == "terminated" for h in got)  # found by tag
    assert any(f"refusing to terminate {stranger}" in s and "not-ours" in s for s in said)


def test_classify_marks_this_folders_machines_unknown_when_the_state_is_unreadable():
    from fedctl.providers.aws_orphans import OTHER_FOLDER, UNKNOWN, classify
    from fedctl.providers.base import Machine

    rows = classify([Machine("a", "running", "r1", "h", "me"), Machine("b", "running", "r2", "h", "else")],
                    active=None, origin="me", unreadable=True)
    assert [r.whose for r in rows] == [UNKNOWN, OTHER_FOLDER]


def test_a_host_whose_instance_ended_gets_a_new_launch_token(ec2_mock, monkeypatch):
    """EC2 answers a known client token with the instance it launched, even a terminated one, so a
    retry after a spot reclaim must launch with another token (moto ignores tokens: spy on them)."""
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=1)
    tokens: list[tuple[str, str]] = []
    p = AwsProvider(hs, run=RunContext(run_id="r5", origin="o"), poll_s=0)
    real = p.ec2.run_instances

    def spy(**kw):
        host = next(t["Value"] for t in kw["TagSpecifications"][0]["Tags"] if t["Key"] == "fedctl-host")
        tokens.append((host, kw["ClientToken"]))
        return real(**kw)

    monkeypatch.setattr(p.ec2, "run_instances", spy)
    got = p.acquire(hs)
    ec2.terminate_instances(InstanceIds=[got[0].machine.id])  # reclaimed behind fedctl's back
    again = p.acquire(hs)
    assert again[0].machine.id != got[0].machine.id
    server = [t for h, t in tokens if h == "fl-server"]
    assert len(server) == 2 and server[0] != server[1]
    p.release(again)


def test_a_security_group_left_without_rules_by_a_crash_gets_them_on_the_retry(ec2_mock):
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=1)
    vpc = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    # killed between CreateSecurityGroup and AuthorizeSecurityGroupIngress: a group that lets nothing in
    gid = ec2.create_security_group(GroupName="fedctl-r6", VpcId=vpc, Description="x")["GroupId"]
    AwsProvider(hs, run=RunContext(run_id="r6", origin="o"), poll_s=0).open_network(hs)
    perms = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"]
    assert {(p["FromPort"], p["ToPort"]) for p in perms} == {(22, 22), (0, 65535)}
    AwsProvider(hs, run=RunContext(run_id="r6", origin="o"), poll_s=0).open_network(hs)  # again: harmless
    again = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"]
    assert len(again) == len(perms)
