"""The ``aws`` provider: EC2 instances that fedctl creates for a run and destroys at teardown.

It implements the lifecycle's steps (``fedctl.providers.lifecycle``: open_network = the run's
security group, create, wait, query, terminate, cleanup_network); the generic driver runs them
and journals each one's intent into the state before it runs.

Never leak an instance (the lesson of SkyPilot's leak bugs):
- every instance is tagged at launch (``fedctl-run``, ``fedctl-host``, ``fedctl-origin``) in the
  same call that creates it, so a crash right after the call still leaves it findable by tag;
- the create step's intent is journaled before the call, its id the moment the call returns;
- a retry first adopts what the run already has (by tag), and launches with a client token derived
  from the run, the host and the launch parameters, so a retried call cannot double-create;
- every instance terminates itself: ``InstanceInitiatedShutdownBehavior=terminate`` plus a
  user-data ``shutdown -h +M`` from the budget's ``max_hours`` (plus a margin), so a run whose laptop
  died still ends, and the on-host watchdog's power-off terminates instead of stopping;
- release terminates everything tagged with the run and this origin (a recorded id whose tags say
  otherwise is refused) and re-queries until nothing of it is pending, running, stopping or stopped;
  only then is a host released. Then the run's security group goes, unless a live instance of
  another origin carries the run's tag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
from typing import Any, Callable, Iterable, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import aws_ec2 as api
from fedctl.providers import register
from fedctl.providers.aws_config import settings
from fedctl.providers.base import ENDED_STATES, Machine, ProviderError, RunContext
from fedctl.providers.lifecycle import RELEASE_TIMEOUT_S, MachineProvider

#: instance lifetime when the budget sets no max_hours (the self-destruct timer still runs)
DEFAULT_LIFETIME_H = 24.0
#: on top of max_hours: booting, provisioning, collecting results (hours), and 10 % for slack
LIFETIME_MARGIN_H = 0.5


def lifetime_minutes(max_hours: float | None, explicit_h: float | None = None) -> int:
    """Minutes until an instance shuts itself down (and so terminates)."""
    if explicit_h is not None:
        hours = explicit_h
    elif max_hours:
        hours = max_hours * 1.1 + LIFETIME_MARGIN_H
    else:
        hours = DEFAULT_LIFETIME_H
    return max(10, math.ceil(hours * 60))


def user_data(run_id: str, minutes: int) -> str:
    """The boot script: a shutdown timer. With shutdown behaviour ``terminate`` it ends the instance."""
    return (
        "#!/bin/sh\n"
        f"# fedctl run {run_id}: this instance terminates itself after {minutes} minutes, whatever\n"
        "# happens to the machine that started it (fedctl teardown normally ends it sooner).\n"
        f"shutdown -h +{minutes} 'fedctl: lifetime of run {run_id} is over' || "
        f"(sleep {minutes * 60} && poweroff) &\n"
    )


def client_token(run_id: str, host: str, params: dict[str, Any]) -> str:
    """Idempotency token for one host's launch: the same run, host and parameters give the same token
    (EC2 then returns the first launch instead of a second instance); other parameters another one."""
    digest = hashlib.sha256(json.dumps([run_id, host, params], sort_keys=True).encode()).hexdigest()
    return f"fedctl-{digest[:40]}"


def this_machine_cidr() -> str:
    """This machine's public address as a /32, for the SSH rule (aws.ssh_cidr: auto, address: public)."""
    import urllib.request

    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as resp:  # noqa: S310
            ip = resp.read().decode().strip()
        socket.inet_aton(ip)
    except (OSError, ValueError) as exc:
        raise ProviderError(f"cannot find this machine's public address for the SSH rule: {exc}",
                            hint="set aws.ssh_cidr to the address range you connect from, e.g. 203.0.113.7/32") from None
    return f"{ip}/32"


