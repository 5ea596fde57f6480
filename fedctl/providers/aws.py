"""The ``aws`` provider: EC2 instances that fedctl creates for a run and destroys at teardown.

Never leak an instance (the lesson of SkyPilot's leak bugs):
- every instance is tagged at launch (``fedctl-run``, ``fedctl-host``, ``fedctl-origin``) in the
  same call that creates it, so a crash right after the call still leaves it findable by tag;
- its id is journaled into the state the moment the call returns;
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
from typing import Any, Callable, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers import aws_ec2 as api
from fedctl.providers import ORIGIN_KEY, register
from fedctl.providers.aws_config import settings
from fedctl.providers.base import HostUpdate, Machine, Provider, ProviderError, RunContext

#: instance lifetime when the budget sets no max_hours (the self-destruct timer still runs)
DEFAULT_LIFETIME_H = 24.0
#: on top of max_hours: booting, provisioning, collecting results (hours), and 10 % for slack
LIFETIME_MARGIN_H = 0.5
#: how long release waits for the run's instances to end and its security group to go (seconds)
RELEASE_TIMEOUT_S = 900.0


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
class AwsProvider(Provider):
    """EC2 instances in one region, created per run and tagged with it."""

    releases_machines = True
    creates_machines = True

    def __init__(self, hosts: Sequence[HostInfo] = (), run: RunContext | None = None,
                 poll_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 progress: Callable[[str], None] | None = None) -> None:
        if not hosts:
            raise ProviderError("provider aws got no hosts (its settings travel with them)")
        self._hosts = list(hosts)
        self.run = run
        self.s = settings(self._hosts[0])
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get("FEDCTL_AWS_POLL_S", "3"))
        self.clock = clock
        self._progress = run.progress if run is not None else (progress or (lambda _m: None))
        self._client: Any = None
        #: instances the last release/sweep would not terminate (their tags were not as expected): id -> why
        self.refused: dict[str, str] = {}

    # -- plumbing -----------------------------------------------------------------------------------
    @property
    def ec2(self) -> Any:
        if self._client is None:
            self._client = api.client(self.s["region"], self.s.get("endpoint_url"))
        return self._client

    def _ctx(self) -> RunContext:
        if self.run is None:
            raise ProviderError("this aws provider was made without a run (a bug in fedctl)")
        return self.run

    def _say(self, msg: str) -> None:
        self._progress(f"aws: {msg}")

    @staticmethod
    def instance_id(info: HostInfo) -> str | None:
        return info.extra.get("aws.instance_id") or None

    def reachable(self, info: HostInfo) -> bool:
        return self.instance_id(info) is not None and not info.address.startswith("(")

    def _with_machine(self, h: HostInfo, m: Machine) -> HostInfo:
        """``h`` with the instance's id and addresses (the configured one becomes ``address``)."""
        chosen = m.private_address if h.extra.get("aws.address") == "private" else m.address
        return dataclasses.replace(
            h, address=chosen or h.address, private_address=m.private_address or h.private_address,
            extra={**h.extra, "aws.instance_id": m.id, ORIGIN_KEY: self._ctx().origin})

    # -- what exists ---------------------------------------------------------------------------------
    def machines(self, all_runs: bool = False, include_ended: bool = False) -> list[Machine]:
        """The run's machines (its run AND origin tags: a same-named run elsewhere is not ours), or
        every fedctl machine in the region with ``all_runs``."""
        runs = None if all_runs else [self._ctx().run_id]
        found = api.find_instances(self.ec2, api.run_filter(runs))
        if not all_runs:
            found = [m for m in found if m.origin == self._ctx().origin]
        return found if include_ended else [m for m in found if m.state not in api.ENDED_STATES]

    def list(self) -> list[str]:
        return sorted({m.host for m in self.machines() if m.billed and m.host})

    # -- acquire -------------------------------------------------------------------------------------
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Create (or adopt) one instance per host, journal each id at once, wait for running + SSH."""
        ctx = self._ctx()
        ec2 = self.ec2
        vpc, vpc_cidr = api.network(ec2, self.s.get("subnet"))
        images: dict[str, str] = {}
        for spec in sorted({h.extra["aws.image"] for h in hosts}):
            images[spec], name = api.resolve_image(ec2, spec)
            self._say(f"image {images[spec]} ({name or 'no name'})")
        group = self.s.get("security_group") or self._group(vpc, vpc_cidr, hosts)
        live = self.machines()
        planned = {h.name for h in self._hosts}
        strays = [m.id for m in live if m.host not in planned]
        if strays:  # hosts a corrected plan dropped: they would bill until teardown
            self._say(f"terminating {len(strays)} instance(s) the plan no longer has: {', '.join(strays)}")
            api.terminate(ec2, strays)
        minutes = lifetime_minutes(ctx.max_hours, float(self.s["max_lifetime_hours"])
                                   if self.s.get("max_lifetime_hours") else None)
        self._say(f"instances terminate themselves after {minutes / 60:.1f} h (budget max_hours + margin)")
        machines: dict[str, Machine] = {}
        for h in hosts:
            params = self._launch_params(h, images[h.extra["aws.image"]], group, minutes)
            mine = [m for m in live if m.host == h.name]
            keep = next((m for m in mine if m.machine_type == params["InstanceType"]
                         and m.extra.get("image") == params["ImageId"]), None)
            extra = [m.id for m in mine if m is not keep]
            if extra:  # launched with other parameters by an earlier attempt
                api.terminate(ec2, extra)
            if keep is None:
                keep = self._launch(h, params)
                self._say(f"{h.name}: launched {keep.id} ({keep.machine_type})")
            else:
                self._say(f"{h.name}: adopting {keep.id} ({keep.state}) from an earlier attempt")
            machines[h.name] = keep
            ctx.journal(HostUpdate(h.name, info=self._with_machine(h, keep), acquired_at=keep.launched_at))
        ready = self._wait_running(hosts, machines)
        self._wait_ssh(ready)
        return ready

    def _group(self, vpc: str, vpc_cidr: str, hosts: Sequence[HostInfo]) -> str:
        ctx = self._ctx()
        cidr = self.s.get("ssh_cidr", "auto")
        if cidr == "auto":
            # private addresses are reached from inside the VPC (a VPN, a bastion): allow the VPC
            cidr = vpc_cidr if self.s.get("address") == "private" else this_machine_cidr()
        ssh_port = hosts[0].port or 22
        gid = api.ensure_security_group(self.ec2, f"fedctl-{ctx.run_id}", vpc, self._tags(None), cidr, ssh_port,
                                        ctx.fl_port)
        self._say(f"security group {gid}: SSH from {cidr}, FL port {ctx.fl_port or 'any'} inside the group")
        return gid

    def _tags(self, host: str | None) -> dict[str, str]:
        ctx = self._ctx()
        tags = {**json.loads(self.s.get("tags", "{}")), api.TAG_RUN: ctx.run_id, api.TAG_ORIGIN: ctx.origin}
        if host is not None:
            tags[api.TAG_HOST] = host
            tags["Name"] = tags.get("Name", f"fedctl {ctx.run_id} {host}")
        return tags

    def _launch_params(self, h: HostInfo, image: str, group: str, minutes: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": h.extra["aws.instance_type"],
            "MinCount": 1,
            "MaxCount": 1,
            "SecurityGroupIds": [group],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "UserData": user_data(self._ctx().run_id, minutes),
            "TagSpecifications": api.tag_spec("instance", self._tags(h.name)) + api.tag_spec("volume", self._tags(h.name)),
        }
        if self.s.get("key_name"):
            params["KeyName"] = self.s["key_name"]
        if self.s.get("subnet"):
            params["SubnetId"] = self.s["subnet"]
        if self.s.get("spot") == "true":
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    def _launch(self, h: HostInfo, params: dict[str, Any]) -> Machine:
        token = client_token(self._ctx().run_id, h.name, params)
        try:
            inst = self.ec2.run_instances(ClientToken=token, **params)["Instances"][0]
        except Exception as exc:  # noqa: BLE001 - botocore's errors, said plainly
            raise api.api_error(exc, f"launch {params['InstanceType']} for {h.name}") from None
        return api.machine_from(inst)

    def _deadline(self) -> float:
        return self.clock() + float(self.s.get("boot_timeout_s", "600"))

    def _wait_running(self, hosts: Sequence[HostInfo], machines: dict[str, Machine]) -> list[HostInfo]:
        """Poll until every instance runs and has the address fedctl connects to; journal it."""
        ctx = self._ctx()
        deadline = self._deadline()
        ready: dict[str, HostInfo] = {}
        by_id = {m.id: name for name, m in machines.items()}
        shown = -1
        while True:
            seen = {m.id: m for m in self.machines(include_ended=True) if m.id in by_id}
            ended = [m for m in seen.values() if m.state in api.ENDED_STATES]
            if ended:  # spot reclaimed, capacity, a bad image: say which and why
                why = "; ".join(f"{by_id[m.id]}: {m.id} {m.state} ({m.extra.get('reason') or 'no reason given'})"
                                for m in ended)
                raise ProviderError(f"instances ended while starting: {why}",
                                    hint="`fedctl provision` again retries them; `fedctl teardown` cleans up")
            for m in seen.values():
                name = by_id[m.id]
                if name in ready:
                    continue
                info = self._with_machine(next(x for x in hosts if x.name == name), m)
                if m.state == "running" and not info.address.startswith("("):
                    ready[name] = info
                    ctx.journal(HostUpdate(name, info=info, acquired_at=m.launched_at))
            if len(ready) != shown:
                shown = len(ready)
                self._say(f"{shown}/{len(hosts)} instance(s) running")
            if len(ready) == len(hosts):
                return [ready[h.name] for h in hosts]
            if self.clock() > deadline:
                late = ", ".join(h.name for h in hosts if h.name not in ready)
                raise ProviderError(f"instances not running after {self.s.get('boot_timeout_s')} s: {late}",
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

    # -- release -------------------------------------------------------------------------------------
    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Terminate every instance of the run (tagged with its run AND origin), wait until none of it
        bills, then delete its security group. A recorded id whose tags name another run or origin is
        refused and said so (an edited or stale state must not end someone else's machine).
        Idempotent; ProviderError when time runs out."""
        ctx = self._ctx()
        recorded = {i: h.name for h in hosts if (i := self.instance_id(h))}
        owner = (ctx.run_id, ctx.origin)
        found = {m.id: m for m in api.find_instances(self.ec2, api.run_filter([ctx.run_id]))}
        strangers = [i for i in recorded if i not in found]
        if strangers:
            found.update({m.id: m for m in api.find_by_ids(self.ec2, strangers)})
        for i, m in sorted(found.items()):
            if api.owner(m) != owner and m.billed and (i in recorded or m.run_id == ctx.run_id):
                self._say(f"refusing to terminate {i}{f' (recorded for {recorded[i]})' if i in recorded else ''}: "
                          f"{api.whose(m)}, not this run's (run {ctx.run_id}, origin {ctx.origin})")
        mine = [i for i, m in found.items() if api.owner(m) == owner]
        self._end(mine, {i: owner for i in mine}, self.clock() + RELEASE_TIMEOUT_S, by_tag=owner)
        self._say(f"no instance of run {ctx.run_id} is left pending, running, stopping or stopped")
        self.delete_groups([ctx.run_id], origins={ctx.origin})

    def sweep(self, listed: Sequence[Machine], group_runs: Sequence[str], origins: set[str] | None,
              timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
        """Terminate exactly the ``listed`` instances, each only while its run and origin tags are
        still what was listed (re-read just before every terminate call); wait until none bills; then
        delete the security groups of ``group_runs`` made from ``origins`` (None: any) that no live
        instance still uses by its run tag. Returns the ids terminated."""
        expect = {m.id: api.owner(m) for m in listed}
        self._end(list(expect), expect, self.clock() + timeout_s)
        runs = sorted({*group_runs, *(r for r, _o in expect.values() if r)})
        self.delete_groups(runs, origins, timeout_s)
        return sorted(i for i in expect if i not in self.refused)

    def _end(self, ids: Sequence[str], expect: dict[str, tuple[str | None, str | None]], deadline: float,
             by_tag: tuple[str, str] | None = None) -> None:
        """Terminate ``ids`` (plus, with ``by_tag``, any instance launched since with that run and
        origin), re-checking each one's tags against ``expect`` right before each terminate call, and
        poll until none of them bills. Journals each host's termination time as the API reports it."""
        ec2 = self.ec2
        self.refused = {}
        seen: set[str] = set()
        watch = list(ids)
        while True:
            found = api.find_by_ids(ec2, watch)
            if by_tag is not None:  # a launch that raced the teardown
                extra = [m for m in api.find_instances(ec2, api.run_filter([by_tag[0]]))
                         if api.owner(m) == by_tag and m.id not in expect]
                expect.update({m.id: by_tag for m in extra})
                watch += [m.id for m in extra]
                found += extra
            ours = []
            for m in found:
                if api.owner(m) == expect.get(m.id):
                    ours.append(m)
                elif m.id not in self.refused:
                    self.refused[m.id] = api.whose(m)
                    self._say(f"not terminating {m.id}: its tags changed ({api.whose(m)})")
            alive = [m.id for m in ours if m.state not in api.ENDED_STATES]
            if alive:
                api.terminate(ec2, alive)
            for m in ours:
                if not m.billed and m.id not in seen:
                    seen.add(m.id)
                    if self.run is not None and m.host and m.run_id == self.run.run_id:
                        self.run.journal(HostUpdate(m.host, released_at=m.ended_at or time.time()))
            billed = [m for m in ours if m.billed]
            if not billed:
                return
            if self.clock() > deadline:
                raise ProviderError("instances still not ended: " + ", ".join(f"{m.id} ({m.state})" for m in billed),
                                    hint="run `fedctl teardown` again; `fedctl instances` shows them")
            self._say(f"waiting for {len(billed)} instance(s) to end")
            time.sleep(self.poll_s)

    def delete_groups(self, run_ids: Sequence[str], origins: set[str] | None,
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


def _ssh_banner(address: str, port: int, timeout: float = 3.0) -> bool:
    """Whether an SSH server answers at ``address:port`` (reads its banner, sends nothing)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False
