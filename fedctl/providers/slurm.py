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

``acquire`` (what ``fedctl provision`` calls) allocates and gives each host its own workdir in the
run folder (``<run folder>/<host>``: hosts on one shared home must not share a workdir); fedctl's
deploy and start then reach each node through ``SlurmStepConnector`` (commands as short job steps,
long-running processes as steps started by the agent). ``release`` also removes the run folder
(it holds the ``.fedctl-tree`` mark fedctl put there; checked on the spot, as teardown checks).

GPUs (``gpus_per_node``): each client host records its share of its node's allocated GPUs
(``scontrol show job -d``) and its processes are placed on them by fedctl itself
(``slurm_gpus.py``); the server sees none. ``server: own``: a heterogeneous job whose component 0
is the server's node (no GPUs), component 1 the clients' nodes. Watch, status and cost
read the job through ``allocation_status`` (``slurm_status.py``).
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
from fedctl.provider_fields import MachineRecord
from fedctl.providers import register
from fedctl.providers.base import AllocationStatus, HostUpdate, Provider, ProviderError, RunContext
from fedctl.providers.slurm_config import SlurmHostSettings, settings
from fedctl.providers.slurm_jobs import ENDED, SlurmCli, cancel_ours, sbatch_argv, wait_running

#: the mark of a folder fedctl made (``fedctl.deploy.TREE_MARKER``; not imported: deploy is heavy)
TREE_MARKER = ".fedctl-tree"

if TYPE_CHECKING:
    from fedctl.connectors.base import Connector

#: how long allocate waits for the job to start, and release for it to leave squeue (seconds)
START_TIMEOUT_S = 3600.0
CANCEL_TIMEOUT_S = 300.0
#: how long allocate waits for the agent to report from a compute node (seconds)
AGENT_TIMEOUT_S = 120.0

