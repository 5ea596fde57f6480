"""The aws inventory section, prices, the self-destruct timer and the launch token: pure, no network."""

from __future__ import annotations

import datetime as dt

import pytest

from fedctl.config.inventory import load_inventory
from fedctl.errors import ConfigError
from fedctl.providers import aws_ec2
from fedctl.providers.aws import client_token, lifetime_minutes, user_data
from fedctl.providers.aws_orphans import ORPHAN, OTHER_FOLDER, THIS_RUN, classify
from fedctl.providers.aws_prices import price_of
from fedctl.providers.base import Machine

BASE = """provider: aws
aws:
  region: us-east-1
  instance_type: g4dn.xlarge
  image: ami-0123456789abcdef0
"""


def inv(tmp_path, text: str):
    p = tmp_path / "aws.yaml"
    p.write_text(text)
    return load_inventory(str(p))


def err(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        inv(tmp_path, text)
    return e.value


def test_hosts_are_a_server_and_client_slots_with_prices(tmp_path):
    i = inv(tmp_path, BASE + "  server_instance_type: t3.large\n  client_instances: 3\n  prices: {t3.large: 0.1}\n"
            "defaults: {user: ubuntu, identity_file: ~/.ssh/id}\n")
    assert i.provider == "aws"
    assert [h.name for h in i.hosts] == ["fl-server", "fl-client-01", "fl-client-02", "fl-client-03"]
    assert [h.roles for h in i.hosts] == [("server",)] + [("client",)] * 3
    assert [h.price_per_hour for h in i.hosts] == [0.1, 0.526, 0.526, 0.526]
    assert i.hosts[0].provider_settings.instance_type == "t3.large"
    assert i.hosts[1].provider_settings.instance_type == "g4dn.xlarge"
    assert all(h.user == "ubuntu" and h.identity_file == "~/.ssh/id" for h in i.hosts)
    assert i.hosts[0].address == "(new t3.large)"  # the provider fills it in


def test_image_name_filter_and_defaults(tmp_path):
    i = inv(tmp_path, BASE.replace("ami-0123456789abcdef0", "{name: 'Deep Learning*'}"))
    s = i.hosts[0].provider_settings
    assert (s.image, s.image_owner) == ("Deep Learning*", "amazon")
    assert s.address == "public" and s.spot is False
    assert len(i.hosts) == 11  # 1 server + 10 client slots by default


@pytest.mark.parametrize("extra, key_path", [
    ("  regoin: x\n", "aws.regoin"),
    ("  address: both\n", "aws.address"),
    ("  subnet: net-1\n", "aws.subnet"),
    ("  spot: yes-please\n", "aws.spot"),
    ("  tags: {fedctl-run: x}\n", "aws.tags.fedctl-run"),
    ("  ssh_cidr: everywhere\n", "aws.ssh_cidr"),
    ("  client_instances: 0\n", "aws.client_instances"),
    ("  endpoint_url: localhost:5000\n", "aws.endpoint_url"),
])
def test_bad_values_name_the_key_path(tmp_path, extra, key_path):
    assert err(tmp_path, BASE + extra).key_path == key_path


def test_section_rules(tmp_path):
    assert err(tmp_path, "provider: aws\n").key_path == "aws"
    assert err(tmp_path, BASE.replace("  image: ami-0123456789abcdef0\n", "")).key_path == "aws.image"
    assert err(tmp_path, BASE + "hosts: [{name: a, address: b}]\n").key_path == "hosts"
    assert err(tmp_path, "provider: static\nhosts: [{name: a, address: b}]\naws: {}\n").key_path == "aws"
    e = err(tmp_path, BASE + "defaults: {price_per_hour: 1}\n")
    assert "aws.prices" in str(e)
    assert "regoin" not in str(err(tmp_path, BASE + "  regoin: x\n").valid or "") and "region" in err(tmp_path, BASE + "  regoin: x\n").valid


def test_prices_override_and_unknown_types():
    assert price_of("g4dn.xlarge") == 0.526
    assert price_of("g4dn.xlarge", {"g4dn.xlarge": 0.2}) == 0.2
    assert price_of("x9.mega") is None  # unpriced, not guessed


def test_lifetime_follows_the_budget_with_a_margin():
    assert lifetime_minutes(None) == 24 * 60
    assert lifetime_minutes(2.0) == 2 * 60 * 1.1 + 30
    assert lifetime_minutes(2.0, explicit_h=1.0) == 60
    assert lifetime_minutes(None, explicit_h=0.01) == 10  # never a timer that fires before the host is even set up
    script = user_data("r1", 90)
    assert script.startswith("#!/bin/sh\n") and "shutdown -h +90" in script


def test_client_token_is_stable_per_run_host_and_parameters():
    a = client_token("r1", "fl-server", {"InstanceType": "t3.large"})
    assert a == client_token("r1", "fl-server", {"InstanceType": "t3.large"})
    assert a != client_token("r2", "fl-server", {"InstanceType": "t3.large"})
    assert a != client_token("r1", "fl-client-01", {"InstanceType": "t3.large"})
    assert a != client_token("r1", "fl-server", {"InstanceType": "t3.xlarge"})
    assert len(a) <= 64


def test_machine_from_reads_tags_and_the_termination_time():
    m = aws_ec2.machine_from({
        "InstanceId": "i-1", "State": {"Name": "terminated"}, "InstanceType": "t3.large",
        "LaunchTime": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "StateTransitionReason": "User initiated (2026-01-02 04:04:05 GMT)",
        "Tags": [{"Key": "fedctl-run", "Value": "r1"}, {"Key": "fedctl-host", "Value": "fl-server"}],
    })
    assert (m.run_id, m.host, m.billed) == ("r1", "fl-server", False)
    assert m.ended_at - m.launched_at == 3600


def test_classify_tells_this_run_orphans_and_other_folders():
    def mk(i, run, origin):
        return Machine(id=i, state="running", run_id=run, host="h", origin=origin)
    rows = classify([mk("a", "r1", "me"), mk("b", "r0", "me"), mk("c", "r9", "else")], active="r1", origin="me")
    assert [r.whose for r in rows] == [THIS_RUN, ORPHAN, OTHER_FOLDER]
    assert [r.whose for r in classify([mk("a", "r1", "me")], active=None, origin="me")] == [ORPHAN]


def test_cli_does_not_import_boto3():
    import subprocess
    import sys

    code = "import sys, fedctl.cli.app; print('boto3' in sys.modules or 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
