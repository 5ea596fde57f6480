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
    ids = {h.extra["aws.instance_id"] for h in got}
    assert len(ids) == 3 and all(h.address.startswith("10.9.1.") for h in got)
    first_ids = [u.info.extra["aws.instance_id"] for u in log if u.info is not None][:3]
    assert set(first_ids) == ids  # journaled as launched, before the wait

    again = AwsProvider(hs, run=ctx, poll_s=0).acquire(hs)  # a retry adopts what exists
    assert {h.extra["aws.instance_id"] for h in again} == ids
    assert len(p.machines()) == 3

    p.release(got)
    assert p.machines() == [] and p.list() == []
    assert all(m.state == "terminated" for m in p.machines(include_ended=True))
    assert {u.name for u in log if u.released_at} == {h.name for h in hs}
    groups = ec2.describe_security_groups(Filters=[{"Name": "tag:fedctl-run", "Values": ["r1"]}])["SecurityGroups"]
    assert groups == []


def test_hosts_a_corrected_plan_dropped_are_terminated(ec2_mock):
    ec2, subnet, image = ec2_mock
    hs = hosts(subnet, image, n=3)
    ctx = RunContext(run_id="r2", origin="o")
    AwsProvider(hs, run=ctx, poll_s=0).acquire(hs)
    fewer = hs[:2]
    p = AwsProvider(fewer, run=ctx, poll_s=0)
    p.acquire(fewer)
    assert sorted(m.host for m in p.machines()) == sorted(h.name for h in fewer)