@register("aws")
class AwsProvider(MachineProvider):
    """EC2 instances in one region, created per run and tagged with it: the lifecycle's steps."""

    section_module = "fedctl.providers.aws_config"

    def __init__(self, hosts: Sequence[HostInfo] = (), run: RunContext | None = None,
                 poll_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 progress: Callable[[str], None] | None = None) -> None:
        if poll_s is None:
            poll_s = float(os.environ.get("FEDCTL_AWS_POLL_S", "3"))
        super().__init__(hosts, run=run, poll_s=poll_s, clock=clock, progress=progress)
        self.s = settings(self._hosts[0])
        self._client: Any = None
        self._images: dict[tuple[str, str | None], str] = {}  # (image, owner) -> AMI id, resolved once
        self._gid: str | None = None  # the run's security group, once known

    @property
    def ec2(self) -> Any:
        if self._client is None:
            self._client = api.client(self.s.region, self.s.endpoint_url)
        return self._client

    def with_machine(self, host: HostInfo, m: Machine) -> HostInfo:
        """``host`` with the instance's addresses (the configured one becomes ``address``)."""
        chosen = m.private_address if settings(host).address == "private" else m.address
        return dataclasses.replace(host, address=chosen or host.address,
                                   private_address=m.private_address or host.private_address)

    # -- network: the run's security group -------------------------------------------------------------
    def open_network(self, hosts: Sequence[HostInfo]) -> None:
        """The run's security group (found by name on a retry), unless the user gave one."""
        if self.s.security_group:
            return
        ctx = self._ctx()
        vpc, vpc_cidr = api.network(self.ec2, self.s.subnet)
        cidr = self.s.ssh_cidr
        if cidr == "auto":
            # private addresses are reached from inside the VPC (a VPN, a bastion): allow the VPC
            cidr = vpc_cidr if self.s.address == "private" else this_machine_cidr()
        ssh_port = hosts[0].port or 22
        gid = api.ensure_security_group(self.ec2, self._group_name(), vpc, self._tags(None), cidr, ssh_port,
                                        ctx.fl_port)
        self._gid = gid
        self._say(f"security group {gid}: SSH from {cidr}, FL port {ctx.fl_port or 'any'} inside the group")

    def _group_name(self) -> str:
        return f"fedctl-{self._ctx().run_id}"

    def _group_id(self) -> str:
        """The security group instances launch in (the run's exists once open_network ran)."""
        if self.s.security_group:
            return self.s.security_group
        if self._gid is not None:
            return self._gid
        vpc, _cidr = api.network(self.ec2, self.s.subnet)
        gid = api.find_security_group(self.ec2, self._group_name(), vpc)
        if gid is None:
            raise ProviderError(f"security group {self._group_name()} is gone (a sweep while provisioning?)",
                                hint="run `fedctl provision` again")
        self._gid = gid
        return gid

    def cleanup_network(self, run_ids: Sequence[str], origins: set[str] | None,
                        timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
        """Delete the security groups fedctl made for ``run_ids`` from ``origins`` (None: any), but
        only those whose run tag no live instance carries (another origin's instance with the same
        run tag may be using it); instances shutting down hold a group a while. Returns the ids."""
        if not run_ids:
            return []
        deadline = self.clock() + timeout_s
        groups, kept = api.unused_groups(self.ec2, run_ids, origins)
        for gid, run in kept:
            self._say(f"keeping security group {gid}: a live instance still carries run {run}")
        deleted, waiting = list(groups), list(groups)
        while waiting:
            waiting = [g for g in waiting if not api.delete_group(self.ec2, g)]
            if not waiting:
                break
            if self.clock() > deadline:
                raise ProviderError(f"security group(s) {', '.join(waiting)} still in use",
                                    hint="run `fedctl teardown` again in a minute")
            time.sleep(self.poll_s)
        return deleted

    # -- create ---------------------------------------------------------------------------------------
    def _image(self, h: HostInfo) -> str:
        s = settings(h)
        key = (s.image, s.image_owner)
        if key not in self._images:
            self._images[key], name = api.resolve_image(self.ec2, s.image, s.image_owner)
            self._say(f"image {self._images[key]} ({name or 'no name'})")
        return self._images[key]

    def _minutes(self) -> int:
        return lifetime_minutes(self._ctx().max_hours, self.s.max_lifetime_hours)

    def create(self, host: HostInfo, existing: Sequence[Machine]) -> Machine:
        """Launch ``host``'s instance, tagged in the same call, with a client token derived from the
        run, the host and the parameters (a retried call cannot double-create), or adopt the one an
        earlier attempt launched with the same type and image (others it terminates)."""
        minutes = self._minutes()
        params = self._launch_params(host, self._image(host), self._group_id(), minutes)
        keep = next((m for m in existing if m.machine_type == params["InstanceType"]
                     and m.extra.get("image") == params["ImageId"]), None)
        other = [m.id for m in existing if m is not keep]
        if other:  # launched with other parameters by an earlier attempt
            self.terminate(other)
        if keep is not None:
            self._say(f"{host.name}: adopting {keep.id} ({keep.state}) from an earlier attempt")
            return keep
        # EC2 answers a known token with the instance it launched, even a terminated one: an instance
        # of this host that ended (a spot reclaim, a sweep) must not come back, so it is in the token
        ended = sorted(m.id for m in self.machines(include_ended=True) if m.host == host.name
                       and m.state in ENDED_STATES)
        token = client_token(self._ctx().run_id, host.name, {**params, "replaces": ended} if ended else params)
        try:
            inst = self.ec2.run_instances(ClientToken=token, **params)["Instances"][0]
        except Exception as exc:  # noqa: BLE001 - botocore's errors, said plainly
            raise api.api_error(exc, f"launch {params['InstanceType']} for {host.name}") from None
        m = api.machine_from(inst)
        self._say(f"{host.name}: launched {m.id} ({m.machine_type}); it terminates itself after "
                  f"{minutes / 60:.1f} h (budget max_hours + margin)")
        return m

    def _tags(self, host: str | None) -> dict[str, str]:
        ctx = self._ctx()
        tags = {**dict(self.s.tags), api.TAG_RUN: ctx.run_id, api.TAG_ORIGIN: ctx.origin}
        if host is not None:
            tags[api.TAG_HOST] = host
            tags["Name"] = tags.get("Name", f"fedctl {ctx.run_id} {host}")
        return tags

    def _launch_params(self, h: HostInfo, image: str, group: str, minutes: int) -> dict[str, Any]:
        s = settings(h)
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": s.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "SecurityGroupIds": [group],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "UserData": user_data(self._ctx().run_id, minutes),
            "TagSpecifications": api.tag_spec("instance", self._tags(h.name)) + api.tag_spec("volume", self._tags(h.name)),
        }
        if s.key_name:
            params["KeyName"] = s.key_name
        if s.subnet:
            params["SubnetId"] = s.subnet
        if s.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    # -- wait, query, terminate -------------------------------------------------------------------------
    def _deadline(self) -> float:
        return self.clock() + float(self.s.boot_timeout_s)

    def wait(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Until every instance runs, has the address fedctl connects to and answers SSH."""
        ready = self._wait_running(hosts)
        self._wait_ssh(ready)
        return ready

    def _wait_running(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Poll until every instance runs and has the address fedctl connects to."""
        deadline = self._deadline()
        ready: dict[str, HostInfo] = {}
        by_id = {h.machine.id: h for h in hosts if h.machine is not None and h.machine.id}
        if len(by_id) != len(hosts):
            raise ProviderError("wait before create: " + ", ".join(h.name for h in hosts if h not in by_id.values()))
        shown = -1
        while True:
            seen = {m.id: m for m in self.query(None, ids=list(by_id))}
            ended = [m for m in seen.values() if m.state in ENDED_STATES]
            if ended:  # spot reclaimed, capacity, a bad image: say which and why
                why = "; ".join(f"{by_id[m.id].name}: {m.id} {m.state} ({m.extra.get('reason') or 'no reason given'})"
                                for m in ended)
                raise ProviderError(f"instances ended while starting: {why}",
                                    hint="`fedctl provision` again retries them; `fedctl teardown` cleans up")
            for m in seen.values():
                h = by_id[m.id]
                info = self.with_machine(h, m)
                if h.name not in ready and m.state == "running" and not info.address.startswith("("):
                    ready[h.name] = info
            if len(ready) != shown:
                shown = len(ready)
                self._say(f"{shown}/{len(hosts)} instance(s) running")
            if len(ready) == len(hosts):
                return [ready[h.name] for h in hosts]
            if self.clock() > deadline:
                late = ", ".join(h.name for h in hosts if h.name not in ready)
                raise ProviderError(f"instances not running after {self.s.boot_timeout_s} s: {late}",
                                    hint="raise aws.boot_timeout_s, or `fedctl teardown` and try another type")
            time.sleep(self.poll_s)

    def _wait_ssh(self, infos: Sequence[HostInfo]) -> None:
        """Wait until every instance's sshd answers with its banner (booting takes a while)."""
        deadline = self._deadline()
        waiting = list(infos)
        self._say(f"waiting for SSH on {len(waiting)} instance(s)")
        while waiting:
            waiting = [h for h in waiting if not _ssh_banner(h.address, h.port or 22)]
            if not waiting:
                break
            if self.clock() > deadline:
                raise ProviderError("no SSH answer after boot: " + ", ".join(f"{h.name} ({h.address})" for h in waiting),
                                    hint="check the image runs sshd, aws.ssh_cidr and aws.address")
            time.sleep(self.poll_s)
        self._say(f"{len(infos)}/{len(infos)} instance(s) answer SSH")

    def query(self, run_ids: Iterable[str] | None, ids: Iterable[str] | None = None) -> list[Machine]:
        """The instances tagged with ``run_ids`` (None: any fedctl run), or exactly ``ids``."""
        if ids is not None:
            return api.find_by_ids(self.ec2, ids)
        return api.find_instances(self.ec2, api.run_filter(None if run_ids is None else list(run_ids)))

    def terminate(self, ids: Sequence[str]) -> None:
        """Terminate ``ids`` (terminating a terminated instance is no error)."""
        api.terminate(self.ec2, list(ids))


def _ssh_banner(address: str, port: int, timeout: float = 3.0) -> bool:
    """Whether an SSH server answers at ``address:port`` (reads its banner, sends nothing)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False
