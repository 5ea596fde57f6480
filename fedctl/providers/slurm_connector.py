"""A connector to one node of a fedctl Slurm allocation: commands as short job steps, files on the shared filesystem.

``run`` executes a command on the node as a job step of the run's allocation, started from the
login node: ``srun --jobid=JOB --overlap -N1 -n1 -w NODE sh -c COMMAND`` (Slurm accounts and
limits it, and it ends with the command). Files are read and written on the login node (this
machine, or ``slurm.login`` over SSH): the cluster's shared filesystem makes them the node's too.

Not for long-running processes: a detached process (``setsid nohup ... &``) outlives its step only
where Slurm's process tracking loses it, and is killed at the step's end where it does not
(proctrack/cgroup). ``spawn_detached`` (the counterpart of ``fedctl.deploy.spawn_detached``) hands
them to the allocation's agent instead, which runs each as its own job step; its pid file is
written the same way, so fedctl's stop and teardown find and signal it as on an SSH host
(``fedctl.deploy.spawn_detached`` hands over to it).

fedctl builds one for every host of a ``provider: slurm`` run (``node_connector``, registered for
the ``slurm`` settings with ``fedctl.connectors.register_connector``): the host's record says which
job and node, its workdir (``<run folder>/<host>``) which run folder the agent serves.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Mapping

from fedctl.connectors.base import CommandResult, Connector, HostInfo
from fedctl.deploy import IDENT_SH, RUN_MARK_ENV, ProcRef, parse_pidfile
from fedctl.errors import ConnectError, RemoteError
from fedctl.providers.slurm_gpus import HET_GROUP_KEY, cuda_devices_sh, gpus_text, host_gpus, visible_devices
from fedctl.providers.slurm_jobs import ENDED, SlurmCli


class SlurmStepConnector(Connector):
    """Reach ``host`` (a node of job ``host.machine.id``) through job steps from the login node."""

    def __init__(self, host: HostInfo, cli: SlurmCli, agent_dir: PurePosixPath | None = None,
                 owns_login: bool = False) -> None:
        super().__init__(host)
        self._owns_login = owns_login  # close the login node's connection with this connector
        self.agent_dir = agent_dir  # the run folder the allocation's agent serves (spawn_detached)
        if host.machine is None or not host.machine.id:
            raise ConnectError(f"host {host.name}: no Slurm job recorded for it (provision first)")
        self.job = host.machine.id
        self.node = host.address
        self.cli = cli
        self._steps = 0
        # a heterogeneous allocation (server: own): the component this host's node belongs to
        self.het_group = host.extra.get(HET_GROUP_KEY)
        # a GPU allocation: the GPUs of the node given to this host (None: no GPUs asked)
        self.gpus = host_gpus(host.extra)

    def connect(self) -> None:
        """Check that the job runs and holds this node (idempotent)."""
        if self.cli.connector is not None:
            self.cli.connector.connect()
        found = self.cli.jobs(ids=[self.job])
        if not found or found[0].state in ENDED:
            # why, as slurmctld says it (a time limit, preemption, a node failure, a cancel)
            raise ConnectError(f"host {self.host.name}: job {self.job} ended: {self.cli.end_report(self.job)}")
        if found[0].state != "RUNNING":
            raise ConnectError(f"host {self.host.name}: job {self.job} is {found[0].state}, not running")
        if self.node not in self.cli.hostnames(found[0].nodes):
            raise ConnectError(f"host {self.host.name}: node {self.node} is not in job {self.job} ({found[0].nodes})")

    def step_argv(self, command: str) -> list[str]:
        """The srun command line that runs ``command`` with a POSIX shell on the node."""
        het = [f"--het-group={self.het_group}"] if self.het_group is not None else []
        return ["srun", f"--jobid={self.job}", *het, "--overlap", "-N1", "-n1", "-w", self.node, "--quiet",
                "--job-name=fedctl-cmd", "sh", "-c", self._gpu_view() + command]

    def _gpu_view(self) -> str:
        """Shell lines that make the step's ``nvidia-smi`` show only this host's GPUs: the run
        folder's ``bin/nvidia-smi`` (``slurm_nvidia_smi.py``) first on PATH, where the node has a
        real one, and ``FEDCTL_SLURM_GPUS`` telling it which (empty without a GPU allocation)."""
        if self.gpus is None or self.agent_dir is None:
            return ""
        shim = shlex.quote(str(self.agent_dir / "bin"))
        return (f"export FEDCTL_SLURM_GPUS={shlex.quote(gpus_text(self.gpus))}; "
                f'if command -v nvidia-smi >/dev/null 2>&1; then PATH={shim}:"$PATH"; export PATH; fi; ')

    def run(self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` on the node as a job step. Never raises for a non-zero exit."""
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in {**self.host.environment, **(env or {})}.items())
        argv = self.step_argv(exports + command)
        start = time.monotonic()
        if self.cli.connector is not None:
            res = self.cli.connector.run(shlex.join(argv), timeout=timeout, stdin=stdin)
            return CommandResult(res.exit_code, res.stdout, res.stderr, time.monotonic() - start, res.timed_out)
        try:
            proc = subprocess.run(argv, env=self.cli.env, input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            # srun forwards the kill to the step: Slurm ends the command's processes on the node
            return CommandResult(-1, _text(e.stdout), _text(e.stderr), time.monotonic() - start, timed_out=True)
        return CommandResult(proc.returncode, _text(proc.stdout), _text(proc.stderr), time.monotonic() - start)

    def spawn_detached(self, command: str, cwd: str, pidfile: str, log: str,
                       env: Mapping[str, str] | None = None, timeout: float = 60.0) -> ProcRef:
        """Start ``command`` as a job step of its own through the agent; what identifies it (the pid
        file "PID START" is written by the step before the command runs, as ``deploy`` does)."""
        if self.agent_dir is None:
            raise ConnectError(f"host {self.host.name}: no agent folder for this allocation (a bug in fedctl)")
        env = dict(env or {})
        gpu_sh = ""
        if self.gpus is not None:
            # fedctl placed the process on the k-th of this host's GPUs (or none): it sees that one
            # GPU only, never the node's others (Slurm's own CUDA_VISIBLE_DEVICES for a step covers
            # all of the job's GPUs on the node); set in the step, in the step's numbering
            gpu_sh = cuda_devices_sh(visible_devices(self.gpus, env.pop("CUDA_VISIBLE_DEVICES", None)))
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in {**self.host.environment, **env,
                                                                          RUN_MARK_ENV: cwd}.items())
        exports += gpu_sh
        q = shlex.quote
        script = (IDENT_SH + f"cd {q(cwd)} || exit 1\n"
                  '_i=$(_st $$) || _i=-\n'
                  f'echo "$$ ${{_i% *}}" > {q(pidfile + ".tmp")} && mv {q(pidfile + ".tmp")} {q(pidfile)} || exit 1\n'
                  f"{exports}exec /bin/sh -c {q('exec ' + command)} > {q(log)} 2>&1 < /dev/null\n")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.host.name}-{posixpath.basename(pidfile)}")[:100]
        self._steps += 1
        # the agent starts each request name once for the allocation's life: a counter alone would
        # restart at 1 in the next fedctl process (start --resume) and be skipped, so a random part too
        request = {"node": self.node, "argv": ["/bin/sh", "-c", script], "env": {}, "het_group": self.het_group}
        step = f"{name}-{self._steps}-{secrets.token_hex(4)}"
        self.cli.write(self.agent_dir / "steps" / f"{step}.json", json.dumps(request).encode())
        deadline = time.monotonic() + timeout
        while True:
            text = self.cli.read(PurePosixPath(self.expand(pidfile)))
            refs = parse_pidfile(text or "", cwd)
            if refs:
                return refs[-1]
            if time.monotonic() >= deadline:
                raise RemoteError(f"{self.host.name}: the agent of job {self.job} did not start {name} within "
                                  f"{timeout:g}s (see {self.agent_dir}/logs)")
            time.sleep(0.1)  # the agent polls its folder; the step writes the pid file once it runs

    def _write_atomic(self, remote: str, mode: int, write: Callable[[BinaryIO], object]) -> None:
        if self.cli.connector is not None:
            self.cli.connector._write_atomic(remote, mode, write)
            return
        path = Path(self.expand(remote))
        tmp = path.with_name(f".{path.name}.fedctl-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` (on the shared filesystem) to ``local``."""
        if self.cli.connector is not None:
            self.cli.connector.get(remote, local)
        else:
            shutil.copyfile(self.expand(remote), local)

    def expand(self, path: str) -> str:
        """``~`` as the login node resolves it (the shared home)."""
        if self.cli.connector is not None:
            return self.cli.connector.expand(path)
        return os.path.expanduser(path)

    def close(self) -> None:
        """Each command is its own step: only a login connection of its own is closed."""
        if self._owns_login and self.cli.connector is not None:
            self.cli.connector.close()


def node_connector(host: HostInfo, known_hosts: str | None = None, connect_timeout: float = 10.0) -> SlurmStepConnector:
    """The connector of one host of a ``provider: slurm`` run, from its record alone: Slurm's
    commands on the login node of its settings (this machine, or SSH with ``known_hosts``), the
    agent's run folder the parent of its workdir (``acquire`` gave it ``<run folder>/<host>``)."""
    from fedctl.providers.slurm import login_connector
    from fedctl.providers.slurm_config import settings

    login = login_connector(settings(host), known_hosts)
    workdir = posixpath.normpath(host.workdir) if host.workdir.startswith("/") else None
    agent_dir = PurePosixPath(posixpath.dirname(workdir)) if workdir else None
    return SlurmStepConnector(host, SlurmCli(connector=login), agent_dir=agent_dir, owns_login=True)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
