"""Packing runs on one fleet: how many runs it holds at once, and a run's own copy of its hosts."""

from __future__ import annotations

from typing import Any

from fedctl.model import Phase


def capacity(fleet_state: Any, per_gpu: int = 1) -> int:
    """How many runs the fleet holds at once without over-subscribing a machine: per machine
    (this machine for the local provider's hosts, else each address), the CPU cores (or GPU slots,
    ``processes_per_gpu`` per GPU, for client processes placed on a GPU) over the client
    processes one run puts there; the smallest over the machines, at least 1. The FL server waits
    on its clients most of the time and is not counted."""
    use: dict[str, list[int]] = {}  # machine -> [cpu processes, gpu processes]
    cap: dict[str, list[int]] = {}
    for rec in fleet_state.hosts:
        machine = "local" if rec.info.kind == "local" else rec.info.address
        gpus = [g for g in rec.client_gpus] + [None] * (len(rec.client_processes) - len(rec.client_gpus))
        u = use.setdefault(machine, [0, 0])
        u[0] += sum(1 for g in gpus[:len(rec.client_processes)] if g is None)
        u[1] += sum(1 for g in gpus[:len(rec.client_processes)] if g is not None)
        facts = rec.facts
        cap[machine] = [(facts.cpus or 1) if facts else 1, (facts.gpu_count * per_gpu) if facts else 0]
    fits = []
    for machine, (cpu_procs, gpu_procs) in use.items():
        cpus, slots = cap[machine]
        if cpu_procs:
            fits.append(cpus // cpu_procs)
        if gpu_procs:
            fits.append(slots // gpu_procs)
    return max(1, min(fits)) if fits else 1


def run_state_for(fleet_state: Any, run_id: str, config_path: str | None) -> Any:
    """A run's own state: the fleet's hosts (how to reach them, workdirs, placement, facts,
    acquisition times: the campaign's budget counts from the fleet's provision) with the run's id
    and nothing owned or running yet."""
    from fedctl.state import RunState

    st = RunState.from_dict(fleet_state.to_dict())
    st.run_id, st.phase, st.events, st.previous_runs = run_id, Phase.PROVISIONED, [], []
    st.started_at = st.finished_at = None
    st.results_dir = st.error = None
    st.config_path = config_path
    for rec in st.hosts:
        rec.owned, rec.processes = [], []
    return st
