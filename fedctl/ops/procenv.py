"""The environment of one payload process: which GPU it sees and how much of its memory it may use.

The plan gives each client process a GPU (``fedctl.plan.gpu_processes``); start and resume spawn
the process with what this returns.
"""

from __future__ import annotations

from fedctl.state import HostRecord, ProcessRecord, RunState


def process_env(state: RunState, rec: HostRecord, proc: ProcessRecord) -> dict[str, str]:
    """The GPU settings of one payload process: which GPU it sees (CUDA_VISIBLE_DEVICES), memory
    growth instead of mapping the whole GPU, and a per-process memory limit (FEDCTL_GPU_MEMORY_MB)
    when several processes share one GPU. Empty on a host without GPUs."""
    gpus = rec.facts.get("gpus") or []
    if not gpus and proc.gpu is None:
        return {}
    env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if proc.role == "server":
        device = (state.experiment.get("placement") or {}).get("server_device", "auto")
        on_cpu = device == "cpu" or (device == "auto" and bool(rec.client_processes))
        proc.gpu = None if on_cpu else 0
    if proc.gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU host's process that must not take GPU memory
        return env
    env["CUDA_VISIBLE_DEVICES"] = str(proc.gpu)
    sharing = sum(1 for g in rec.client_gpus if g == proc.gpu) + (1 if proc.role == "server" else 0)
    if sharing > 1 and proc.gpu < len(gpus):
        total = _gpu_memory_mb(gpus[proc.gpu])
        if total:
            env["FEDCTL_GPU_MEMORY_MB"] = str(int(total * 0.9 / sharing))  # 10% for the driver and others
    return env


def _gpu_memory_mb(fact: str) -> int | None:
    """The memory of one GPU from its facts line ("NAME, MEMORY_MIB")."""
    tail = fact.rsplit(",", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None
