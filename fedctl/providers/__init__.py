"""Providers: which hosts exist for a run, and how they are acquired and released.

A registry (plain dict filled by a decorator that refuses duplicates) maps the inventory's
``provider`` value to a class. Built in: ``local`` (this machine), ``static`` (hosts you have) and
``aws`` (EC2 instances it creates; boto3 is imported only when one is used).
"""

from __future__ import annotations

import threading
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


def provider_class(name: str) -> type[Provider]:
    """The class registered as ``name``; an unknown one lists the valid names."""
    from fedctl.providers import aws, local, static  # noqa: F401  (registers the built-ins; all light)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(None, "provider", f"unknown provider {name!r}", sorted(_REGISTRY)) from None


def get_provider(name: str, **kwargs: object) -> Provider:
    """The provider registered as ``name``; an unknown one lists the valid names."""
    return provider_class(name)(**kwargs)  # type: ignore[arg-type]


#: the HostInfo.extra key where a machine-creating provider records the origin tag it put on a machine
ORIGIN_KEY = "origin"


def run_origin(state: "RunState", store: "StateStore") -> str:
    """The ``fedctl-origin`` tag of the run's machines: the one recorded when they were created
    (so a project folder that moved still owns its machines), else this folder's."""
    recorded = {r.info.extra.get(ORIGIN_KEY) for r in state.hosts} - {None, ""}
    if len(recorded) == 1:
        return str(recorded.pop())
    return folder_origin(store.root)


def for_run(state: "RunState", store: "StateStore", progress: Callable[[str], None] = lambda _m: None) -> Provider:
    """The provider of a run, built from what the state holds (the inventory may be gone by then).

    A machine-creating provider gets a RunContext whose journal writes each HostUpdate into the
    state file at once (ids the moment they are known, the API's launch and termination times)."""
    cls = provider_class(state.provider)
    if state.provider == "local":
        return cls(root=store.local_root)  # type: ignore[call-arg]
    if not cls.creates_machines:
        return cls(hosts=[r.info for r in state.hosts])  # type: ignore[call-arg]
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

    exp = state.experiment or {}
    port = (exp.get("server") or {}).get("port")  # "auto": chosen at start; then the group opens all TCP inside
    ctx = RunContext(
        run_id=state.run_id,
        origin=run_origin(state, store),
        journal=journal,
        progress=progress,
        fl_port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        max_hours=(exp.get("budget") or {}).get("max_hours"),
    )
    return cls(hosts=[r.info for r in state.hosts], run=ctx)  # type: ignore[call-arg]
