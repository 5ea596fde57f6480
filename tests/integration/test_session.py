"""One session per command: `fedctl run` connects to each host once for the whole run.

Counted in the sshd logs (``Accepted publickey`` is one SSH connection that logged in), with the
progress loop of a run without a terminal included, which once opened a new connection to every
host every interval.
"""

from __future__ import annotations

import pytest

from tests.integration.sshd import SshdFleet, sshd_available
from tests.integration.test_lifecycle import fedctl, project


def test_run_opens_at_most_two_connections_per_host(tmp_path):
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    fleet = SshdFleet(tmp_path / "sshd", 5, first_address=40)
    fleet.extra_args += ["-o", "LogLevel=INFO"]
    fleet.start_all()
    try:
        proj = project(tmp_path, fleet, rounds=30, round_s=0.15)
        res = fedctl(proj, "run", "--clients", "10", "-i", "inventory.yaml", "--yes", "--interval", "0.3",
                     timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "30" in res.stdout
        counts = {h.name: h.log.read_text(errors="replace").count("Accepted publickey") for h in fleet.hosts}
        assert all(1 <= n <= 2 for n in counts.values()), counts
    finally:
        fleet.stop_all()
