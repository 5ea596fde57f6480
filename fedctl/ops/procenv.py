"""The environment of one payload process: which GPU it sees and how much of its memory it may use.

The plan gives each client process a GPU (``fedctl.plan.gpu_processes``); start and resume spawn
the process with what this returns.
"""

from __future__ import annotations

from fedctl.errors import PlanError
from fedctl.monitor.nvidia import gpu_memory_mib, parse_gpu_facts
from fedctl.state import HostRecord, ProcessRecord, RunState


def server_device_problem(device: str, host: str, gpu_count: int) -> str | None:
    """Why ``placement.server_device`` cannot be honoured on the server's host, or None: ``gpu``
    on a host where nvidia-smi lists no GPU would quietly evaluate on the CPU."""
    if device == "gpu" and gpu_count == 0:
        return f"placement.server_device is gpu, but the server's host {host} has no GPU (nvidia-smi lists none)"
    return None


def check_server_device(device: str, host: str, gpu_count: int) -> None:
    """Raise PlanError (with what to change) when ``server_device_problem`` finds one."""
    problem = server_device_problem(device, host, gpu_count)
    if problem:
        raise PlanError(problem, hint="set placement.server_device to auto or cpu in fedctl.yaml (or --set), or"
                                      " give a host with a GPU the server role in the inventory")


def process_env(state: RunState, rec: HostRecord, proc: ProcessRecord) -> dict[str, str]:
    """The GPU settings of one payload process: which GPU it sees (CUDA_VISIBLE_DEVICES), memory
    growth instead of mapping the whole GPU, and a per-process memory limit (FEDCTL_GPU_MEMORY_MB)
    when several processes share one GPU. Empty on a host without GPUs.

    Raises PlanError when the process was placed on a GPU the host's facts do not list (facts of an
    older fedctl counted nvidia-smi's warning lines as GPUs), or the server must have a GPU that its
    host lacks (``check_server_device``)."""
    gpus, _ = parse_gpu_facts(rec.facts.gpus if rec.facts is not None else [], warn=False)
    if proc.role == "server":
        check_server_device(state.experiment.placement.server_device, rec.name, len(gpus))
    if not gpus and proc.gpu is None:
        return {}
    env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if proc.role == "server":
        device = state.experiment.placement.server_device
        on_cpu = device == "cpu" or (device == "auto" and bool(rec.client_processes))
        proc.gpu = None if on_cpu else 0
    if proc.gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU host's process that must not take GPU memory
        return env
    if proc.gpu >= len(gpus):
        who = "the server" if proc.role == "server" else f"client process {proc.index}"
        raise PlanError(f"{rec.name}: {who} was placed on GPU {proc.gpu}, but nvidia-smi lists "
                        f"{len(gpus)} GPU(s) there", hint="run `fedctl provision` again to re-read the host's GPUs")
    env["CUDA_VISIBLE_DEVICES"] = str(proc.gpu)
    sharing = sum(1 for g in rec.client_gpus if g == proc.gpu) + (1 if proc.role == "server" else 0)
    if sharing > 1:
        total = gpu_memory_mib(gpus[proc.gpu])
        if total:
            env["FEDCTL_GPU_MEMORY_MB"] = str(int(total * 0.9 / sharing))  # 10% for the driver and others
    return env
