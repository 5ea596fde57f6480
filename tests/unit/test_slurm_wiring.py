"""How fedctl reaches the hosts of a ``provider: slurm`` run: the connector registry picks the
Slurm node connector from the host's settings, and deploy's spawn_detached hands over to a
connector's own. (The whole run on a real cluster: tests/integration/test_slurm_run.py.)"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Mapping

import pytest

from fedctl.connectors import connector_for, register_connector
from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.deploy import ProcRef, spawn_detached
from fedctl.errors import ConnectError
from fedctl.fleet import Fleet
from fedctl.provider_fields import MachineRecord
from fedctl.providers.slurm_config import SlurmHostSettings
from fedctl.providers.slurm_connector import SlurmStepConnector


def _slurm_host(**kw: Any) -> HostInfo:
    base: dict[str, Any] = dict(name="slurm-node-01", address="fl2", workdir="/shared/fedctl/slurm/r1/slurm-node-01",
                                provider_settings=SlurmHostSettings(nodes=2),
                                machine=MachineRecord(id="17", origin="o", done=("create", "wait")))
    return HostInfo(**{**base, **kw})


def test_a_slurm_host_gets_the_node_connector_from_its_settings() -> None:
    for conn in (connector_for(_slurm_host()), Fleet([_slurm_host()])._factory(_slurm_host())):
        assert isinstance(conn, SlurmStepConnector)
        assert (conn.job, conn.node) == ("17", "fl2")
        # the agent serves the run folder, the parent of the host's own workdir
        assert conn.agent_dir == PurePosixPath("/shared/fedctl/slurm/r1")
        assert conn.cli.connector is None  # no slurm.login: this machine is the login node


def test_a_slurm_host_without_a_job_is_a_connect_error_not_an_ssh_attempt() -> None:
    with pytest.raises(ConnectError, match="no Slurm job recorded for it"):
        connector_for(_slurm_host(address="(slurm node)", machine=None))


def test_other_hosts_keep_their_connectors() -> None:
    from fedctl.connectors.local import LocalConnector
    from fedctl.connectors.ssh import SSHConnector

    assert isinstance(connector_for(HostInfo(name="a", address="127.0.0.1", kind="local")), LocalConnector)
    assert isinstance(connector_for(HostInfo(name="b", address="127.0.0.1")), SSHConnector)


def test_registering_another_connector_for_a_provider_is_refused() -> None:
    register_connector("slurm", "fedctl.providers.slurm_connector:node_connector")  # the same again: fine
    with pytest.raises(RuntimeError, match="registered twice"):
        register_connector("slurm", "somewhere:else")


class _OwnSpawn(Connector):
    """A connector that starts processes its own way (as the Slurm node connector does)."""

    calls: list[tuple[Any, ...]] = []

    def connect(self) -> None:
        """Nothing to open."""

    def run(self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None) -> CommandResult:
        raise AssertionError("spawn_detached must not run deploy's own start command")

    def spawn_detached(self, command: str, cwd: str, pidfile: str, log: str,
                       env: Mapping[str, str] | None = None) -> ProcRef:
        self.calls.append((command, cwd, pidfile, log, dict(env or {})))
        return ProcRef(4242, 99, cwd)

    def get(self, remote: str, local: str) -> None:
        """Not used."""

    def close(self) -> None:
        """Nothing to close."""


def test_deploy_spawn_detached_hands_over_to_a_connectors_own() -> None:
    conn = _OwnSpawn(HostInfo(name="n", address="fl1"))
    ref = spawn_detached(conn, "python3 server.py", "/w/runs/r1", "/w/runs/r1/server.pid", "/w/runs/r1/server.log",
                         env={"A": "1"})
    assert ref == ProcRef(4242, 99, "/w/runs/r1")
    assert _OwnSpawn.calls == [("python3 server.py", "/w/runs/r1", "/w/runs/r1/server.pid", "/w/runs/r1/server.log",
                                {"A": "1"})]
