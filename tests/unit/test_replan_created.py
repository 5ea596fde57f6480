"""A corrected inventory on a run whose machines fedctl created: the machine is identified by what
it was created as (instance type, image, ...), not by the address its provider filled in; a
correction keeps the machine's address and its journaled id."""

from __future__ import annotations

import dataclasses

from fedctl.model import HostInfo
from fedctl.ops.provision import identity_changes
from fedctl.provider_fields import MachineRecord
from fedctl.providers.aws_config import AwsHostSettings


def _created(**settings) -> HostInfo:
    s = AwsHostSettings(region="us-east-1", instance_type="t3.large", image="ami-1", **settings)
    return HostInfo(name="c1", address="127.0.200.4", workdir="/w", provider_settings=s,
                    machine=MachineRecord(id="i-1", origin="o", done=("create",)))


def test_a_created_machine_is_not_another_machine_because_the_plan_holds_a_placeholder_address():
    old = _created()
    new = dataclasses.replace(old, address="(new t3.large)", machine=None, python="/venv/bin/python",
                              provider_settings=dataclasses.replace(old.provider_settings, boot_timeout_s=900))
    assert identity_changes(old, new) == []


def test_another_instance_type_or_image_is_another_machine():
    old = _created()
    bigger = dataclasses.replace(old, provider_settings=dataclasses.replace(old.provider_settings,
                                                                            instance_type="g4dn.xlarge"))
    changes = identity_changes(old, bigger)
    assert len(changes) == 1 and changes[0].startswith("provider_settings ") and "g4dn.xlarge" in changes[0]
    assert identity_changes(old, dataclasses.replace(old, workdir="/x")) == ["workdir '/w' -> '/x'"]


def test_a_static_host_is_still_identified_by_its_address():
    h = HostInfo(name="h1", address="127.0.0.2", workdir="/w")
    assert identity_changes(h, dataclasses.replace(h, address="127.0.0.3")) == ["address '127.0.0.2' -> '127.0.0.3'"]
