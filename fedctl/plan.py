"""The plan: which host runs the server, which client ids run in which process on which host.

Made before anything is touched, so an impossible request (too few hosts) fails with the numbers.

Rules (static inventories):
- The server goes on the first host whose roles list ``server``; if none does, on the first host.
- Client hosts: if ANY host lists roles, only hosts whose roles list ``client`` take clients. If no
  host lists roles, every host except the server host takes clients; the server host takes clients
  only when it is the only host.
- ``clients_per_host: auto``: every client host gets ceil(N / hosts) clients in one process, filled in
  order with contiguous id blocks (0-based); the last hosts may get fewer, and a host left with none
  is not used. ``clients_per_host: k``: hosts are filled k at a time, one process each; N > k * hosts
  is a PlanError.
- Hosts that end up with neither the server nor clients are left out of the plan (``unused``).

Local provider: the plan makes its own hosts, ``local-server`` and ``local-client-1..P`` (one client
process each), P = min(N, cpu count) for auto or ceil(N / k) for ``clients_per_host: k``, with the N
clients spread as evenly as possible (sizes differ by at most one).

Cost: prices are summed per currency (fedctl never converts money): ``price_per_hour_by_currency``
always works; ``price_per_hour_total`` and ``currency`` raise PlanError when the priced hosts use
more than one currency. Hosts without a price count as 0.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from fedctl.config.experiment import Experiment
from fedctl.config.inventory import Inventory
from fedctl.model import PLAN_VERSION, HostInfo, Plan, PlannedHost  # noqa: F401 - the plan's types
from fedctl.errors import PlanError

LOCAL_ADDRESS = "127.0.0.1"


def make_plan(
    inventory: Inventory,
    experiment: Experiment,
    clients: int,
    cpu_count: int | None = None,
    cwd: str | Path | None = None,
    gpu_count: int | None = None,
) -> Plan:
    """Place the server and ``clients`` clients on the inventory's hosts (or on this machine)."""
    if clients < 1:
        raise PlanError(f"need at least 1 client, got {clients}")
    per_host = experiment.placement.clients_per_host
    if inventory.provider == "local":
        gpus = local_gpu_count() if gpu_count is None else gpu_count
        plan = _local_plan(clients, per_host, cpu_count, Path(cwd or Path.cwd()), gpus,
                           experiment.placement.processes_per_gpu)
    else:
        plan = _static_plan(inventory, clients, per_host)
    return plan


def _static_plan(inventory: Inventory, n: int, per_host: int | str) -> Plan:
    hosts = list(inventory.hosts)
    if not hosts:
        raise PlanError(f"the inventory {inventory.path} has no hosts")
    server = next((h for h in hosts if "server" in h.roles), hosts[0])
    if any(h.roles for h in hosts):
        candidates = [h for h in hosts if "client" in h.roles]
        if not candidates:
            raise PlanError(
                f"no host in {inventory.path} has the role client, so the {n} clients have nowhere to run",
                hint="add client to some host's roles, or remove roles everywhere to let fedctl choose",
            )
    elif len(hosts) == 1:
        candidates = hosts
    else:
        candidates = [h for h in hosts if h is not server]

    if per_host == "auto":
        k = math.ceil(n / len(candidates))
    else:
        k = int(per_host)
        if n > k * len(candidates):
            raise PlanError(
                f"{n} clients do not fit: {len(candidates)} client host(s) x clients_per_host {k}"
                f" = {k * len(candidates)} slots",
                hint=f"add hosts (need {math.ceil(n / k)}), raise placement.clients_per_host to"
                f" {math.ceil(n / len(candidates))}, or set it to auto",
            )
    assignment: dict[str, tuple[tuple[int, ...], ...]] = {}
    next_id = 0
    for h in candidates:
        take = min(k, n - next_id)
        if take <= 0:
            break
        assignment[h.name] = (tuple(range(next_id, next_id + take)),)
        next_id += take

    planned = []
    unused = []
    for h in hosts:
        procs = assignment.get(h.name, ())
        is_server = h is server
        if not is_server and not procs:
            unused.append(h.name)
            continue
        planned.append(PlannedHost(host=h, role_server=is_server, client_processes=procs))
    return Plan(provider=inventory.provider, clients=n, hosts=tuple(planned), unused=tuple(unused))


