"""The loopback fleet recipe of inventories/loopback.yaml (inventories/loopback-sshd.sh), run as written.

It runs with a fresh HOME (no ``~/.ssh``, as on a new machine): the sshd it starts must serve SFTP to
fedctl's SSH connector. A port already taken must make it exit non-zero and say so (sshd forks before
it binds, so a recipe that trusts sshd's exit status reports success there).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.ssh import SSHConnector
from tests.integration.sshd import _current_user, _free_port, sshd_available
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "inventories" / "loopback-sshd.sh"


@pytest.fixture
def fresh_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def _recipe(tmp_path: Path, home: Path, port: int, hosts: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "FEDCTL_SSHD_DIR": str(tmp_path / "sshd"),
           "FEDCTL_SSHD_PORT": str(port), "FEDCTL_SSHD_HOSTS": hosts}
    return subprocess.run(["bash", str(RECIPE), *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _sshd_pids(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in (tmp_path / "sshd").glob("sshd-*.pid") if p.read_text().strip()]


def test_the_loopback_recipe_works_in_a_fresh_home_and_serves_sftp(tmp_path, fresh_home):
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    address, port = "127.0.0.60", _free_port("127.0.0.60")
    res = _recipe(tmp_path, fresh_home, port, "60 61")
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"sshd on {address}:{port} (pid " in res.stdout
        assert not (fresh_home / ".ssh").exists()  # nothing written to the user's ~/.ssh
        host = HostInfo(name="doc", address=address, port=port, user=_current_user(),
                        identity_file=str(tmp_path / "sshd" / "client_key"), workdir=str(tmp_path / "w"))
        src = tmp_path / "payload.txt"
        src.write_text("pushed")
        with SSHConnector(host, known_hosts=str(tmp_path / "known_hosts")) as conn:
            conn.put(str(src), str(tmp_path / "copied.txt"))
        assert (tmp_path / "copied.txt").read_text() == "pushed"
        # run again: it says the fleet already runs and still exits 0
        again = _recipe(tmp_path, fresh_home, port, "60 61")
        assert again.returncode == 0 and "already runs" in again.stdout, again.stdout + again.stderr
    finally:
        pids = _sshd_pids(tmp_path)
        stop = _recipe(tmp_path, fresh_home, port, "60 61", "stop")
    assert stop.returncode == 0, stop.stderr
    assert len(pids) == 2, pids
    wait_until(lambda: all(not os.path.exists(f"/proc/{p}") or _zombie(p) for p in pids), 10,
               what="the recipe's sshd processes to exit after `stop`")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_loopback_recipe_fails_loudly_when_the_port_is_taken(tmp_path, fresh_home):
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    address = "127.0.0.62"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((address, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = _recipe(tmp_path, fresh_home, port, "62")
    try:
        assert res.returncode != 0, res.stdout + res.stderr
        assert f"sshd on {address}:{port} is not listening" in res.stderr
        assert "Address already in use" in res.stderr  # sshd's own reason, from its log
        assert _sshd_pids(tmp_path) == []  # no pid file: nothing of ours listens
    finally:
        _recipe(tmp_path, fresh_home, port, "62", "stop")
