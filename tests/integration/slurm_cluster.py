"""A real Slurm cluster on this machine, for tests: munged, slurmctld and several slurmd virtual nodes.

Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` packages run a whole cluster on one
machine: each virtual node ``flK`` is one ``slurmd -N flK`` on 127.0.0.1 with its own port. Everything
(munge key and socket, state, spool, logs, pid files) lives under one folder; the cluster name is unique
per instance, so two clusters (or a system one) never mix. Slurm's commands find this cluster through
``SLURM_CONF`` (``env()``). ``stop()`` cancels every job, stops each daemon by the pid it started and
kills any job process left (found by the cluster's unique name in its environment), so nothing is left.
Nothing here needs pytest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from tests.integration.sshd import pid_alive as _alive
from tests.waiting import wait_until

MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "srun")
#: the CPUs each virtual node declares (config_overrides: more than this machine has is fine)
NODE_CPUS = 4
#: the memory (MB) each virtual node declares
NODE_MEM_MB = 4000


def slurm_available() -> str | None:
    """None when a test Slurm cluster can run here, else the reason it cannot (for pytest.skip)."""
    missing = [p for p in (MUNGED, SLURMCTLD, SLURMD) if not os.path.exists(p)]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                "apt-get install slurmctld slurmd slurm-client munge")
    return None


def mknod_permitted(folder: Path) -> str | None:
    """None when character devices can be made in ``folder`` (root, or CAP_MKNOD: the fake GPUs
    need them), else why not (for pytest.skip)."""
    probe = Path(folder) / ".mknod-probe"
    try:
        os.mknod(probe, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError as e:
        return f"fake GPUs need mknod of a character device, not permitted here: {e}"
    probe.unlink()
    return None


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_with_env(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (this cluster's job processes), via /proc."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue  # exited while we looked, or not ours to read
    return found


def _stepds_in(root: Path) -> list[int]:
    """slurmstepd processes whose working directory is ``root`` (they inherit slurmd's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "slurmstepd":
                    continue
            if Path(os.readlink(f"/proc/{entry}/cwd")) == root.absolute():
                found.append(int(entry))
        except OSError:
            continue  # exited while we looked
    return found


class SlurmCluster:
    """One test cluster: ``start()`` it, use ``env()`` for Slurm commands, ``stop()`` it."""

    def __init__(self, root: Path, nodes: int = 4, partition: str = "debug", gpus_per_node: int = 0,
                 cpu_partition: str | None = None) -> None:
        self.root = Path(root)
        #: fake GPUs per node (``Gres=gpu:N``, ``gres.conf`` File= on character devices made with mknod
        #: under the cluster's folder: Slurm refuses regular files); 0 = none (the default cluster)
        self.gpus_per_node = gpus_per_node
        #: a second partition with the same nodes (a cluster's CPU partition, for the server's node)
        self.cpu_partition = cpu_partition
        self.names = [f"fl{i}" for i in range(1, nodes + 1)]
        self.partition = partition
        self.cluster = f"fl{secrets.token_hex(4)}"
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._munged_pid: int | None = None

    # -- configuration ---------------------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment Slurm commands need to talk to this cluster (``SLURM_CONF``)."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _write_conf(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.names))
        r = self.root
        lines = [
            f"ClusterName={self.cluster}",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmUser={_user()}",
            f"SlurmdUser={_user()}",
            f"AuthInfo=socket={self.munge_socket}",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "SwitchType=switch/none",
            "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1,bf_hetjob_immediate",
            # a virtual node declares more than this machine has; kill and reboot fast for tests
            "SlurmdParameters=config_overrides", "ReturnToService=2", "KillWait=2",
            "MinJobAge=2", "InactiveLimit=0", "SlurmdTimeout=30", "SlurmctldTimeout=30",
            "MessageTimeout=5",
        ]
        gres = ""
        if self.gpus_per_node:
            lines.append("GresTypes=gpu")
            gres = f" Gres=gpu:{self.gpus_per_node}"
            self._write_gres_conf()
        for name, port in zip(self.names, node_ports):
            lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={NODE_CPUS} RealMemory={NODE_MEM_MB}{gres} State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={','.join(self.names)} Default=YES "
                     "MaxTime=INFINITE State=UP")
        if self.cpu_partition:
            lines.append(f"PartitionName={self.cpu_partition} Nodes={','.join(self.names)} "
                         "MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _write_gres_conf(self) -> None:
        """``gres.conf``: each node's fake GPUs are character devices under ``<root>/dev/<node>``
        (``mknod``, as /dev/null's numbers: Slurm only checks that the file is a device)."""
        lines = []
        for name in self.names:
            folder = self.root / "dev" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(self.gpus_per_node):
                dev = folder / f"nvidia{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            files = f"{folder}/nvidia[0-{self.gpus_per_node - 1}]"
            lines.append(f"NodeName={name} Name=gpu File={files}")
        (self.root / "gres.conf").write_text("\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        """Start munged, slurmctld and one slurmd per node; return once ``sinfo`` shows all idle."""
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in self.names:
            (self.root / "spool" / name).mkdir(exist_ok=True)
        self._write_conf()
        try:
            self._start_munged(timeout)
            self._spawn("slurmctld", [SLURMCTLD, "-D", "-i", "-f", str(self.conf)])
            wait_until(lambda: self._ctld_answers(), timeout, interval=0.1,
                       what=f"slurmctld to answer ({self.root / 'log' / 'slurmctld.log'})")
            for name in self.names:
                self._spawn(name, [SLURMD, "-D", "-N", name, "-f", str(self.conf)])
            wait_until(lambda: self.idle_nodes() == set(self.names), timeout, interval=0.1,
                       what=f"nodes {self.names} idle in sinfo (logs in {self.root / 'log'})")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munged(self, timeout: float) -> None:
        d = self.root / "munge"
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        d.chmod(0o700)
        pidfile = d / "munged.pid"
        # munged forks into the background; its pid file tells the daemon's pid (-f: /tmp is
        # world-writable, which munged otherwise refuses for its socket's parents)
        subprocess.run([MUNGED, "-f", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={pidfile}", f"--log-file={d / 'munged.log'}",
                        f"--seed-file={d / 'munged.seed'}"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        text = wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout,
                          what="munged's pid file")
        self._munged_pid = int(text)
        wait_until(self.munge_socket.exists, timeout, what="munged's socket")

    def _spawn(self, key: str, argv: Sequence[str]) -> None:
        log = open(self.root / "log" / f"{key}.out", "ab")
        with log:
            # in the cluster's folder: slurmd's slurmstepd processes inherit it, which is how
            # job_pids tells this cluster's slurmstepd from another's
            self._procs[key] = subprocess.Popen(list(argv), env=self.env(), stdin=subprocess.DEVNULL, cwd=self.root,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _ctld_answers(self) -> bool:
        proc = self._procs.get("slurmctld")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"slurmctld exited {proc.returncode}: see {self.root / 'log'}")
        return self.run(["scontrol", "ping"], check=False).returncode == 0

    def idle_nodes(self) -> set[str]:
        """The nodes ``sinfo`` reports idle now."""
        for key, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{key} exited {proc.returncode}: see {self.root / 'log'}")
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout
        return {ln.split()[0] for ln in out.splitlines() if len(ln.split()) == 2 and ln.split()[1] == "idle"}

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this cluster; its output as text."""
        # in the cluster's folder: a job's default output file (slurm-%j.out) lands in the cwd
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, check=check,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.root)

    def job_ids(self) -> list[str]:
        """The ids of every job ``squeue`` shows (all users)."""
        out = self.run(["squeue", "-h", "-o", "%i"]).stdout
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def job_pids(self) -> list[int]:
        """Live processes of this cluster's jobs and steps: what they run (the cluster's name in
        their environment) and their slurmstepd (started in the cluster's folder)."""
        pids = set(_pids_with_env(f"SLURM_CLUSTER_NAME={self.cluster}")) | set(_stepds_in(self.root))
        return sorted(p for p in pids if _alive(p))

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still alive: its daemons and any job or step process."""
        pids = [p.pid for p in self._procs.values() if p.poll() is None]
        if self._munged_pid is not None and _alive(self._munged_pid):
            pids.append(self._munged_pid)
        return sorted(set(pids + self.job_pids()))

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job, stop the daemons by pid, kill what jobs left; idempotent."""
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            self.run(["scancel", "--full", "-u", _user()], check=False)
            try:
                wait_until(lambda: not self.job_ids(), timeout, interval=0.2, what="squeue to show no job")
            except (AssertionError, subprocess.SubprocessError) as e:
                print(f"slurm_cluster: jobs still listed at stop ({e}); killing their processes", file=sys.stderr)
        for key in [*self.names, "slurmctld"]:
            proc = self._procs.get(key)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        for pid in self.job_pids():
            _kill(pid)
        if self._munged_pid is not None and _alive(self._munged_pid):
            _kill(self._munged_pid, signal.SIGTERM)
            wait_until(lambda: not _alive(self._munged_pid or 0), timeout, what="munged to exit")
        wait_until(lambda: not self.leftover_pids(), timeout, what="no process of the cluster left")


@contextlib.contextmanager
def running_cluster(root: Path, gpus_per_node: int = 0, cpu_partition: str | None = None) -> Iterator[SlurmCluster]:
    """A started cluster under ``root`` for a block (a test module's fixture); stopped at its end,
    with no process of it left. ``gpus_per_node``: fake GPUs on each node (see ``SlurmCluster``)."""
    cluster = SlurmCluster(root, gpus_per_node=gpus_per_node, cpu_partition=cpu_partition).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.leftover_pids() == []


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it ended on its own between the look and the kill: that is what we wanted


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


if __name__ == "__main__":  # a manual check: python -m tests.integration.slurm_cluster /tmp/x
    import tempfile

    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="slurm"))
    t0 = time.monotonic()
    c = SlurmCluster(base).start()
    print(f"started in {time.monotonic() - t0:.1f}s: SLURM_CONF={c.conf}")
    print(c.run(["sinfo"]).stdout)
    c.stop()
    print("stopped; left:", c.leftover_pids())
