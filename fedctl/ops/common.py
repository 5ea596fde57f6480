"""Helpers the lifecycle operations share: loading the inputs, the fleet of a run, progress events."""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.state import HostRecord, RunState, StateStore

#: progress callback: operations report what they are doing; the CLI decides how to show it
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A Progress that shows nothing."""


@dataclass(frozen=True)
class Inputs:
    """The validated inventory, experiment and plan of a run (everything checked before any SSH)."""

    inventory: object  # fedctl.config.inventory.Inventory
    experiment: object  # fedctl.config.experiment.Experiment
    plan: object  # fedctl.plan.Plan


def load_inputs(
    inventory_path: str | None,
    config_path: str | None,
    overrides: Sequence[str] = (),
    clients: int | None = None,
    rounds: int | None = None,
    store: StateStore | None = None,
    cpu_count: int | None = None,
) -> Inputs:
    """Validate inventory + experiment completely and make the plan. Raises ConfigError/PlanError."""
    from fedctl.config.experiment import load_experiment
    from fedctl.config.inventory import load_inventory
    from fedctl.plan import make_plan

    # the inventory layer bounds its text and refuses NULs in environment values (parse_inventory)
    inventory = load_inventory(inventory_path)
    experiment = load_experiment(config_path, overrides, clients=clients, rounds=rounds)
    root = store.root.parent if store else Path.cwd()
    plan = make_plan(inventory, experiment, experiment.clients, cpu_count=cpu_count, cwd=root)
    return Inputs(inventory, experiment, plan)


def known_hosts_path(store: StateStore) -> str:
    """fedctl's host-key pin file. Nothing is created here: the pin file (and ``.fedctl/``) appear
    only when a key is pinned, so a read-only command leaves no ``.fedctl/`` behind."""
    return str(store.known_hosts)


def host_infos(records: Sequence[HostRecord]) -> list[HostInfo]:
    """HostInfo of each record with the workdir resolved when known."""
    from dataclasses import replace

    return [replace(r.info, workdir=r.workdir) if r.workdir else r.info for r in records]


_SESSION: contextvars.ContextVar[Any] = contextvars.ContextVar("fedctl_session", default=None)


@contextlib.contextmanager
def session(
    store: StateStore, pool: int = 32, connect_timeout: float = 10.0, connector_factory: Any = None
) -> Iterator[None]:
    """One Fleet for the whole command: every ``open_fleet`` inside the block returns a view of it,
    so each host is connected once per command (``fedctl run`` with its progress loop included),
    not once per step or per progress tick. Closed when the block ends. ``connector_factory``
    replaces the real connectors (the fakes of unit tests)."""
    from fedctl.fleet import Fleet

    if _SESSION.get() is not None:  # nested: the outer session already owns a Fleet
        yield
        return
    fleet = Fleet([], known_hosts=known_hosts_path(store), pool=int(os.environ.get("FEDCTL_POOL", pool)),
                  connect_timeout=connect_timeout, connector_factory=connector_factory)
    token = _SESSION.set(fleet)
    try:
        yield
    finally:
        _SESSION.reset(token)
        fleet.close()


def open_fleet(store: StateStore, records: Sequence[HostRecord], pool: int = 32, connect_timeout: float = 10.0):
    """A Fleet over ``records`` that pins host keys into ``.fedctl/known_hosts``: a view of the
    command's session Fleet when one is open (``session``), else a Fleet of its own."""
    from fedctl.fleet import Fleet, FleetView

    infos = host_infos(records)
    shared = _SESSION.get()
    if shared is not None:
        shared.add_hosts(infos)
        return FleetView(shared, [h.name for h in infos])
    return Fleet(
        infos,
        known_hosts=known_hosts_path(store),
        pool=int(os.environ.get("FEDCTL_POOL", pool)),
        connect_timeout=connect_timeout,
    )


def server_record(state: RunState) -> HostRecord | None:
    """The host running the FL server, if the plan has one."""
    name = state.server.get("host")
    return state.host(name) if name else None
