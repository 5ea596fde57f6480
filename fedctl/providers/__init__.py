"""Providers: which hosts exist for a run, and how they are acquired and released.

A registry (plain dict filled by a decorator that refuses duplicates) maps the inventory's
``provider`` value to a class. Built in: ``local`` (this machine) and ``static`` (hosts you have).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from fedctl.errors import ConfigError
from fedctl.providers.base import Provider

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


def get_provider(name: str, **kwargs: object) -> Provider:
    """The provider registered as ``name``; an unknown one lists the valid names."""
    from fedctl.providers import local, static  # noqa: F401  (registers the built-ins)

    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(None, "provider", f"unknown provider {name!r}", sorted(_REGISTRY)) from None
    return cls(**kwargs)  # type: ignore[arg-type]
