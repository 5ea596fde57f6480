"""The generic machine lifecycle (fedctl.providers.lifecycle) driven over a fake, in-memory cloud.

Checks what every machine-creating provider gets from the driver: each step's intent is in the
state before the step runs and its confirmation after; running a step twice is harmless; a crash
after any step (or inside create, after the cloud made the machine but before its id came back)
leaves a state from which release ends every machine and removes the network rules.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.model import host_from_dict, host_to_dict
from fedctl.provider_fields import MachineRecord
from fedctl.providers.base import HostUpdate, Machine, RunContext
from fedctl.providers.lifecycle import MachineProvider

STEPS = ("open_network", "create", "wait", "query", "terminate", "cleanup_network")


class Crash(RuntimeError):
    """fedctl killed between two lines."""


class FakeCloud:
    """Machines and network rules, as a provider's API would keep them."""

    def __init__(self) -> None:
        self.machines: dict[str, Machine] = {}
        self.networks: set[tuple[str, str]] = set()  # (run, origin)
        self.launches = 0

    def billed(self) -> list[Machine]:
        return [m for m in self.machines.values() if m.billed]


class FakeProvider(MachineProvider):
    """The six steps over FakeCloud; ``crash_after`` raises Crash once that many steps completed,
    ``crash_in_create`` raises inside create after the machine exists (its id never returns)."""

    name = "fake"

    def __init__(self, hosts: Sequence[HostInfo], run: RunContext, cloud: FakeCloud, events: list,
                 crash_after: int | None = None, crash_in_create: bool = False) -> None:
        super().__init__(hosts, run=run, poll_s=0)
        self.cloud, self.events = cloud, events
        self.crash_after, self.crash_in_create = crash_after, crash_in_create
        self.steps_done = 0

    def _step(self, name: str, host: str | None = None) -> None:
        self.events.append(("step", name, host))

    def _done(self) -> None:
        self.steps_done += 1
        if self.crash_after is not None and self.steps_done >= self.crash_after:
            raise Crash(f"killed after step {self.steps_done}")

    def open_network(self, hosts: Sequence[HostInfo]) -> None:
        self._step("open_network")
        self.cloud.networks.add((self.run.run_id, self.run.origin))
        self._done()

    def create(self, host: HostInfo, existing: Sequence[Machine]) -> Machine:
        self._step("create", host.name)
        if existing:
            m = existing[0]
        else:
            self.cloud.launches += 1
            m = Machine(id=f"m-{self.cloud.launches}", state="pending", run_id=self.run.run_id, host=host.name,
                        origin=self.run.origin, launched_at=1000.0 + self.cloud.launches)
            self.cloud.machines[m.id] = m
            if self.crash_in_create:
                raise Crash("killed after the launch call, before its id came back")
        self._done()
        return m

    def wait(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        self._step("wait")
        out = []
        for h in hosts:
            m = self.cloud.machines[h.machine.id]
            if m.state == "pending":
                m = self.cloud.machines[m.id] = dataclasses.replace(m, state="running", address=f"127.0.0.{m.id[2:]}")
            out.append(self.with_machine(h, m))
        self._done()
        return out

    def query(self, run_ids: Iterable[str] | None, ids: Iterable[str] | None = None) -> list[Machine]:
        if ids is not None:
            wanted = set(ids)
            return [m for m in self.cloud.machines.values() if m.id in wanted]
        runs = None if run_ids is None else set(run_ids)
        return [m for m in self.cloud.machines.values() if runs is None or m.run_id in runs]

    def terminate(self, ids: Sequence[str]) -> None:
        self._step("terminate")
        for i in ids:
            if i in self.cloud.machines:
                self.cloud.machines[i] = dataclasses.replace(self.cloud.machines[i], state="terminated", ended_at=2000.0)
        self._done()

    def cleanup_network(self, run_ids: Sequence[str], origins: set[str] | None) -> list[str]:
        self._step("cleanup_network")
        live = {m.run_id for m in self.cloud.billed()}
        gone = sorted(f"{r}/{o}" for r, o in self.cloud.networks
                      if r in run_ids and (origins is None or o in origins) and r not in live)
        self.cloud.networks = {(r, o) for r, o in self.cloud.networks if f"{r}/{o}" not in gone}
        self._done()
        return gone


class State:
    """The host records of a state file, saved (through JSON, as the store does) on every journal entry."""

    def __init__(self, hosts: Sequence[HostInfo], events: list) -> None:
        self.saved = {h.name: json.dumps(host_to_dict(h)) for h in hosts}
        self.released: dict[str, float] = {}
        self.events = events

    def journal(self, u: HostUpdate) -> None:
        if u.info is not None:
            self.saved[u.name] = json.dumps(host_to_dict(u.info))
            m = u.info.machine
            self.events.append(("journal", u.name, m.intent, m.done, m.id))
        if u.released_at is not None:
            self.released[u.name] = u.released_at

    def hosts(self) -> list[HostInfo]:
        return [host_from_dict(json.loads(v)) for v in self.saved.values()]


def make(n: int = 3, **kw):
    hosts = [HostInfo(name=f"h{i}", address="(new fake)") for i in range(n)]
    events: list = []
    state, cloud = State(hosts, events), FakeCloud()
    return hosts, state, cloud, events, kw


def provider(state: State, cloud: FakeCloud, events: list, **kw) -> FakeProvider:
    ctx = RunContext(run_id="r1", origin="me", journal=state.journal)
    return FakeProvider(state.hosts(), ctx, cloud, events, **kw)


def test_each_step_is_journaled_as_intent_before_it_runs_and_confirmed_after():
    _hosts, state, cloud, events, _ = make()
    got = provider(state, cloud, events).acquire(state.hosts())
    assert [h.machine.done for h in got] == [("network", "create", "wait")] * 3
    assert all(h.machine.intent is None and h.machine.origin == "me" for h in got)
    last: dict[str, tuple] = {}  # host -> its latest journal entry
    steps = {"open_network": "network", "create": "create", "wait": "wait"}
    for ev in events:
        if ev[0] == "journal":
            last[ev[1]] = ev
            continue
        _kind, step, host = ev
        if step not in steps:
            continue
        for name in [host] if host else ["h0", "h1", "h2"]:
            assert last[name][2] == steps[step], f"{step} of {name} ran before its intent was saved: {last[name]}"
    for name in ("h0", "h1", "h2"):  # after each step: confirmed, the id with the create's confirmation
        mine = [e for e in events if e[0] == "journal" and e[1] == name]
        assert [(e[2], e[3]) for e in mine] == [
            ("network", ()), (None, ("network",)), ("create", ("network",)), (None, ("network", "create")),
            ("wait", ("network", "create")), (None, ("network", "create", "wait"))]
        assert [e[4] is not None for e in mine] == [False, False, False, True, True, True]
    p = provider(state, cloud, events)
    p.release(state.hosts())
    assert all(h.machine.done[-1] == "terminate" and h.machine.intent is None for h in state.hosts())
    assert state.released == {"h0": 2000.0, "h1": 2000.0, "h2": 2000.0}


def test_every_step_run_twice_is_harmless():
    _hosts, state, cloud, events, _ = make()
    first = provider(state, cloud, events).acquire(state.hosts())
    again = provider(state, cloud, events).acquire(state.hosts())  # every acquire step a second time
    assert [h.machine.id for h in again] == [h.machine.id for h in first]
    assert cloud.launches == 3 and len(cloud.machines) == 3 and cloud.networks == {("r1", "me")}
    assert [h.machine.done for h in state.hosts()] == [("network", "create", "wait")] * 3  # each step once
    for _ in range(2):  # release's steps (query, terminate, cleanup_network) a second time
        provider(state, cloud, events).release(state.hosts())
        assert cloud.billed() == [] and cloud.networks == set()
    assert len(cloud.machines) == 3


def _acquire_steps(n_hosts: int) -> int:
    return 1 + n_hosts + 1  # open_network, create each host, wait


@pytest.mark.parametrize("crash_after", range(1, _acquire_steps(3) + 1))
def test_a_crash_after_any_step_leaves_a_state_release_ends_everything_from(crash_after):
    _hosts, state, cloud, events, _ = make()
    with pytest.raises(Crash):
        provider(state, cloud, events, crash_after=crash_after).acquire(state.hosts())
    assert cloud.networks  # something exists that must go
    # a new fedctl process: only the state file is left, and the cloud
    provider(state, cloud, events).release(state.hosts())
    assert cloud.billed() == [] and cloud.networks == set()
    # and a retry after the crash finishes the job without a second machine per host
    _h, state2, cloud2, events2, _ = make()
    with pytest.raises(Crash):
        provider(state2, cloud2, events2, crash_after=crash_after).acquire(state2.hosts())
    got = provider(state2, cloud2, events2).acquire(state2.hosts())
    assert len({h.machine.id for h in got}) == 3 and cloud2.launches == 3


def test_a_crash_inside_create_leaves_an_intent_and_release_finds_the_machine_by_its_tags():
    _hosts, state, cloud, events, _ = make()
    with pytest.raises(Crash):
        provider(state, cloud, events, crash_in_create=True).acquire(state.hosts())
    h0 = state.hosts()[0]
    assert h0.machine == MachineRecord(id=None, origin="me", intent="create", done=("network",))
    assert [m.state for m in cloud.machines.values()] == ["pending"]  # the machine exists, its id unrecorded
    provider(state, cloud, events).release(state.hosts())
    assert cloud.billed() == [] and cloud.networks == set()


def test_release_ends_no_machine_of_another_origin_or_run():
    _hosts, state, cloud, events, _ = make(n=1)
    provider(state, cloud, events).acquire(state.hosts())
    theirs = Machine("x-1", "running", "r1", "h0", "someone-else")
    other_run = Machine("x-2", "running", "r9", "h0", "me")
    cloud.machines.update({theirs.id: theirs, other_run.id: other_run})
    edited = [dataclasses.replace(h, machine=dataclasses.replace(h.machine, id="x-2")) for h in state.hosts()]
    p = provider(state, cloud, events)
    p.release(edited + state.hosts()[1:])
    assert cloud.machines["x-1"].state == "running" and cloud.machines["x-2"].state == "running"
    assert cloud.machines["m-1"].state == "terminated"  # ours, found by its tags though the id was edited


def test_an_old_state_files_extra_strings_load_as_typed_settings_and_machine():
    from fedctl.providers.aws_config import AwsHostSettings

    old = {"name": "fl-server", "address": "203.0.113.9", "extra": {
        "aws.region": "us-east-1", "aws.image": json.dumps({"name": "DL*", "owner": "amazon"}),
        "aws.spot": "true", "aws.address": "public", "aws.ssh_cidr": "auto", "aws.tags": '{"team": "fl"}',
        "aws.boot_timeout_s": "600", "aws.instance_type": "t3.large", "aws.instance_id": "i-0abc",
        "origin": "o1", "proxy_jump": "bastion"}}
    h = host_from_dict(old)
    assert h.provider_settings == AwsHostSettings(region="us-east-1", instance_type="t3.large", image="DL*",
                                                  image_owner="amazon", spot=True, tags=(("team", "fl"),))
    assert h.machine == MachineRecord(id="i-0abc", origin="o1", done=("create",))
    assert h.extra == {"proxy_jump": "bastion"}  # connector options stay
    assert host_from_dict(json.loads(json.dumps(host_to_dict(h)))) == h  # and round-trip as the same objects


def parse_section(file, raw, defaults, make_host):
    """The ``fakecloud:`` inventory section of the provider registered below (its section module)."""
    n = raw["fakecloud"]["machines"]
    return [make_host(f"fc-{i}", "(new fake)", ["server"] if i == 0 else ["client"]) for i in range(n)]


def test_a_new_machine_provider_is_one_registered_class_and_for_run_builds_it_from_the_state(monkeypatch, tmp_path):
    import fedctl.providers as registry
    from fedctl.config.inventory import parse_inventory
    from fedctl.errors import ConfigError
    from fedctl.state import HostRecord, RunState, StateStore

    registry.load_builtins()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test's provider goes with it
    cloud = FakeCloud()

    @registry.register("fakecloud")
    class FakeCloudProvider(FakeProvider):
        section_module = __name__

        @classmethod
        def from_run(cls, hosts, ctx):
            return cls(hosts, ctx, cloud, [])

    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("aws")(FakeCloudProvider)
    with pytest.raises(ConfigError) as e:
        registry.provider_class("nimbus")
    valid = sorted(registry._REGISTRY)
    assert "fakecloud" in valid and f"(valid: {', '.join(valid)})" in str(e.value)  # an unknown name lists them

    inv = parse_inventory({"provider": "fakecloud", "fakecloud": {"machines": 2}}, "inv.yaml")  # no edit there
    assert [h.name for h in inv.hosts] == ["fc-0", "fc-1"]
    store = StateStore(tmp_path / ".fedctl")
    state = RunState(run_id="r1", provider="fakecloud")
    state.hosts = [HostRecord(info=h) for h in inv.hosts]
    store.save(state)
    p = registry.for_run(state, store)
    assert isinstance(p, FakeCloudProvider) and p.run.run_id == "r1"
    got = p.acquire([r.info for r in state.hosts])
    saved = store.load()  # journaled into the state file as it went, loaded back as the same objects
    assert [r.info for r in saved.hosts] == got
    assert all(r.info.machine.done == ("network", "create", "wait") for r in saved.hosts)
    registry.for_run(saved, store).release([r.info for r in saved.hosts])
    assert cloud.billed() == [] and cloud.networks == set()
    assert all(r.released_at == 2000.0 for r in store.load().hosts)
