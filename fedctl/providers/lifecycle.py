"""The lifecycle of machines fedctl creates: small steps a provider implements, one driver that runs them.

A machine-creating provider (aws; Slurm next) subclasses ``MachineProvider`` and implements six
steps, each stateless (all it needs is in its arguments and the provider's tags) and idempotent
(run twice, the second run finds the work done), after SkyPilot's ``sky/provision/<cloud>/instance.py``:

    open_network(hosts)           the rules the run's machines need (SSH in, the FL port between them)
    create(host, existing)        one machine for ``host``, tagged with run, host and origin in the
                                  same call, or the one an earlier attempt made (``existing``)
    wait(hosts)                   until every host's machine runs and answers; the hosts with addresses
    query(run_ids, ids)           the machines as the provider reports them now (read only)
    terminate(ids)                ask the provider to end these machines (an ended one is no error)
    cleanup_network(runs, origins) remove the network rules of those runs that nothing uses any more

The driver (``acquire``, ``release``, ``sweep``) is the same for every provider. Before each step
it journals the step's intent into the host's ``MachineRecord`` (the caller saves the state at
once), and after it the confirmation (with the machine's id once ``create`` returned it). So a
crash at any line leaves a state teardown can finish from: ``release`` ends every machine recorded
by id and every machine tagged with the run and this origin (a create whose id never came back),
re-checking each one's tags on the spot, waits until none of them bills, then cleans the network.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import time
from typing import Callable, Iterable, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.provider_fields import MachineRecord
from fedctl.providers.base import ENDED_STATES, HostUpdate, Machine, Provider, ProviderError, RunContext

#: how long release waits for the run's machines to end and its network rules to go (seconds)
RELEASE_TIMEOUT_S = 900.0
#: the steps the driver journals, in the order acquire runs them (release runs ``terminate``)
STEPS = ("network", "create", "wait", "terminate")

Owner = tuple[str | None, str | None]


def owner(m: Machine) -> Owner:
    """Whose a machine is, by its tags: (run, origin)."""
    return m.run_id, m.origin


def whose(m: Machine) -> str:
    """``owner`` in words, for a refusal message."""
    return f"its tags name run {m.run_id or '(none)'}, origin {m.origin or '(none)'}"


class MachineProvider(Provider):
    """A provider that creates the run's machines and destroys them: the generic driver over the steps."""

    creates_machines = True

    def __init__(self, hosts: Sequence[HostInfo] = (), run: RunContext | None = None,
                 poll_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 progress: Callable[[str], None] | None = None) -> None:
        if not hosts:
            raise ProviderError(f"provider {self.name} got no hosts (its settings travel with them)")
        self._hosts = list(hosts)
        self.run = run
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get("FEDCTL_POLL_S", "3"))
        self.clock = clock
        self._progress = run.progress if run is not None else (progress or (lambda _m: None))
        #: machines the last release/sweep would not terminate (their tags were not as expected): id -> why
        self.refused: dict[str, str] = {}

    @classmethod
    def from_run(cls, hosts: Sequence[HostInfo], ctx: RunContext) -> "MachineProvider":
        """The provider of a run: its settings travel with the hosts, the run with ``ctx``."""
        return cls(hosts=hosts, run=ctx)

    # -- the steps -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def open_network(self, hosts: Sequence[HostInfo]) -> None:
        """Open what the run's machines need (SSH from here, the FL port among them). Idempotent."""

    @abc.abstractmethod
    def create(self, host: HostInfo, existing: Sequence[Machine]) -> Machine:
        """Create ``host``'s machine, tagged with run, host and origin in the same call, or adopt the
        one of ``existing`` (this host's live machines) an earlier attempt made. Idempotent."""

    @abc.abstractmethod
    def wait(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Until the machine of every host (``host.machine.id``) runs and can be connected to: the
        hosts with their addresses. Read only; ProviderError when one ends or time runs out."""

    @abc.abstractmethod
    def query(self, run_ids: Iterable[str] | None, ids: Iterable[str] | None = None) -> list[Machine]:
        """The machines tagged with ``run_ids`` (None: every run's), whatever their origin, or, with
        ``ids``, exactly those ids whatever their tags; ended ones included. Read only."""

    @abc.abstractmethod
    def terminate(self, ids: Sequence[str]) -> None:
        """Ask the provider to end ``ids`` (the driver checked their tags just before). Idempotent."""

    @abc.abstractmethod
    def cleanup_network(self, run_ids: Sequence[str], origins: set[str] | None) -> list[str]:
        """Remove the network rules made for ``run_ids`` from ``origins`` (None: any) that no live
        machine still needs; waits while ending machines hold them. Returns what was removed."""

    def with_machine(self, host: HostInfo, m: Machine) -> HostInfo:
        """``host`` with what ``m`` tells about how to reach it (its address once it has one)."""
        return dataclasses.replace(host, address=m.address or host.address,
                                   private_address=m.private_address or host.private_address)

    # -- the driver ----------------------------------------------------------------------------------
    def _ctx(self) -> RunContext:
        if self.run is None:
            raise ProviderError(f"this {self.name} provider was made without a run (a bug in fedctl)")
        return self.run

    def _say(self, msg: str) -> None:
        self._progress(f"{self.name}: {msg}")

    def _journal(self, info: HostInfo, step: str, confirm: bool, machine_id: str | None = None,
                 acquired_at: float | None = None, released_at: float | None = None) -> HostInfo:
        """``info`` with ``step`` begun (or confirmed), saved in the state through the run's journal."""
        ctx = self._ctx()
        rec = info.machine or MachineRecord()
        rec = rec.confirm(step, machine_id) if confirm else rec.begin(step, origin=rec.origin or ctx.origin)
        info = dataclasses.replace(info, machine=rec)
        ctx.journal(HostUpdate(info.name, info=info, acquired_at=acquired_at, released_at=released_at))
        return info

    def reachable(self, info: HostInfo) -> bool:
        """A host whose machine was created and has an address (not the ``(new TYPE)`` placeholder)."""
        return info.machine is not None and info.machine.id is not None and not info.address.startswith("(")

    def machines(self, all_runs: bool = False, include_ended: bool = False) -> list[Machine]:
        """The run's machines (its run AND origin tags: a same-named run elsewhere is not ours), or
        every fedctl machine the provider's account shows with ``all_runs``."""
        if all_runs:
            found = self.query(None)
        else:
            ctx = self._ctx()
            found = [m for m in self.query([ctx.run_id]) if m.origin == ctx.origin]
        return found if include_ended else [m for m in found if m.state not in ENDED_STATES]

    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """network -> create (each host) -> wait, each step journaled before it runs and after."""
        cur = {h.name: h for h in hosts}
        for name in cur:
            cur[name] = self._journal(cur[name], "network", confirm=False)
        self.open_network(list(cur.values()))
        for name in cur:
            cur[name] = self._journal(cur[name], "network", confirm=True)
        live = self.machines()
        planned = {h.name for h in self._hosts}
        strays = [m.id for m in live if m.host not in planned]
        if strays:  # hosts a corrected plan dropped: they would bill until teardown
            self._say(f"terminating {len(strays)} machine(s) the plan no longer has: {', '.join(strays)}")
            self.terminate(strays)
        for name in cur:
            cur[name] = self._journal(cur[name], "create", confirm=False)
            m = self.create(cur[name], [x for x in live if x.host == name])
            info = self.with_machine(cur[name], m)
            cur[name] = self._journal(info, "create", confirm=True, machine_id=m.id, acquired_at=m.launched_at)
        for name in cur:
            cur[name] = self._journal(cur[name], "wait", confirm=False)
        ready = self.wait(list(cur.values()))
        return [self._journal(info, "wait", confirm=True) for info in ready]

    def release(self, hosts: Sequence[HostInfo]) -> None:
        """End every machine of the run (recorded by id, or tagged with its run AND origin), wait
        until none of it bills, then clean its network up. A recorded id whose tags name another run
        or origin is refused and said so (an edited or stale state must not end someone else's
        machine). Idempotent; ProviderError when time runs out."""
        ctx = self._ctx()
        cur = {h.name: self._journal(h, "terminate", confirm=False) for h in hosts}
        recorded = {h.machine.id: h.name for h in cur.values() if h.machine is not None and h.machine.id}
        mine_tag: Owner = (ctx.run_id, ctx.origin)
        found = {m.id: m for m in self.query([ctx.run_id])}
        strangers = [i for i in recorded if i not in found]
        if strangers:
            found.update({m.id: m for m in self.query(None, ids=strangers)})
        for i, m in sorted(found.items()):
            if owner(m) != mine_tag and m.billed and (i in recorded or m.run_id == ctx.run_id):
                self._say(f"refusing to terminate {i}{f' (recorded for {recorded[i]})' if i in recorded else ''}: "
                          f"{whose(m)}, not this run's (run {ctx.run_id}, origin {ctx.origin})")
        mine = [i for i, m in found.items() if owner(m) == mine_tag]
        ended = self._end(mine, {i: mine_tag for i in mine}, self.clock() + RELEASE_TIMEOUT_S, by_tag=mine_tag)
        self._say(f"no machine of run {ctx.run_id} is left pending, running, stopping or stopped")
        self.cleanup_network([ctx.run_id], {ctx.origin})
        for name, info in cur.items():
            self._journal(info, "terminate", confirm=True, released_at=ended.get(name))

    def sweep(self, listed: Sequence[Machine], group_runs: Sequence[str], origins: set[str] | None,
              timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
        """End exactly the ``listed`` machines, each only while its run and origin tags are still
        what was listed (re-read just before every terminate call); wait until none bills; then
        clean up the network rules of ``group_runs`` made from ``origins`` (None: any) that no live
        machine still uses. Returns the ids ended (``fedctl instances --sweep``)."""
        expect: dict[str, Owner] = {m.id: owner(m) for m in listed}
        self._end(list(expect), expect, self.clock() + timeout_s)
        runs = sorted({*group_runs, *(r for r, _o in expect.values() if r)})
        self.cleanup_network(runs, origins)
        return sorted(i for i in expect if i not in self.refused)

    def _end(self, ids: Sequence[str], expect: dict[str, Owner], deadline: float,
             by_tag: Owner | None = None) -> dict[str, float]:
        """Terminate ``ids`` (plus, with ``by_tag``, any machine launched since with that run and
        origin), re-checking each one's tags against ``expect`` right before each terminate call, and
        poll until none of them bills. Returns, per host of this run, when its machine ended as the
        provider reports it."""
        self.refused = {}
        ended: dict[str, float] = {}
        watch = list(ids)
        while True:
            found = self.query(None, ids=watch) if watch else []
            if by_tag is not None:  # a create that raced the teardown, or one whose id never came back
                extra = [m for m in self.query([str(by_tag[0])]) if owner(m) == by_tag and m.id not in expect]
                expect.update({m.id: by_tag for m in extra})
                watch += [m.id for m in extra]
                found += extra
            ours = []
            for m in found:
                if owner(m) == expect.get(m.id):
                    ours.append(m)
                elif m.id not in self.refused:
                    self.refused[m.id] = whose(m)
                    self._say(f"not terminating {m.id}: its tags changed ({whose(m)})")
            alive = [m.id for m in ours if m.state not in ENDED_STATES]
            if alive:
                self.terminate(alive)
            for m in ours:
                if not m.billed and m.host and self.run is not None and m.run_id == self.run.run_id:
                    ended.setdefault(m.host, m.ended_at or time.time())
            billed = [m for m in ours if m.billed]
            if not billed:
                return ended
            if self.clock() > deadline:
                raise ProviderError("machines still not ended: " + ", ".join(f"{m.id} ({m.state})" for m in billed),
                                    hint="run `fedctl teardown` again; `fedctl instances` shows them")
            self._say(f"waiting for {len(billed)} machine(s) to end")
            time.sleep(self.poll_s)
