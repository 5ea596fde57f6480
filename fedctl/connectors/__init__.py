"""Connectors: one module per way of reaching a host. Import the concrete ones lazily.

A host is reached locally (``kind: local``), over SSH (every other host), or by the connector its
provider registered for its settings type (``register_connector``: a Slurm node is reached through
job steps of its allocation). Nothing here names a provider.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from fedctl.connectors.base import CommandResult, Connector, HostInfo

__all__ = ["CommandResult", "Connector", "HostInfo", "connector_for", "register_connector"]


class ConnectorFactory(Protocol):
    """What a provider registers: build the connector of one of its hosts."""

    def __call__(self, host: HostInfo, known_hosts: str | None = None, connect_timeout: float = 10.0) -> Connector:
        ...


#: provider settings type -> "module:function" of its ConnectorFactory (imported when first used)
_BY_SETTINGS: dict[str, str] = {}


def register_connector(provider: str, target: str) -> None:
    """Hosts whose ``provider_settings`` are ``provider``'s are reached with the factory ``target``
    ("module:function", imported lazily). Registering another target for a name is a bug."""
    if _BY_SETTINGS.get(provider, target) != target:
        raise RuntimeError(f"a connector for {provider!r} hosts is registered twice")
    _BY_SETTINGS[provider] = target


def connector_for(host: HostInfo, known_hosts: str | None = None, connect_timeout: float = 10.0) -> Connector:
    """Build the connector for ``host``: its provider's registered one, else local subprocesses or
    SSH by ``host.kind``, importing paramiko only if needed."""
    settings = host.provider_settings
    target = _BY_SETTINGS.get(settings.provider) if settings is not None else None
    if target is not None:
        module, _, name = target.partition(":")
        factory: ConnectorFactory = getattr(importlib.import_module(module), name)
        return factory(host, known_hosts=known_hosts, connect_timeout=connect_timeout)
    if host.kind == "local":
        from fedctl.connectors.local import LocalConnector

        return LocalConnector(host)
    from fedctl.connectors.ssh import SSHConnector

    return SSHConnector(host, known_hosts=known_hosts, connect_timeout=connect_timeout)
