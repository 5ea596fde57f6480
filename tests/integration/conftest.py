"""Integration fixtures: real sshd processes on loopback (see ``sshd.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from tests.integration.sshd import SshdFleet, sshd_available

if TYPE_CHECKING:
    from tests.integration.slurm_cluster import SlurmCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's ~/.ssh (config, known_hosts, keys) out of the tests; sshd is unaffected
    (it takes the home directory from passwd, not from $HOME)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def sshd_fleet(tmp_path: Path) -> Iterator[Callable[[int], SshdFleet]]:
    """Factory: ``sshd_fleet(n)`` starts ``n`` sshd hosts (127.0.0.2 ...) and stops them after the test."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    started: list[SshdFleet] = []
    next_address = [2]

    def make(n: int) -> SshdFleet:
        fleet = SshdFleet(tmp_path / f"sshd{len(started)}", n, first_address=next_address[0])
        next_address[0] += n  # two fleets in one test get distinct addresses
        started.append(fleet)
        return fleet.start_all()

    try:
        yield make
    finally:
        for fleet in started:
            fleet.stop_all()


@pytest.fixture
def known_hosts(tmp_path: Path) -> str:
    """fedctl's own known_hosts file for this test (not created yet)."""
    return str(tmp_path / ".fedctl" / "known_hosts")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator["SlurmCluster"]:
    """A real Slurm cluster (``slurm_cluster.py``) for one test module, started in well under a
    second and stopped at its end with no process left; skipped with the reason where Slurm is
    missing. A module that needs another cluster (GPUs, a longer MinJobAge) defines its own."""
    from tests.integration.slurm_cluster import running_cluster, slurm_available

    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
