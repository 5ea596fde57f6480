"""LocalConnector: the Connector verbs on this machine."""

from __future__ import annotations

import os
import stat
import time

import pytest

from fedctl.connectors import connector_for
from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.errors import RemoteError


@pytest.fixture
def conn() -> LocalConnector:
    return LocalConnector(HostInfo("local1", "localhost", kind="local"))


def test_connector_for_local_kind():
    assert isinstance(connector_for(HostInfo("l", "localhost", kind="local")), LocalConnector)


def test_run_exit_code_streams_env_stdin(conn):
    r = conn.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.ok) == (7, "out\n", "err\n", False, False)
    assert conn.run('printf %s "$A"', env={"A": "x y"}).stdout == "x y"
    assert conn.run("tr a-z A-Z", stdin=b"abc").stdout == "ABC"
    assert conn.run("true").ok and conn.run("true").duration >= 0


def test_timeout_kills_the_process_group(conn, tmp_path):
    flag = tmp_path / "survived"
    t0 = time.monotonic()
    r = conn.run(f"echo started; (sleep 2; touch {flag}) & sleep 3", timeout=0.5)
    assert r.timed_out and r.exit_code == -1 and not r.ok
    assert r.stdout == "started\n"
    assert time.monotonic() - t0 < 2
    time.sleep(2.2)
    assert not flag.exists()


def test_large_output_both_streams(conn):
    r = conn.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2", timeout=30)
    assert r.ok and len(r.stdout) == 3_000_000 and len(r.stderr) == 3_000_000


def test_put_bytes_atomic_with_mode(conn, tmp_path):
    dst = tmp_path / "token"
    old_umask = os.umask(0o077)
    try:
        conn.put_bytes(b"one", str(dst), mode=0o644)  # mode wins over the umask
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644
    conn.put_bytes(b"secret", str(dst), mode=0o600)
    assert dst.read_bytes() == b"secret" and stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]  # no temp file left behind


def test_put_get_roundtrip_and_errors(conn, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(5000))
    src.chmod(0o750)
    conn.put(str(src), str(tmp_path / "b.bin"))
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o750
    conn.get(str(tmp_path / "b.bin"), str(tmp_path / "c.bin"))
    assert (tmp_path / "c.bin").read_bytes() == src.read_bytes()
    with pytest.raises(RemoteError, match="cannot fetch"):
        conn.get(str(tmp_path / "missing"), str(tmp_path / "d"))
    with pytest.raises(RemoteError, match="cannot write"):
        conn.put_bytes(b"x", str(tmp_path / "no" / "dir" / "f"))


def test_expand_home(conn):
    assert conn.expand("~/x") == os.path.expanduser("~/x")
    assert conn.expand("rel/~") == "rel/~"
    assert conn.home() == os.path.expanduser("~")


def test_context_manager(conn):
    with conn as c:
        assert c.run("true").ok
