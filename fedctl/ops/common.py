"""Helpers the lifecycle operations share: loading the inputs, the fleet of a run, progress events."""

from __future__ import annotations

import contextlib
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
    if experiment.on_finish == "poweroff":
        from fedctl.errors import ConfigError
        from fedctl.providers import provider_class

        if not provider_class(inventory.provider).can_power_off:
            raise ConfigError(config_path or "fedctl.yaml", "on_finish",
                              f"poweroff would power off provider {inventory.provider}'s shared nodes; the"
                              " allocation ends with the run (teardown cancels it)", ["stop", "teardown"])
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


class Session:
    """One command's connections: a Fleet every step of the command shares, so each host is
    connected once per command (``fedctl run`` with its progress loop included), not once per step
    or per progress tick.

    It is passed down explicitly, bound to the StateStore the command hands to every operation
    (``store.session``): ``open_fleet(store, records)`` returns a view of it. Closing it closes the
    connections and unbinds it. ``connector_factory`` replaces the real connectors (unit tests)."""

    def __init__(self, store: StateStore, pool: int = 32, connect_timeout: float = 10.0,
                 connector_factory: Any = None) -> None:
        from fedctl.fleet import Fleet

        self.store = store
        self.fleet = Fleet([], known_hosts=known_hosts_path(store), pool=int(os.environ.get("FEDCTL_POOL", pool)),
                           connect_timeout=connect_timeout, connector_factory=connector_factory)

    def view(self, records: Sequence[HostRecord]) -> Any:
        """A FleetView over ``records`` (hosts not connected yet are added to the session)."""
        from fedctl.fleet import FleetView

        infos = host_infos(records)
        self.fleet.add_hosts(infos)
        return FleetView(self.fleet, [h.name for h in infos])

    def close(self) -> None:
        if self.store.session is self:
            self.store.session = None
        self.fleet.close()

    def __enter__(self) -> "Session":
        self.store.session = self
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def session(
    store: StateStore, pool: int = 32, connect_timeout: float = 10.0, connector_factory: Any = None
) -> Iterator[Session]:
    """Bind one Session to ``store`` for the block (the store's own when it has one already: an
    operation inside a command reuses the command's connections), closed when the block ends."""
    if store.session is not None:
        yield store.session
        return
    with Session(store, pool, connect_timeout, connector_factory) as s:
        yield s


def open_fleet(store: StateStore, records: Sequence[HostRecord], pool: int = 32, connect_timeout: float = 10.0):
    """A Fleet over ``records`` that pins host keys into ``.fedctl/known_hosts``: a view of the
    store's session Fleet when one is bound (``session``), else a Fleet of its own."""
    from fedctl.fleet import Fleet

    if store.session is not None:
        return store.session.view(records)
    return Fleet(
        host_infos(records),
        known_hosts=known_hosts_path(store),
        pool=int(os.environ.get("FEDCTL_POOL", pool)),
        connect_timeout=connect_timeout,
    )


def server_record(state: RunState) -> HostRecord | None:
    """The host running the FL server, if the plan has one."""
    name = state.server.host
    return state.host(name) if name else None
