"""Providers: which hosts exist for a run, and how they are acquired and released.

A registry (plain dict filled by a decorator that refuses duplicates) maps the inventory's
``provider`` value to a class; every class is built from a run the same way (``from_run``), so
nothing here branches on a provider's name. Built in: ``local`` (this machine) and ``static``
(hosts you have), host sources with no lifecycle, and ``aws`` (EC2 instances it creates; boto3 is
imported only when one is used), a ``MachineProvider`` (``fedctl.providers.lifecycle``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from fedctl.errors import ConfigError, StateError
from fedctl.providers.base import HostUpdate, Provider, RunContext, folder_origin

if TYPE_CHECKING:
    from fedctl.state import RunState, StateStore

_REGISTRY: dict[str, type[Provider]] = {}
P = TypeVar("P", bound=type[Provider])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make a provider available under ``name`` (duplicates are a bug)."""

    def deco(cls: P) -> P:
        if name in _REGISTRY:
            raise RuntimeError(f"provider {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def load_builtins() -> None:
    """Import the built-in providers, which registers them (all light: no cloud SDK)."""
    from fedctl.providers import aws, local, slurm, static  # noqa: F401


def registered() -> dict[str, type[Provider]]:
    """Every provider by name (the built-ins imported first)."""
    load_builtins()
    return dict(_REGISTRY)


def provider_class(name: str) -> type[Provider]:
    """The class registered as ``name``; an unknown one lists the valid names."""
    load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(None, "provider", f"unknown provider {name!r}", sorted(_REGISTRY)) from None


def run_origin(state: "RunState", store: "StateStore") -> str:
    """The ``fedctl-origin`` tag of the run's machines: the one recorded when they were created
    (so a project folder that moved still owns its machines), else this folder's."""
    recorded = {r.info.machine.origin for r in state.hosts if r.info.machine is not None} - {None, ""}
    if len(recorded) == 1:
        return str(recorded.pop())
    return folder_origin(store.root)


def _run_limits(state: "RunState") -> tuple[int | None, float | None]:
    """The FL server's port (None while it is "auto": chosen at start; then the group opens all TCP
    inside) and the budget's max_hours, from the run's typed configuration."""
    return state.experiment.server.fixed_port, state.experiment.budget.max_hours


def for_run(state: "RunState", store: "StateStore", progress: Callable[[str], None] = lambda _m: None) -> Provider:
    """The provider of a run, built from what the state holds (the inventory may be gone by then).

    Its RunContext's journal writes each HostUpdate into the state file at once (a machine-creating
    provider journals each step's intent before it runs, machine ids the moment they are known, the
    API's launch and termination times)."""
    cls = provider_class(state.provider)
    lock = threading.Lock()

    def journal(update: HostUpdate) -> None:
        with lock:
            try:
                rec = state.host(update.name)
            except StateError:  # a machine of a host the plan dropped: teardown finds it by its tag
                return
            if update.info is not None:
                rec.info = update.info
            if update.acquired_at is not None:
                rec.acquired_at = update.acquired_at
            if update.released_at is not None:
                rec.released_at = update.released_at
            store.save(state)

    fl_port, max_hours = _run_limits(state)
    ctx = RunContext(run_id=state.run_id, origin=run_origin(state, store), journal=journal, progress=progress,
                     fl_port=fl_port, max_hours=max_hours, local_root=Path(store.local_root))
    return cls.from_run([r.info for r in state.hosts], ctx)