def gpu_processes(
    ids: Sequence[int], gpus: int, per_gpu: int = 1
) -> tuple[tuple[tuple[int, ...], ...], tuple[int | None, ...]]:
    """Client processes for ``ids`` on a host with ``gpus`` GPUs: ``gpus * per_gpu`` processes (never
    more than there are clients), the clients spread evenly (sizes differ by at most one), process
    ``i`` on GPU ``i % gpus`` so every GPU gets work before any gets a second process. Without GPUs
    the ids stay one process on no GPU (the CPU rules decide elsewhere)."""
    ids = list(ids)
    if gpus <= 0 or not ids:
        return ((tuple(ids),) if ids else ()), ((None,) if ids else ())
    count = min(len(ids), gpus * max(1, per_gpu))
    return even_chunks(ids, count), tuple(i % gpus for i in range(count))


def place_on_gpus(plan: Plan, gpu_counts: Mapping[str, int], per_gpu: int = 1) -> Plan:
    """The plan with each remote client host's clients split over its GPUs (``gpu_processes``),
    for the hosts whose GPU count is known (``gpu_counts``: host name -> GPUs provision found).

    Pure, and idempotent: a remote host's GPUs are known only once provision has looked, so
    provision calls this once with what it found and stores the result as the run's plan (the
    records take their processes from it). The local provider's plan placed its clients already
    (it knows this machine's GPUs when it plans); a host not looked at yet keeps its processes."""
    hosts = []
    for ph in plan.hosts:
        gpus = gpu_counts.get(ph.name)
        if ph.host.kind == "local" or not ph.client_processes or gpus is None:
            hosts.append(ph)
            continue
        procs, gpu_of = gpu_processes(ph.client_ids, gpus, per_gpu)
        hosts.append(replace(ph, client_processes=procs, client_gpus=gpu_of))
    return replace(plan, hosts=tuple(hosts))


def local_gpu_count(timeout: float = 10.0) -> int:
    """GPUs of this machine as ``nvidia-smi`` lists them (0 without nvidia-smi or when it fails).

    Only lines that are a GPU index (ASCII digits) count; any other line (a warning, "No devices
    were found" printed with exit 0) is logged as a warning that names it (``fedctl.monitor.nvidia``)."""
    import shutil
    import subprocess

    from fedctl.monitor.nvidia import GPU_INDEX_ARGS, parse_gpu_indices

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        res = subprocess.run([exe, *GPU_INDEX_ARGS], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if res.returncode != 0:
        return 0
    return len(parse_gpu_indices(res.stdout)[0])


def even_split(n: int, parts: int) -> list[int]:
    """Sizes of ``parts`` groups holding ``n`` items, differing by at most one, larger first."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def even_chunks(ids: Sequence[int], parts: int) -> tuple[tuple[int, ...], ...]:
    """``ids`` in ``parts`` contiguous chunks whose sizes differ by at most one (larger first)."""
    ids, out, start = list(ids), [], 0
    for size in even_split(len(ids), parts):
        out.append(tuple(ids[start:start + size]))
        start += size
    return tuple(out)


def local_host(name: str, cwd: Path, roles: tuple[str, ...]) -> HostInfo:
    """A host record for this machine: workdir ``<cwd>/.fedctl/local/<name>``, this interpreter."""
    return HostInfo(
        name=name,
        address=LOCAL_ADDRESS,
        workdir=str((cwd / ".fedctl" / "local" / name).absolute()),
        python=sys.executable,
        roles=roles,
        price_per_hour=0.0,
        kind="local",
    )


def _local_plan(
    n: int, per_host: int | str, cpu_count: int | None, cwd: Path, gpus: int = 0, per_gpu: int = 1
) -> Plan:
    """This machine: one client process per CPU core, or, on a GPU machine, ``per_gpu`` per GPU
    (TensorFlow would otherwise map one GPU's memory in every process); ``clients_per_host: k``
    overrides both."""
    if per_host != "auto":
        processes = math.ceil(n / int(per_host))
    elif gpus > 0:
        processes = max(1, min(n, gpus * per_gpu))
    else:
        cpus = cpu_count or os.cpu_count() or 1
        processes = max(1, min(n, cpus))
    hosts = [PlannedHost(local_host("local-server", cwd, ("server",)), role_server=True)]
    for i, ids in enumerate(even_chunks(range(n), processes), start=1):
        gpu = ((i - 1) % gpus,) if gpus > 0 else ()
        hosts.append(PlannedHost(local_host(f"local-client-{i}", cwd, ("client",)), False, (ids,), gpu))
    return Plan(provider="local", clients=n, hosts=tuple(hosts))

