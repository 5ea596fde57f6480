"""SSHConnector and Fleet against real OpenSSH sshd processes on loopback."""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from fedctl.config import inventory
from fedctl.connectors.base import HostInfo
from fedctl.connectors.ssh import SSHConnector
from fedctl.errors import ConnectError, HostKeyError
from fedctl.fleet import Fleet
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _conn(host: HostInfo, known_hosts: str, **kw: object) -> SSHConnector:
    return SSHConnector(host, known_hosts=known_hosts, **kw)  # type: ignore[arg-type]


def test_run_exit_codes_stdout_stderr_env_stdin(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    with _conn(f.host_infos()[0], known_hosts) as c:
        r = c.run("echo out; echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, "out\n", "err\n", False)
        assert c.run("true").ok
        r = c.run('printf "%s" "$V"', env={"V": "a b; $(touch /tmp/pwned) 'q\" \n"})
        assert r.stdout == "a b; $(touch /tmp/pwned) 'q\" \n"
        assert c.run("wc -c", stdin=b"x" * 300_000).stdout.strip() == "300000"
        with pytest.raises(ValueError):
            c.run("true", env={"BAD-NAME": "x"})


def test_timeout_closes_channel_and_kills_command(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    flag = f.hosts[0].workdir / "survived"
    with _conn(f.host_infos()[0], known_hosts) as c:
        t0 = time.monotonic()
        # the command's own sleep is the slow work that the timeout cuts short
        r = c.run(f"echo started; sleep 3; touch {flag}", timeout=0.8)
        assert r.timed_out and r.exit_code == -1 and not r.ok
        assert r.stdout == "started\n"
        assert time.monotonic() - t0 < 2.5
        # its shell (the only process whose command line names the flag) is gone well before the
        # 3 s it would need to touch the flag
        wait_until(lambda: subprocess.run(["pgrep", "-f", str(flag)], capture_output=True).returncode == 1,
                   3 - (time.monotonic() - t0) - 0.3, what="the timed-out command to be killed on the host")
        assert not flag.exists(), "the timed-out command kept running on the host"
        assert c.run("echo again").stdout == "again\n"  # the connection is still usable


def test_large_output_on_both_streams_does_not_deadlock(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    with _conn(f.host_infos()[0], known_hosts) as c:
        r = c.run("head -c 8000000 /dev/zero | tr '\\0' a; head -c 6000000 /dev/zero | tr '\\0' b >&2", timeout=60)
        assert r.ok
        assert len(r.stdout) == 8_000_000 and set(r.stdout) == {"a"}
        assert len(r.stderr) == 6_000_000


def test_put_get_put_bytes_and_mode(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    work = f.hosts[0].workdir
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(200_000))
    src.chmod(0o640)
    with _conn(f.host_infos()[0], known_hosts) as c:
        c.put(str(src), str(work / "dst.bin"))
        assert (work / "dst.bin").read_bytes() == src.read_bytes()
        assert stat.S_IMODE((work / "dst.bin").stat().st_mode) == 0o640
        c.put_bytes(b"token-value", str(work / "token"), mode=0o600)
        assert stat.S_IMODE((work / "token").stat().st_mode) == 0o600
        c.put_bytes(b"new", str(work / "token"), mode=0o600)  # overwrite in place
        assert (work / "token").read_bytes() == b"new"
        assert [p.name for p in work.iterdir() if "fedctl-tmp" in p.name] == []
        c.get(str(work / "dst.bin"), str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        assert c.sftp() is c.sftp()  # one SFTP session, reused


def test_tilde_expansion_uses_remote_home(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    home = pwd.getpwuid(os.getuid()).pw_dir  # sshd takes HOME from passwd
    with _conn(f.host_infos()[0], known_hosts) as c:
        assert c.home() == home
        assert c.expand("~/fedctl/x") == f"{home}/fedctl/x"
        assert c.expand("/abs/~") == "/abs/~"
        name = f".fedctl-test-{os.getpid()}"
        try:
            c.put_bytes(b"hi", f"~/{name}")
            assert Path(home, name).read_bytes() == b"hi"
        finally:
            Path(home, name).unlink(missing_ok=True)


def test_accept_new_pins_key_and_reuses_connection(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    c = _conn(f.host_infos()[0], known_hosts)
    c.connect()
    c.connect()  # idempotent
    assert c.connects == 1
    lines = Path(known_hosts).read_text().splitlines()
    assert lines == [f"{f.hosts[0].entry} {f.host_key_line(0)}"]
    c.close()
    c.connect()  # second connect verifies against the pin and does not pin again
    c.close()
    assert Path(known_hosts).read_text().splitlines() == lines


def test_changed_host_key_aborts_with_ssh_keygen_hint(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    host = f.host_infos()[0]
    with _conn(host, known_hosts):
        pass
    f.regen_host_key(0)
    c = _conn(host, known_hosts)
    t0 = time.monotonic()
    with pytest.raises(HostKeyError) as ei:
        c.connect()
    assert time.monotonic() - t0 < 3  # not retried
    assert ei.value.hint and f"ssh-keygen -f {os.path.abspath(known_hosts)} -R '[{host.address}]:{host.port}'" in ei.value.hint
    assert ei.value.exit_code == 5
    # the pin is not silently replaced
    assert f.host_key_line(0) not in Path(known_hosts).read_text()


def test_user_known_hosts_is_honoured_read_only(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    user_kh = tmp_path / "user_known_hosts"
    user_kh.write_text(f"{f.hosts[0].entry} {f.host_key_line(0)}\n")
    before = user_kh.read_text()
    host = dataclasses.replace(f.host_infos()[0], host_key_policy="strict")
    with _conn(host, known_hosts, user_known_hosts=str(user_kh)) as c:
        assert c.run("true").ok
    f.regen_host_key(0)
    with pytest.raises(HostKeyError) as ei:
        _conn(host, known_hosts, user_known_hosts=str(user_kh)).connect()
    assert ei.value.hint is not None and f"-f {user_kh} -R" in ei.value.hint
    assert user_kh.read_text() == before


def test_strict_rejects_unknown_key(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    host = dataclasses.replace(f.host_infos()[0], host_key_policy="strict")
    with pytest.raises(HostKeyError) as ei:
        _conn(host, known_hosts).connect()
    assert ei.value.hint is not None and "ssh-keyscan" in ei.value.hint
    assert not Path(known_hosts).exists()


def test_policy_off_accepts_changed_key_with_warning(sshd_fleet, known_hosts, caplog):
    f = sshd_fleet(1)
    host = f.host_infos()[0]
    with _conn(host, known_hosts):
        pass
    f.regen_host_key(0)
    off = dataclasses.replace(host, host_key_policy="off")
    with caplog.at_level("WARNING", logger="fedctl.ssh"):
        for _ in range(2):  # warned on every connect, not once per process
            with _conn(off, known_hosts) as c:
                assert c.run("true").ok
    assert sum("NOT verified" in r.getMessage() for r in caplog.records) == 2


def test_unreachable_host_fails_fast_with_bounded_retries(sshd_fleet, known_hosts):
    f = sshd_fleet(1)
    f.stop(0)
    c = _conn(f.host_infos()[0], known_hosts, retries=2, backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises(ConnectError) as ei:
        c.connect()
    assert time.monotonic() - t0 < 2
    assert "after 3 attempt(s)" in str(ei.value) and "refused" in str(ei.value)
    assert not isinstance(ei.value, HostKeyError)


def test_auth_failure_is_not_retried(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    host = dataclasses.replace(f.host_infos()[0], identity_file=str(other))
    c = _conn(host, known_hosts, retries=5, backoff=1.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="authentication failed"):
        c.connect()
    assert time.monotonic() - t0 < 3


def test_a_missing_identity_file_is_named_at_once_not_retried(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(1)
    missing = tmp_path / "no_such_key"
    host = dataclasses.replace(f.host_infos()[0], identity_file=str(missing))
    c = _conn(host, known_hosts, retries=5, backoff=1.0)
    sleeps: list[float] = []
    c._sleep = sleeps.append  # a retry would sleep first
    with pytest.raises(ConnectError) as ei:
        c.connect()
    msg = str(ei.value)
    assert f"host {host.name}: identity_file {missing} does not exist" in msg, msg
    assert "attempt" not in msg and sleeps == [] and c.connects == 0


def test_an_unreadable_identity_file_is_named_at_once(sshd_fleet, known_hosts, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    f = sshd_fleet(1)
    key = tmp_path / "locked_key"
    key.write_bytes(Path(f.identity_file).read_bytes())
    key.chmod(0)
    host = dataclasses.replace(f.host_infos()[0], identity_file=str(key))
    c = _conn(host, known_hosts, retries=5, backoff=1.0)
    sleeps: list[float] = []
    c._sleep = sleeps.append
    with pytest.raises(ConnectError, match=r"identity_file .*locked_key cannot be read") as ei:
        c.connect()
    assert "attempt" not in str(ei.value) and sleeps == []


def test_password_env_unset_names_the_variable(sshd_fleet, known_hosts, monkeypatch):
    f = sshd_fleet(1)
    monkeypatch.delenv("FEDCTL_TEST_PW", raising=False)
    host = dataclasses.replace(f.host_infos()[0], password_env="FEDCTL_TEST_PW")
    with pytest.raises(ConnectError, match="FEDCTL_TEST_PW"):
        _conn(host, known_hosts).connect()


def test_proxy_jump_chain_via_ssh_config(sshd_fleet, known_hosts, tmp_path, _isolated_home):
    f = sshd_fleet(3)
    a, b, target = f.hosts
    cfg = _isolated_home / ".ssh" / "config"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(
        f"Host jump1\n  HostName {a.address}\n  Port {a.port}\n  User {f.user}\n  IdentityFile {f.identity_file}\n"
        f"Host jump2\n  HostName {b.address}\n  Port {b.port}\n  User {f.user}\n  IdentityFile {f.identity_file}\n"
        f"Host fedtarget\n  HostName {target.address}\n  ProxyJump jump1,jump2\n"
    )
    host = HostInfo(name="t", address="fedtarget", port=target.port, user=f.user, identity_file=f.identity_file)
    with _conn(host, known_hosts) as c:
        assert c.run("true").ok
        assert len(c._hops) == 2
        # the session really goes through jump2: when jump2 dies, so does the connection to the target
        f.stop(1)
        wait_until(lambda: not c.connected, 5, what="the connection to drop with jump2")
    pinned = Path(known_hosts).read_text()
    assert a.entry in pinned and b.entry in pinned and target.entry in pinned


def test_fleet_five_hosts_one_dead_one_connection_each(sshd_fleet, known_hosts):
    f = sshd_fleet(5)
    f.stop(2)
    made: list[SSHConnector] = []

    def factory(h: HostInfo) -> SSHConnector:
        c = SSHConnector(h, known_hosts=known_hosts, connect_timeout=5, retries=1, backoff=0.1)
        made.append(c)
        return c

    hosts = f.host_infos()
    with Fleet(hosts, connector_factory=factory) as fleet:
        t0 = time.monotonic()
        res = fleet.run("hostname >/dev/null; echo $SSH_CONNECTION")
        assert time.monotonic() - t0 < 5
        assert [r.host for r in res] == [h.name for h in hosts]
        assert [r.host for r in res.failed] == ["h3"]
        assert res.failed[0].error is not None and "refused" in res.failed[0].error
        assert isinstance(res.failed[0].exception, ConnectError)
        first = {r.host: r.value.stdout.split()[1] for r in res.succeeded}  # client port per host
        again = fleet.run("echo $SSH_CONNECTION")
        assert [r.host for r in again.failed] == ["h3"]
        assert {r.host: r.value.stdout.split()[1] for r in again.succeeded} == first  # same TCP connection
        assert len(made) == 5
        # parallel first connects pinned each live host exactly once
        assert sorted(Path(known_hosts).read_text().splitlines()) == sorted(
            f"{h.entry} {f.host_key_line(h.index)}" for h in f.hosts if h.name != "h3"
        )
        assert all(c.connects == 1 for c in made if c.host.name != "h3")
        assert next(c for c in made if c.host.name == "h3").connects == 0
    assert not any(c.connected for c in made)


def test_written_inventory_loads_and_drives_a_fleet(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(2)
    path = f.write_inventory(tmp_path / "inventory.yaml", host_key_policy="accept-new")
    inv = inventory.load_inventory(str(path))
    hosts = list(inv.hosts)
    assert [(h.name, h.address, h.port) for h in hosts] == [(h.name, h.address, h.port) for h in f.hosts]
    with Fleet(hosts, known_hosts=known_hosts) as fleet:
        res = fleet.run(f"{hosts[0].python} -c 'import sys; print(sys.version_info[0])'")
    assert res.ok, [r.error for r in res.failed]
    assert [r.value.stdout for r in res] == ["3\n", "3\n"]


def test_proxy_command_from_inventory_extra(sshd_fleet, known_hosts, tmp_path):
    f = sshd_fleet(2)
    jump, target = f.hosts
    proxy = (
        f"ssh -q -i {f.identity_file} -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
        f" -o UserKnownHostsFile={tmp_path / 'proxy_known_hosts'} -p {jump.port}"
        f" -W {target.address}:{target.port} {f.user}@{jump.address}"
    )
    host = dataclasses.replace(f.host_infos()[1], extra={"proxy_command": proxy})
    with _conn(host, known_hosts) as c:
        assert c.run("echo via-proxy").stdout == "via-proxy\n"
    assert target.entry in Path(known_hosts).read_text()


def test_parallel_first_connects_pin_each_key_once(known_hosts):
    """Many threads pinning at once (a 50-host first connect) leave a well-formed file, one line per
    host; a second, different key for an already pinned entry is refused, not appended."""
    import threading

    import paramiko

    from fedctl.connectors.hostkeys import KnownHosts

    keys = [paramiko.Ed25519Key.from_private_key_file(_gen_key(Path(known_hosts).parent, i)) for i in range(20)]
    kh = KnownHosts(known_hosts, None)
    errors: list[BaseException] = []

    def pin(i: int) -> None:
        try:
            kh.pin(f"[127.0.0.{i % 10 + 2}]:2222", keys[i % 10], f"h{i}")  # every entry pinned twice
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=pin, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = Path(known_hosts).read_text().splitlines()
    assert len(lines) == 10 and len(set(lines)) == 10
    assert stat.S_IMODE(os.stat(known_hosts).st_mode) == 0o600
    with pytest.raises(HostKeyError) as ei:
        kh.pin("[127.0.0.2]:2222", keys[15], "h2")
    assert ei.value.hint is not None
    assert f"ssh-keygen -f {os.path.abspath(known_hosts)} -R '[127.0.0.2]:2222'" in ei.value.hint
    assert len(Path(known_hosts).read_text().splitlines()) == 10


def _gen_key(directory: Path, i: int) -> str:
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"k{i}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)
