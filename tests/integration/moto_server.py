"""A moto EC2 server on 127.0.0.1 for the aws provider's tests, started and stopped by a fixture.

The tests never send traffic outside 127.0.0.0/8: the server listens on 127.0.0.1, the VPC is
127.0.0.0/16 and the subnet 127.0.200.0/24, so moto gives instances 127.0.200.4, .5, ... where
loopback sshd hosts answer (``SshdFleet(network="127.0.200", first_address=4)``); inventories use
``address: private``. Credentials are fake values in the environment (boto3's chain), which the
tests also grep for in everything fedctl writes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

FAKE_KEY_ID = "AKIAFEDCTLTESTKEY7Q2Z"
FAKE_SECRET = "fedctl-test-secret-Zq8xV3pL0wN5rT1yB6mK"
SUBNET_CIDR = "127.0.200.0/24"
FIRST_HOST = 4  # moto's first instance address in a subnet: .4


def moto_available() -> str | None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        return f"moto server or boto3 missing ({exc.name}): pip install 'moto[server,ec2]' boto3"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_shared_port(addresses: list[str]) -> int:
    """A port free on every one of ``addresses`` (all loopback sshd hosts listen on it, as on EC2)."""
    for _ in range(100):
        port = _free_port()
        try:
            for a in addresses:
                with socket.socket() as s:
                    s.bind((a, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on all addresses")


@dataclass
class MotoEc2:
    """A running moto server with a loopback VPC and subnet."""

    url: str
    region: str
    subnet: str
    vpc: str
    image: str
    proc: subprocess.Popen[bytes]

    def client(self) -> Any:
        import boto3

        return boto3.client("ec2", endpoint_url=self.url, region_name=self.region)

    def instances(self, run_id: str | None = None) -> list[dict[str, Any]]:
        flt = [{"Name": "tag:fedctl-run", "Values": [run_id]}] if run_id else [{"Name": "tag-key", "Values": ["fedctl-run"]}]
        out = []
        for res in self.client().describe_instances(Filters=flt)["Reservations"]:
            out.extend(res["Instances"])
        return out

    def billed(self, run_id: str | None = None) -> list[str]:
        """Ids of fedctl instances pending, running, stopping or stopped."""
        return [i["InstanceId"] for i in self.instances(run_id)
                if i["State"]["Name"] in ("pending", "running", "stopping", "stopped")]

    def groups(self, run_id: str | None = None) -> list[str]:
        flt = [{"Name": "tag:fedctl-run", "Values": [run_id]}] if run_id else [{"Name": "tag-key", "Values": ["fedctl-run"]}]
        return [g["GroupId"] for g in self.client().describe_security_groups(Filters=flt)["SecurityGroups"]]


@pytest.fixture
def moto_ec2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoEc2]:
    """A fresh moto server per test, fake credentials in the environment (and nothing else of AWS)."""
    reason = moto_available()
    if reason:
        pytest.skip(reason)
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for credentials
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("FEDCTL_AWS_POLL_S", "0.2")
    port = _free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.05)
    try:
        import boto3

        url = f"http://127.0.0.1:{port}"
        ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        yield MotoEc2(url, "us-east-1", subnet, vpc, image, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