@register("slurm")
class SlurmProvider(Provider):
    """One allocation per run; hosts are its nodes."""

    creates_machines = True
    section_module = "fedctl.providers.slurm_config"
    can_power_off = False  # the nodes are the cluster's: the job's end is what stops the billing
    has_allocation = True

    def __init__(self, hosts: Sequence[HostInfo], run: RunContext, cli: SlurmCli | None = None,
                 run_dir: Path | PurePosixPath | None = None, poll_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not hosts:
            raise ProviderError("provider slurm got no hosts (its settings travel with them)")
        self._hosts = list(hosts)
        self.run = run
        s = settings(self._hosts[0])
        known = str(run.local_root.parent / "known_hosts") if run.local_root is not None else None
        self._known_hosts = known
        self.cli = cli or SlurmCli(connector=login_connector(s, known))
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

    def allocation_status(self, hosts: Sequence[HostInfo]) -> AllocationStatus | None:
        """The run's job as slurmctld says now, through this provider's login connection."""
        from fedctl.providers.slurm_status import allocation_status

        return allocation_status(hosts, cli=self.cli)

    def reachable(self, info: HostInfo) -> bool:
        """A host whose node is known (not the ``(slurm node)`` placeholder)."""
        return info.machine is not None and info.machine.id is not None and not info.address.startswith("(")

    def ended(self, hosts: Sequence[HostInfo]) -> str | None:
        """Why the run's allocation is over (``job 12 ended: TIMEOUT (TimeLimit)``, as scontrol says
        while it remembers the job), None while it pends or runs (or was never submitted). For a
        caller that follows a run (``fedctl.ops.follow.machines_ended``): its hosts will not come back."""
        jobs = sorted({h.machine.id for h in hosts if h.machine is not None and h.machine.id})
        if not jobs:
            return None
        live = {j.id for j in self.cli.jobs(ids=jobs) if j.state not in ENDED}
        gone = [j for j in jobs if j not in live]
        return "; ".join(f"job {j} ended: {self.cli.end_report(j)}" for j in gone) or None

    # -- a run whose job ended under it (fedctl.providers.slurm_renew) --------------------------
    def files_connector(self, info: HostInfo) -> "Connector":
        """A connector that reads ``info``'s files on the login node (the shared filesystem) when
        its node is gone with the job: what teardown collects the results through. It fetches only
        files strictly under the host's workdir in the run folder."""
        from fedctl.providers.slurm_renew import files_connector

        return files_connector(info, login_connector(settings(info), self._known_hosts))

    def reallocate(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """A new allocation for the run after its job ended (``start --resume``): whatever is left
        of the old job is cancelled (ours by name and comment) and leaves squeue, its agent's files
        are set aside (a new agent would start its steps again), then ``acquire`` submits the new
        job as provision does (intent journaled before sbatch, id the moment it is known) and gives
        each host a node; each host keeps its workdir, so the payload, config and checkpoint are there."""
        from fedctl.providers.slurm_renew import set_aside_job_files

        old = sorted({h.machine.id for h in hosts if h.machine is not None and h.machine.id})
        cancel_ours(self.cli, self.run.run_id, self.run.origin, old, CANCEL_TIMEOUT_S, self.poll_s, self._say,
                    self.clock)
        set_aside_job_files(self.cli, self.run_dir, old, TREE_MARKER)
        self._say(f"job {', '.join(old) or '(none recorded)'} is over: submitting a new allocation for run "
                  f"{self.run.run_id}")
        return self.acquire(hosts)

    # -- what provision calls -------------------------------------------------------------------
    def acquire(self, hosts: Sequence[HostInfo]) -> list[HostInfo]:
        """The run's allocation, each host on a node with its own workdir in the run folder
        (``allocate``)."""
        return self.allocate(hosts)

    # -- the built steps -------------------------------------------------------------------------
    def allocate(self, hosts: Sequence[HostInfo], start_timeout_s: float = START_TIMEOUT_S,
                 agent_timeout_s: float = AGENT_TIMEOUT_S) -> list[HostInfo]:
        """Submit (or adopt) the run's allocation, wait until it runs, give each host a node (and,
        with GPUs, its share of the node's allocated GPUs: ``fedctl.providers.slurm_gpus``)."""
        from fedctl.providers.slurm_gpus import place_hosts

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
            own = " + 1 for the server" if s.server == "own" else ""
            self._say(f"submitted job {job} ({n_nodes} node(s){own})")
        if s.gpus_per_node:  # nvidia-smi as the hosts see it: only their allocated GPUs (slurm_nvidia_smi.py)
            shim = Path(__file__).with_name("slurm_nvidia_smi.py").read_bytes()
            self.cli.write(self.run_dir / "bin" / "nvidia-smi", shim, mode=0o755)
        cur = {n: self._journal(h, "create", confirm=True, job=job) for n, h in cur.items()}
        cur = {n: self._journal(h, "wait", confirm=False) for n, h in cur.items()}
        running = wait_running(self.cli, job, start_timeout_s, self.poll_s, self._say, self.clock)
        het = s.server == "own"
        if het and len(running.components) != 2:
            raise ProviderError(f"job {job} should be a heterogeneous job of 2 components (server: own), "
                                f"squeue shows {len(running.components) or 1}")
        client_nodes = self.cli.hostnames(running.components[1] if het else running.nodes)
        server_nodes = self.cli.hostnames(running.components[0]) if het else client_nodes
        addrs = self.cli.node_addresses(running.nodes)
        gpus = self.cli.job_gpus(job) if s.gpus_per_node else None
        where = f"server on {server_nodes[0]}, clients on " if het else ""
        self._say(f"job {job} running: {where}{', '.join(client_nodes)}"
                  + (f"; GPUs {', '.join(f'{n}:{list(g)}' for n, g in sorted(gpus.items()) if g)}" if gpus else ""))
        self._wait_agent(job, agent_timeout_s)
        placed_at = place_hosts([(n, "server" in h.roles) for n, h in cur.items()], server_nodes, client_nodes,
                                gpus, het)
        out = []
        for name, info in cur.items():
            node, extra = placed_at[name]
            # each host its own workdir: hosts that share a home (the shared filesystem) must not
            # share one; the address clients reach is the node's NodeAddr (its name may not resolve)
            placed = dataclasses.replace(info, address=node, private_address=addrs.get(node),
                                         workdir=str(self.run_dir / info.name), extra={**info.extra, **extra})
            out.append(self._journal(placed, "wait", confirm=True))
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
        self.cli.make_tree(self.run_dir, TREE_MARKER)  # fedctl's: release removes it, and only then
        agent = self.run_dir / "slurm_agent.py"
        self.cli.write(agent, Path(__file__).with_name("slurm_agent.py").read_bytes())
        # the compute nodes' python3; fedctl's own interpreter path is only right on a shared install
        script = ("#!/bin/sh\n"
                  f"# fedctl run {self.run.run_id}: the agent starts the FL processes as job steps\n"
                  f"exec python3 {shlex.quote(str(agent))} {shlex.quote(str(self.run_dir))}\n")
        self.cli.write(self.run_dir / "alloc.sh", script.encode(), mode=0o755)

    def _remove_run_dir(self) -> None:
        """Remove the run folder once the job is gone: only when, on the spot, it is no symbolic
        link, lies strictly under ``<base>/slurm`` (links resolved) and holds fedctl's mark
        (teardown's own checks, ``fedctl.ops.teardown.REMOVE_SH``). A refusal is said, not forced."""
        from fedctl.ops.teardown import REMOVE_SH

        q = shlex.quote(str(self.run_dir))
        script = (f"W={shlex.quote(str(self.run_dir.parent))}\n" + REMOVE_SH
                  + f"_ours {q} && {{ rm -rf -- {q}; _gone {q}; }}; true")
        out = self.cli.run(["sh", "-c", script])
        for record in out.split("\0"):
            kind, _, path = record.partition(" ")
            if kind == "L":
                raise ProviderError(f"could not remove the run folder {path} on {self.cli.where}")
            if path:
                self._say(f"left {path} in place: it is not a folder fedctl made there ({kind})")

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
        if self.cli.read(self.run_dir / "agent.json") is not None:
            self.stop_agent()  # its steps end with SIGTERM first; scancel below ends whatever is left
        cancelled = cancel_ours(self.cli, self.run.run_id, self.run.origin, recorded, CANCEL_TIMEOUT_S,
                                self.poll_s, self._say, self.clock)
        if cancelled:
            self._say(f"cancelled job(s) {', '.join(cancelled)}; squeue shows none of run {self.run.run_id}")
        self._remove_run_dir()
        now = time.time()
        for h in cur:
            self._journal(h, "terminate", confirm=True, released_at=now)


def login_connector(s: SlurmHostSettings, known_hosts: str | None) -> "Connector | None":
    """The connector to the login node (SSH, pinning keys into ``known_hosts``: fedctl's own, next
    to its state), or None when this machine is the login node."""
    if s.login_address is None:
        return None
    from fedctl.connectors import connector_for

    login = HostInfo(name="slurm-login", address=s.login_address, user=s.login_user, port=s.login_port,
                     identity_file=s.login_identity_file, environment=dict(s.login_environment),
                     workdir=s.login_workdir)
    return connector_for(login, known_hosts=known_hosts)
