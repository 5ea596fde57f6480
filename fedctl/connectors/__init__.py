"""Connectors: one module per way of reaching a host. Import the concrete ones lazily."""

from fedctl.connectors.base import CommandResult, Connector, HostInfo

__all__ = ["CommandResult", "Connector", "HostInfo", "connector_for"]


def connector_for(host: HostInfo, known_hosts: str | None = None) -> Connector:
    """Build the connector for ``host`` (local subprocesses or SSH), importing paramiko only if needed."""
    if host.kind == "local":
        from fedctl.connectors.local import LocalConnector

        return LocalConnector(host)
    from fedctl.connectors.ssh import SSHConnector

    return SSHConnector(host, known_hosts=known_hosts)
