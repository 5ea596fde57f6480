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


class FleetJournal:
    """A run's ``HostRecord.journal``: what the run creates on a host is recorded in the fleet's
    state the moment it is recorded in the run's, so the fleet's teardown removes it even when
    fedctl is stopped (Ctrl-C, a kill) before the run's own state was saved. Thread-safe: the run's
    hosts are prepared in parallel."""

    def __init__(self, fleet_store: Any, run_state: Any) -> None:
        import threading

        self.fleet_store, self.run_state = fleet_store, run_state
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            merge_owned(self.fleet_store, self.run_state)

    def attach(self) -> None:
        for rec in self.run_state.hosts:
            rec.journal = self  # type: ignore[attr-defined] - not a field: never persisted

    def detach(self) -> None:
        for rec in self.run_state.hosts:
            rec.__dict__.pop("journal", None)


def merge_owned(fleet_store: Any, run_state: Any, intended: bool = False) -> None:
    """Record in the fleet's state what ``run_state``'s hosts own; with ``intended`` also each
    host's run dir before it exists (intent first: the run id is new, so no folder of anyone else's
    can be there, and teardown removes it only with fedctl's marker in it)."""
    import posixpath

    from fedctl.deploy import remote_run_dir

    fstate = fleet_store.load()
    for rec in run_state.hosts:
        frec = fstate.host(rec.name)
        for o in list(rec.owned):
            frec.own(o.path, o.kind, o.keep)
        if intended and rec.workdir:
            frec.own(posixpath.normpath(remote_run_dir(rec, run_state.run_id)), "tree")
        # holders before trees (stable): teardown removes newest first, so every tree goes before
        # the folders holding it are tried (a run dir recorded as intent precedes its runs/ holder)
        frec.owned.sort(key=lambda o: o.kind != "dir")
    fleet_store.save(fstate)
