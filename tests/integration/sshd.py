"""Real OpenSSH ``sshd`` processes on loopback addresses, one per simulated host.

Used by the integration tests (through ``conftest.py``) and by ``bench/fanout.py``. Each host gets
127.0.0.N, its own free port, host key, sshd_config, pid file, log and workdir; all share one client
key. Nothing here needs pytest.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = "/run/sshd"


def sshd_available() -> str | None:
    """None when sshd can run here, else the reason it cannot (for pytest.skip)."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if not os.path.exists(SSH_KEYGEN):
        return "ssh-keygen is not installed"
    return None


def _keygen(path: Path) -> None:
    if path.exists():
        path.unlink()
        Path(str(path) + ".pub").unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL,
    )


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Direct and indirect children of ``pid`` (per-connection sshd processes), via /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # the process exited while we looked
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.extend(kids)
        todo.extend(kids)
    return out


@dataclass
class SshdHost:
    """One simulated host."""

    index: int
    name: str
    address: str
    port: int
    dir: Path
    workdir: Path
    host_key: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    @property
    def entry(self) -> str:
        """The known_hosts entry of this host."""
        return f"[{self.address}]:{self.port}"


class SshdFleet:
    """Start/stop/re-key ``n`` sshd processes under ``base`` (a temporary directory)."""

    def __init__(
        self, base: Path, n: int, first_address: int = 2, user: str | None = None, no_reexec: bool = False,
        network: str = "127.0.0", port: int | None = None, own_home: bool = False,
    ) -> None:
        """``network``: the first three octets (hosts get ``network.first_address`` onwards; the AWS
        tests use 127.0.200, where the moto server puts its instances). ``port``: one port for every
        host (what a cloud image has), else a free port each. ``own_home``: each host's sessions get
        ``$HOME`` in its own folder, so ``~/fedctl`` differs between hosts as on real machines."""
        if n < 1 or first_address + n > 255:
            raise ValueError("need 1..(255-first_address) hosts")
        if not network.startswith("127."):
            raise ValueError("loopback only: test hosts live in 127.0.0.0/8")
        self.own_home = own_home
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.user = user or _current_user()
        # ``-r``: no re-exec of sshd per connection (OpenSSH < 9.8). Saves CPU when a benchmark opens
        # 50 connections at once on a small machine; it changes nothing a client can observe.
        self.extra_args: list[str] = ["-r"] if no_reexec else []
        self.identity_file = str(self.base / "id_ed25519")
        if not os.path.exists(self.identity_file):
            _keygen(Path(self.identity_file))
        self.authorized_keys = self.base / "authorized_keys"
        self.authorized_keys.write_text(Path(self.identity_file + ".pub").read_text())
        self.hosts: list[SshdHost] = []
        for i in range(n):
            address = f"{network}.{first_address + i}"
            d = self.base / f"h{i + 1}"
            (d / "work").mkdir(parents=True, exist_ok=True)
            (d / "home").mkdir(exist_ok=True)
            host = SshdHost(
                index=i, name=f"h{i + 1}", address=address, port=port or _free_port(address), dir=d,
                workdir=d / "work", host_key=d / "ssh_host_ed25519_key", config=d / "sshd_config",
                log=d / "sshd.log",
            )
            _keygen(host.host_key)
            self._write_config(host)
            self.hosts.append(host)

    def _write_config(self, h: SshdHost) -> None:
        h.config.write_text(
            "\n".join([
                f"ListenAddress {h.address}:{h.port}",
                f"HostKey {h.host_key}",
                f"PidFile {h.dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin yes",
                "StrictModes no",
                "UsePAM no",
                "MaxStartups 200",
                "MaxSessions 200",
                "Subsystem sftp internal-sftp",
                "PrintMotd no",
                "LogLevel ERROR",
                # bash sources ~/.bashrc for sshd sessions only while SHLVL < 2; here that file runs
                # `pyenv init` (~130 ms CPU per command), which would swamp what the tests measure.
                f"SetEnv SHLVL=1 HOME={h.dir / 'home'}" if self.own_home else "SetEnv SHLVL=1",
                "",
            ])
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    def start_all(self, timeout: float = 20.0) -> "SshdFleet":
        """Start every sshd (all at once) and wait until each answers with its banner."""
        for i in range(len(self.hosts)):
            self._spawn(i)
        for i in range(len(self.hosts)):
            self._wait_ready(i, timeout)
        return self

    def start(self, i: int, timeout: float = 10.0) -> None:
        """(Re)start host ``i``'s sshd on the same address and port."""
        self._spawn(i)
        self._wait_ready(i, timeout)

    def _spawn(self, i: int) -> None:
        h = self.hosts[i]
        if h.pid is not None:
            return
        if os.geteuid() == 0:
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)  # sshd refuses to start without it
        logf = open(h.log, "ab")
        try:
            h.proc = subprocess.Popen(
                [SSHD, "-D", "-e", *self.extra_args, "-f", str(h.config)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            )
        finally:
            logf.close()

    def _wait_ready(self, i: int, timeout: float) -> None:
        h = self.hosts[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if h.proc is None or h.proc.poll() is not None:
                raise RuntimeError(f"sshd for {h.name} exited: {h.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((h.address, h.port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {h.name} not ready at {h.address}:{h.port} after {timeout}s")

    def stop(self, i: int) -> None:
        """Kill host ``i``'s sshd and its live sessions: the host looks dead (connection refused)."""
        h = self.hosts[i]
        if h.proc is None:
            return
        if h.proc.poll() is None:
            kids = _children(h.proc.pid)
            h.proc.send_signal(signal.SIGTERM)
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                h.proc.wait(5)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait()
        h.proc = None

    def stop_all(self) -> None:
        for i in range(len(self.hosts)):
            self.stop(i)

    def regen_host_key(self, i: int) -> None:
        """Give host ``i`` a new host key (restarting its sshd): what a MITM or a reinstall looks like."""
        running = self.hosts[i].pid is not None
        self.stop(i)
        _keygen(self.hosts[i].host_key)
        if running:
            self.start(i)

    def host_key_line(self, i: int) -> str:
        """``<type> <base64>`` of host ``i``'s public key."""
        parts = Path(str(self.hosts[i].host_key) + ".pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    # ---- what fedctl consumes --------------------------------------------------------------------

    def host_infos(self, **overrides: Any) -> list[Any]:
        """``HostInfo`` objects for the hosts (overrides apply to all of them)."""
        from fedctl.connectors.base import HostInfo

        out = []
        for h in self.hosts:
            kw: dict[str, Any] = dict(
                name=h.name, address=h.address, port=h.port, user=self.user,
                identity_file=self.identity_file, workdir=str(h.workdir), python=sys.executable,
                roles=("server",) if h.index == 0 else ("client",),
            )
            kw.update(overrides)
            out.append(HostInfo(**kw))
        return out

    def write_inventory(self, path: str | os.PathLike[str], **overrides: Any) -> Path:
        """Write a fedctl ``inventory.yaml`` for these hosts; ``overrides`` go into ``defaults``."""
        import yaml

        defaults: dict[str, Any] = {
            "user": self.user,
            "port": 22,
            "identity_file": self.identity_file,
            "workdir": "~/fedctl",
            "python": sys.executable,  # the sshd session's PATH has no pyenv shims
            "host_key_policy": "accept-new",
        }
        defaults.update(overrides)
        hosts = [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "workdir": str(h.workdir),
                "roles": ["server"] if h.index == 0 else ["client"],
            }
            for h in self.hosts
        ]
        p = Path(path)
        p.write_text(yaml.safe_dump({"provider": "static", "defaults": defaults, "hosts": hosts}, sort_keys=False))
        return p

    def __enter__(self) -> "SshdFleet":
        return self.start_all()

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
