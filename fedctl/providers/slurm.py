"""The ``slurm`` provider: one Slurm allocation per run, its FL processes as job steps inside it.

Built and tested against a real cluster (``tests/integration/slurm_cluster.py``):

- ``allocate``: the run's allocation, in small journaled steps. The ``create`` intent is saved in
  every host's record before ``sbatch``; the job (named ``fedctl-<run>``, commented
  ``fedctl-origin=<origin>``) has its id saved the moment sbatch prints it; ``wait`` polls squeue
  with a live line giving the pending reason; the node list is read with ``scontrol show
  hostnames`` and each planned host gets a node; then it waits for the agent's ``agent.json`` in the
  run folder (the compute nodes see the login node's shared filesystem). The batch script runs
  ``slurm_agent.py`` (stdlib) inside the allocation, which starts job steps (``srun --overlap -w
  NODE``) when fedctl writes a request file into the run's folder (``request_step``).
- ``release``: cancels only jobs whose name and comment are this run's and origin's, re-checked with
  squeue just before scancel, and waits until squeue no longer shows them. Idempotent; works from
  the state alone.

Slurm's commands and the run folder's files go to the login node: this machine, or ``slurm.login``
over SSH (fedctl's SSH connector, the login's ``environment`` exported for every command).

Not built: deploying the payload and running the FL server and clients through the agent (a
connector that runs fedctl's host commands as job steps), GPU placement, watch/cost for jobs.
``acquire`` (what ``fedctl provision`` calls) therefore says so with ``NotBuiltError`` before
submitting anything, rather than hold an allocation nothing can use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

from fedctl.connectors.base import HostInfo
from fedctl.errors import NotBuiltError
from fedctl.provider_fields import MachineRecord
from fedctl.providers import register
from fedctl.providers.base import HostUpdate, Provider, ProviderError, RunContext
from fedctl.providers.slurm_config import SlurmHostSettings, settings
from fedctl.providers.slurm_jobs import ENDED, SlurmCli, cancel_ours, sbatch_argv, wait_running

if TYPE_CHECKING:
    from fedctl.connectors.base import Connector

#: how long allocate waits for the job to start, and release for it to leave squeue (seconds)
START_TIMEOUT_S = 3600.0
CANCEL_TIMEOUT_S = 300.0
#: how long allocate waits for the agent to report from a compute node (seconds)
AGENT_TIMEOUT_S = 120.0

NOT_BUILT = (
    "provider slurm: submitting, waiting for and cancelling the run's allocation is built "
    "(fedctl.providers.slurm), but running the FL server and clients inside it as job steps is not "
    "yet (no connector runs fedctl's deploy and start through the allocation's agent), nor are GPU "
    "placement and watch/cost for jobs. Nothing was submitted. "
    "Use provider: static with the nodes of an interactive allocation (salloc) meanwhile.")


@register("slurm")
class SlurmProvider(Provider):
    """One allocation per run; hosts are its nodes."""

    creates_machines = True
    section_module = "fedctl.providers.slurm_config"

    def __init__(self, hosts: Sequence[HostInfo], run: RunContext, cli: SlurmCli | None = None,
                 run_dir: Path | PurePosixPath | None = None, poll_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not hosts:
            raise ProviderError("provider slurm got no hosts (its settings travel with them)")
        self._hosts = list(hosts)
        self.run = run
        s = settings(self._hosts[0])
        self.cli = cli or SlurmCli(connector=_login_connector(s, run))
        self._run_dir = None if run_dir is None else PurePosixPath(str(run_dir))
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get("FEDCTL_POLL_S", "3"))
        self.clock = clock

    @property
    def run_dir(self) -> PurePosixPath:
        """The run's folder on the login node's shared filesystem (``<login workdir>/slurm/<run>``;
        without a login, under this machine's fedctl folder)."""
        if self._run_dir is None:
            s = settings(self._hosts[0])
            if self.cli.connector is not None:
                base = self.cli.expand(s.login_workdir)
            else:
                base = PurePosixPath(os.path.abspath(self.run.local_root or ".fedctl"))
            self._run_dir = base / "slurm" / self.run.run_id
        return self._run_dir

    @classmethod
    def from_run(cls, hosts: Sequence[HostInfo], ctx: RunContext) -> "SlurmProvider":
        """The provider of a run: its settings travel with the hosts."""
        return cls(hosts, ctx)

    def _say(self, msg: str) -> None:
        self.run.progress(f"slurm: {msg}")

    def _journal(self, info: HostInfo, step: str, confirm: bool, job: str | None = None,
                 released_at: float | None = None) -> HostInfo:
        rec = info.machine or MachineRecord()
        rec = rec.confirm(step, job) if confirm else rec.begin(step, origin=rec.origin or self.run.origin)
        info = dataclasses.replace(info, machine=rec)
        self.run.journal(HostUpdate(info.name, info=info, released_at=released_at))
        return info

    def reachable(self, info: HostInfo) -> bool:
        """A host whose node is known (not the ``(slurm node)`` placeholder)."""
        return info.machine is not None and info.machine.id is not None and not info.address.startswith("(")

    # -- what provision calls -------------------------------------------------------------------
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """Not built end to end: says which part is missing, before anything is submitted."""
        raise NotBuiltError(NOT_BUILT)

    # -- the built steps -------------------------------------------------------------------------
    def allocate(self, hosts: Sequence[HostInfo], start_timeout_s: float = START_TIMEOUT_S,
                 agent_timeout_s: float = AGENT_TIMEOUT_S) -> list[HostInfo]:
        """Submit (or adopt) the run's allocation, wait until it runs, give each host a node."""
        missing = self.cli.available()
        if missing:
            raise ProviderError(missing)
        cur = {h.name: self._journal(h, "create", confirm=False) for h in hosts}
        s = settings(hosts[0])
        clients = [h for h in hosts if "server" not in h.roles]
        n_nodes = max(1, min(s.nodes, len(clients) or 1))
        recorded = {h.machine.id for h in hosts if h.machine is not None and h.machine.id}
        live = [j for j in self.cli.jobs(run_ids=[self.run.run_id])
                if j.origin == self.run.origin and j.state not in ENDED]
        if live:  # an earlier attempt submitted it (its id may never have been saved)
            job = live[0].id
            self._say(f"adopting job {job} submitted earlier")
        elif recorded and self.cli.jobs(ids=sorted(recorded)):
            raise ProviderError(f"job {', '.join(sorted(recorded))} recorded for this run is not named for it")
        else:
            self._prepare_dir()
            job = self.cli.submit(sbatch_argv(s, self.run.run_id, self.run.origin, n_nodes, self.run_dir,
                                              self.run.max_hours))
            self._say(f"submitted job {job} ({n_nodes} node(s))")
        cur = {n: self._journal(h, "create", confirm=True, job=job) for n, h in cur.items()}
        cur = {n: self._journal(h, "wait", confirm=False) for n, h in cur.items()}
        running = wait_running(self.cli, job, start_timeout_s, self.poll_s, self._say, self.clock)
        nodes = self.cli.hostnames(running.nodes)
        self._say(f"job {job} running on {', '.join(nodes)}")
        self._wait_agent(job, agent_timeout_s)
        out, k = [], 0
        for info in cur.values():
            # the server's step shares the first node; client hosts take the nodes in turn
            if "server" in info.roles:
                node = nodes[0]
            else:
                node, k = nodes[k % len(nodes)], k + 1
            out.append(self._journal(dataclasses.replace(info, address=node), "wait", confirm=True))
        return out

    def _wait_agent(self, job: str, timeout_s: float) -> None:
        """Until the agent, on a compute node, wrote ``agent.json`` with this job's id into the run
        folder: the compute nodes see the login node's folder (the shared filesystem) and run python3."""
        path = self.run_dir / "agent.json"
        deadline = self.clock() + timeout_s
        while True:
            text = self.cli.read(path)
            if text is not None and json.loads(text).get("job") == job:
                return
            found = self.cli.jobs(ids=[job])
            if not found or found[0].state in ENDED:  # the batch script failed, a time limit, a node ...
                raise ProviderError(f"job {job} ended before fedctl could use it: {self.cli.end_report(job)}; "
                                    f"see {self.run_dir}/slurm-{job}.out")
            if self.clock() >= deadline:
                raise ProviderError(
                    f"job {job} runs, but its agent wrote nothing into {self.run_dir} within {timeout_s:g}s: "
                    "the compute nodes must see that folder (a shared filesystem) and have python3; "
                    f"see {self.run_dir}/slurm-{job}.out")
            time.sleep(self.poll_s)  # polling the shared filesystem: the agent's own start

    def _prepare_dir(self) -> None:
        """The run's folder on the shared filesystem: the agent and the batch script that runs it."""
        agent = self.run_dir / "slurm_agent.py"
        self.cli.write(agent, Path(__file__).with_name("slurm_agent.py").read_bytes())
        # the compute nodes' python3; fedctl's own interpreter path is only right on a shared install
        script = ("#!/bin/sh\n"
                  f"# fedctl run {self.run.run_id}: the agent starts the FL processes as job steps\n"
                  f"exec python3 {shlex.quote(str(agent))} {shlex.quote(str(self.run_dir))}\n")
        self.cli.write(self.run_dir / "alloc.sh", script.encode(), mode=0o755)

    def request_step(self, name: str, node: str, argv: Sequence[str],
                     env: dict[str, str] | None = None) -> PurePosixPath:
        """Ask the allocation's agent to start ``argv`` as a job step on ``node``; its status file."""
        request = json.dumps({"node": node, "argv": list(argv), "env": env or {}}).encode()
        self.cli.write(self.run_dir / "steps" / f"{name}.json", request)
        return self.run_dir / "status" / f"{name}.json"

    def stop_agent(self) -> None:
        """Ask the agent to end its steps and the allocation."""
        self.cli.write(self.run_dir / "stop", b"fedctl\n")

    def release(self, hosts: Sequence[HostInfo]) -> None:
        """Cancel the run's jobs (ours by name and comment, re-checked), wait until squeue drops them."""
        # a terminate intent left by a release that failed half-way may hide an unconfirmed create
        submitted = [h for h in hosts if h.machine is not None
                     and (h.machine.id or h.machine.intent in ("create", "wait", "terminate")
                          or "create" in h.machine.done)]
        if not submitted:  # sbatch never ran for this run (its create intent is journaled before)
            now = time.time()
            for h in hosts:
                self._journal(self._journal(h, "terminate", confirm=False), "terminate", confirm=True, released_at=now)
            return
        cur = [self._journal(h, "terminate", confirm=False) for h in hosts]
        recorded = sorted({h.machine.id for h in cur if h.machine is not None and h.machine.id})
        cancelled = cancel_ours(self.cli, self.run.run_id, self.run.origin, recorded, CANCEL_TIMEOUT_S,
                                self.poll_s, self._say, self.clock)
        if cancelled:
            self._say(f"cancelled job(s) {', '.join(cancelled)}; squeue shows none of run {self.run.run_id}")
        now = time.time()
        for h in cur:
            self._journal(h, "terminate", confirm=True, released_at=now)


def _login_connector(s: SlurmHostSettings, run: RunContext) -> "Connector | None":
    """The connector to the login node (SSH, fedctl's known_hosts next to its state), or None when
    this machine is the login node."""
    if s.login_address is None:
        return None
    from fedctl.connectors import connector_for

    login = HostInfo(name="slurm-login", address=s.login_address, user=s.login_user, port=s.login_port,
                     identity_file=s.login_identity_file, environment=dict(s.login_environment),
                     workdir=s.login_workdir)
    known = str(run.local_root.parent / "known_hosts") if run.local_root is not None else None
    return connector_for(login, known_hosts=known)
