"""``provision``: make the plan's hosts usable: connect, check, create the workdir; record it all.

Intent is saved before any host is touched (hosts ``provisioning``), so fedctl killed at any point
leaves a state that ``teardown`` can finish. Re-running with the same plan only retries the hosts
that are not provisioned yet.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from fedctl.connectors.base import Connector
from fedctl.deploy import make_dirs
from fedctl.errors import RemoteError, UsageError
from fedctl.facts import HostFacts, gather_facts
from fedctl.model import HostStatus, Phase, Plan
from fedctl.ops.common import Inputs, Progress, open_fleet, quiet
from fedctl.runtypes import ServerEndpoint
from fedctl.state import HostRecord, RunState, StateStore, new_run_id

#: phases in which a state file still describes hosts that need a teardown
ACTIVE = frozenset(Phase) - {Phase.TORN_DOWN}


@dataclass
class HostRow:
    """One row of the provision table."""

    name: str
    address: str
    role: str
    client_ids: list[int]
    price_per_hour: float | None
    currency: str
    status: str
    detail: str
    processes: str = ""  # the client processes and their GPUs, when there are several: "4 procs on GPU 0-3"


@dataclass
class ProvisionReport:
    state: RunState
    rows: list[HostRow] = field(default_factory=list)
    host_key_failed: bool = False  # a host's key changed: the CLI exits with ExitCode.HOST_KEY

    @property
    def ok(self) -> bool:
        return all(r.status == HostStatus.PROVISIONED for r in self.rows)


def new_state(inputs: Inputs, store: StateStore, config_path: str | None, overrides: Sequence[str] = ()) -> RunState:
    """A fresh RunState for the plan: run id, hosts pending, nothing touched yet."""
    from pathlib import Path

    plan, exp, inv = inputs.plan, inputs.experiment, inputs.inventory
    state = RunState(
        run_id=new_run_id(store.clock),
        provider=inv.provider,
        created_at=store.clock(),
        inventory_path=str(Path(inv.path).absolute()) if inv.path else None,
        config_path=str(Path(exp.path).absolute()) if exp.path else None,
        clients=exp.clients,
        rounds=exp.rounds,
        payload_name=exp.payload.name,
        payload_dir=str(exp.payload.dir),
        experiment=exp.run_config(),
        plan=plan,
        overrides=list(overrides),
        server=ServerEndpoint(host=plan.server.host.name),
    )
    for ph in plan.hosts:
        state.hosts.append(HostRecord.planned(ph))
    return state


#: HostInfo fields that say which machine and which folder a host is: where fedctl connects (kind,
#: address, port, user) and where it wrote (workdir). A host holding something of the run keeps them,
#: so teardown reaches and cleans what it wrote; anything else (how to log in, set-up, env,
#: wheelhouse, environment, python, price) may be corrected and provision run again.
IDENTITY_FIELDS = ("kind", "address", "port", "user", "workdir")
#: a machine fedctl created is identified by what it was created as, not by the address the
#: provider gave it (the new plan only holds a placeholder there)
CREATED_IDENTITY_FIELDS = ("kind", "provider_settings", "user", "workdir")


def placed_plan(plan: Plan, state: RunState, per_gpu: int) -> Plan:
    """``plan`` with the clients of each host provision looked at split over its GPUs
    (``fedctl.plan.place_on_gpus`` with the GPU counts the records' facts hold)."""
    from fedctl.plan import place_on_gpus

    return place_on_gpus(plan, {r.name: r.gpu_count for r in state.hosts if r.facts is not None}, per_gpu)


def _apply_placement(state: RunState, plan: Plan, per_gpu: int) -> None:
    """Decide the GPU placement once, in the plan, and give each record what the plan says: the
    state's plan and its records agree (the records never place anything themselves)."""
    state.plan = placed_plan(plan, state, per_gpu)
    for rec in state.hosts:
        rec.place(state.plan.planned(rec.name))


def _holds_something(rec: HostRecord) -> bool:
    """Whether fedctl may have left anything on the host: a folder it created or a process."""
    return bool(rec.owned or rec.processes)


def _identity(info: Any, field_name: str) -> Any:
    """A host's identity field as it is used: an ssh host with no port is on 22; a created
    machine's settings by the fields that make it another machine."""
    value = getattr(info, field_name)
    if field_name == "provider_settings":
        return None if value is None else value.machine_identity()
    if field_name == "port" and value is None and info.kind == "ssh":
        return 22
    return value


def identity_changes(old: Any, new: Any) -> list[str]:
    """What makes ``new`` another machine or folder than ``old``: ``"field old -> new"`` for each
    identity field that differs (empty: the same host, however else it changed)."""
    changes = []
    created = getattr(old, "machine", None) is not None
    for f in CREATED_IDENTITY_FIELDS if created else IDENTITY_FIELDS:
        before, after = _identity(old, f), _identity(new, f)
        if before != after:
            changes.append(f"{f} {before!r} -> {after!r}")
    return changes


def replan(store: StateStore, state: RunState, inputs: Inputs, overrides: Sequence[str] = ()) -> None:
    """Take a corrected inventory/config for a run that was provisioned (maybe partly) but never
    started. A host that holds nothing of ours (never reached, or its workdir existed) may change in
    any way or go; a host that holds something may only change how fedctl logs in, so teardown can
    still reach and clean it. Anything else raises UsageError saying how to get out."""
    plan = inputs.plan
    if state.started_at is not None or state.previous_runs or any(r.processes for r in state.hosts):
        raise UsageError(
            f"run {state.run_id} was started and the plan differs",
            hint="`fedctl teardown` it first (results are collected), then provision again",
        )
    new = {ph.host.name: ph.host for ph in plan.hosts}
    blocked = []
    if state.provider != inputs.inventory.provider:
        blocked += [f"{r.name} holds something of the run under provider {state.provider}"
                    for r in state.hosts if _holds_something(r)]
    for rec in state.hosts if not blocked else ():
        info = new.get(rec.name)
        changed = identity_changes(rec.info, info) if info is not None else []
        if not _holds_something(rec) or (info is not None and not changed):
            continue
        why = "is not in the new plan" if info is None else f"changed {', '.join(changed)}"
        blocked.append(f"{rec.name} {why} but holds {', '.join(o.path for o in rec.owned) or 'processes'}")
    if blocked:
        raise UsageError(
            f"run {state.run_id} cannot take the new plan: " + "; ".join(blocked),
            hint="`fedctl teardown` first (or `fedctl teardown --forget HOST` for a host that is gone)",
        )
    old = {r.name: r for r in state.hosts}
    hosts = []
    for ph in plan.hosts:
        rec = old.get(ph.host.name)
        if rec is not None and rec.info.machine is not None:
            # a created machine keeps the address its provider gave it and what was journaled
            # about it (its id above all), whatever else the corrected inventory changed
            ph = dataclasses.replace(ph, host=dataclasses.replace(
                ph.host, address=rec.info.address, private_address=rec.info.private_address,
                machine=rec.info.machine))
        if rec is None or (not _holds_something(rec) and rec.info != ph.host):
            rec = HostRecord.planned(ph)
        else:
            if rec.info != ph.host and rec.status in ("failed", "provisioned"):
                rec.status = "pending"  # corrected settings (set-up, env, ...): check the host again
            rec.assign(ph)  # provision places the clients on the GPUs again, in the plan
        hosts.append(rec)
    dropped = sorted(set(old) - set(new))
    state.hosts = hosts
    state.plan = plan
    state.clients, state.rounds = inputs.experiment.clients, inputs.experiment.rounds
    state.payload_name, state.payload_dir = inputs.experiment.payload.name, str(inputs.experiment.payload.dir)
    state.experiment = inputs.experiment.run_config()
    state.provider = inputs.inventory.provider
    state.overrides = list(overrides)
    state.server = ServerEndpoint(host=plan.server.host.name)
    state.event("plan replaced by a corrected inventory/config"
                + (f"; dropped hosts that held nothing: {', '.join(dropped)}" if dropped else ""), store.clock)
    store.save(state)


class _Journal:
    """Saves the state the moment a host records a folder it made, before that host goes on (a kill
    during set-up must leave nothing the state does not know). Hosts run in parallel: a save covers
    every record made before it started, so callers that queued behind it return at once and a
    thousand hosts cost a few saves, not one each."""

    def __init__(self, store: StateStore, state: RunState) -> None:
        self._store, self._state = store, state
        self._save_lock, self._count_lock = threading.Lock(), threading.Lock()
        self._requested = self._saved = 0

    def __call__(self) -> None:
        with self._count_lock:
            self._requested += 1
            mine = self._requested
        with self._save_lock:
            if self._saved >= mine:
                return  # a save that started after this record was made has it
            with self._count_lock:
                upto = self._requested
            self._store.save(self._state)
            self._saved = upto


class _LocalFacts:
    """The local provider's hosts are all this machine with one interpreter: check it once (an
    import of TensorFlow costs seconds of CPU), not once per host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, HostFacts] = {}

    def get(self, conn: Connector, rec: HostRecord, imports: list[str], spec: str | None, workdir: str) -> HostFacts:
        if rec.info.kind != "local":
            return gather_facts(conn, rec.info.python, imports, workdir, spec)
        with self._lock:
            if rec.info.python not in self._facts:
                self._facts[rec.info.python] = gather_facts(conn, rec.info.python, imports, workdir, spec)
            return copy.deepcopy(self._facts[rec.info.python])


def _provision_host(
    conn: Connector, rec: HostRecord, manifest: Any, cache: _LocalFacts, progress: Progress = quiet
) -> dict[str, Any]:
    """Check one host, create its workdir, run its set-up and make its environment when its python
    lacks the payload's imports (``fedctl.hostenv``). Returns what to record; raises nothing for
    host issues (they come back as the facts' problems)."""
    from fedctl.hostenv import SetupFailed, prepare, run_setup

    imports, spec = list(manifest.imports), manifest.python_requirement
    workdir = conn.expand(rec.info.workdir)
    python = rec.info.python
    try:
        # a workdir that existed (a project folder, ~) is not recorded, so teardown never removes it
        make_dirs(conn, rec, holders=[workdir])
    except RemoteError as exc:
        facts = HostFacts(ok=False, problems=[f"cannot create workdir {workdir}: {str(exc)[-200:]}"])
        return {"ok": False, "facts": facts, "workdir": workdir, "python": python}
    try:
        if run_setup(conn, rec, workdir, progress):
            progress(f"{rec.name}: set-up commands ran")
    except SetupFailed as exc:
        return {"ok": False, "facts": HostFacts(ok=False, problems=[str(exc)]), "workdir": workdir, "python": python}
    facts = cache.get(conn, rec, imports, spec, workdir)
    mode = "none" if rec.info.kind == "local" else rec.info.python_env.mode  # this machine: as installed
    missing = [n for n, i in facts.imports.items() if not i.get("ok")]
    others = [p for p in facts.problems if not p.startswith("cannot import")]
    wants_env = mode == "venv" or (mode == "auto" and missing and not others)
    if wants_env and facts.python and not others:
        reqs = manifest.pip_gpu if facts.gpus else manifest.pip
        if not reqs and missing:
            facts.problems.append(f"payload {manifest.name} names no pip requirements to install {', '.join(missing)}")
            facts.ok = False
            return {"ok": False, "facts": facts, "workdir": workdir, "python": python}
        progress(f"{rec.name}: preparing a Python environment ({len(reqs)} requirement(s))")
        try:
            env = prepare(conn, rec, workdir, reqs, facts.python, progress)
        except SetupFailed as exc:
            facts.ok, facts.problems = False, [str(exc)]
            return {"ok": False, "facts": facts, "workdir": workdir, "python": python}
        python = env.python
        progress(f"{rec.name}: environment {'created' if env.created else 'already there'}: {env.env_dir}")
        facts = gather_facts(conn, python, imports, workdir, spec)
    return {"ok": facts.ok, "facts": facts, "workdir": workdir, "python": python}


def _acquire(provider: Any, store: StateStore, state: RunState, todo: list[HostRecord]) -> bool:
    """Let the provider make ``todo`` usable. One that creates machines journals every machine id
    into the state the moment it knows it; when it fails, the hosts stay in the state (teardown
    finds their machines by id and by tag) and are marked failed with its message."""
    from fedctl.providers.base import ProviderError

    try:
        infos = provider.acquire([r.info for r in todo])
    except ProviderError as exc:
        for rec in todo:
            rec.status, rec.error = HostStatus.FAILED, exc.message + (f" ({exc.hint})" if exc.hint else "")
        state.event(f"provider {state.provider} failed: {exc.message}", store.clock)
        store.save(state)
        return False
    if provider.creates_machines:  # the addresses the machines got
        for info in infos:
            state.host(info.name).info = info
        store.save(state)
    return True


def provision(
    store: StateStore,
    inputs: Inputs,
    config_path: str | None = None,
    progress: Progress = quiet,
    overrides: Sequence[str] = (),
) -> ProvisionReport:
    """Provision the plan's hosts in parallel. The caller holds the state lock."""
    from fedctl.providers import for_run

    plan = inputs.plan
    per_gpu = inputs.experiment.placement.processes_per_gpu
    state = store.load_or_none()
    if state is not None and state.phase in ACTIVE:
        # the stored plan has the GPU placement provision made: compare like with like
        if state.plan not in (plan, placed_plan(plan, state, per_gpu)):
            replan(store, state, inputs, overrides)
            progress(f"run {state.run_id}: the corrected plan replaces the one that never got going")
        else:
            progress(f"run {state.run_id} exists with the same plan: checking what is left to do")
    else:
        state = new_state(inputs, store, config_path, overrides)
        state.event("provision requested", store.clock)
        store.save(state)  # intent first: from here on teardown knows these hosts

    provider = for_run(state, store, progress)
    todo = [r for r in state.hosts if r.status != HostStatus.PROVISIONED]
    now = store.clock()
    for rec in todo:
        rec.status = HostStatus.PROVISIONING
        rec.error = None
        rec.acquired_at = rec.acquired_at or now
        rec.released_at = None
    state.transition(Phase.PROVISIONING)
    store.save(state)

    results = None
    if todo and _acquire(provider, store, state, todo):
        manifest = inputs.experiment.payload
        progress(f"checking {len(todo)} host(s) in parallel")
        with open_fleet(store, todo) as fleet:
            cache = _LocalFacts()
            journal = _Journal(store, state)
            for rec in state.hosts:
                rec.journal = journal  # type: ignore[attr-defined]
            try:
                results = fleet.map(lambda c: _provision_host(c, state.host(c.host.name), manifest, cache, progress))
            finally:
                for rec in state.hosts:
                    del rec.journal  # type: ignore[attr-defined]
        for res in results:
            rec = state.host(res.host)
            if not res.ok:
                rec.status, rec.error = HostStatus.FAILED, res.error
                continue
            out = res.value
            rec.workdir = out["workdir"]
            rec.python = out["python"]
            rec.facts = out["facts"]
            if out["ok"]:
                rec.status = HostStatus.PROVISIONED
            else:
                rec.status, rec.error = HostStatus.FAILED, "; ".join(out["facts"].problems)
    _apply_placement(state, plan, per_gpu)
    host_key_failed = results is not None and results.host_key_failed
    ok = all(r.status == HostStatus.PROVISIONED for r in state.hosts)
    state.transition(Phase.PROVISIONED if ok else Phase.PROVISIONING)
    state.error = None if ok else "some hosts failed to provision"
    state.event("provisioned" if ok else "provision incomplete", store.clock)
    store.save(state)
    return ProvisionReport(state, plan_rows(state.plan, state), host_key_failed)


def plan_rows(plan: Any, state: RunState | None = None) -> list[HostRow]:
    """The table rows: planned role and client ids next to each host's status (``planned`` when
    no state is given, i.e. before anything was touched)."""
    rows = []
    for ph in plan.hosts:
        rec = state.host(ph.host.name) if state else None
        ids = [i for proc in ph.client_processes for i in proc]
        gpus = rec.client_gpus if rec else list(ph.client_gpus)
        nprocs = len(rec.client_processes) if rec else len(ph.client_processes)
        procs = ""
        if any(g is not None for g in gpus):
            procs = f"{nprocs} process(es) on GPU {', '.join(str(g) for g in gpus)}"
        detail = (rec.error or "") if rec else ""
        if rec and rec.status == HostStatus.PROVISIONED and rec.facts is not None:
            detail = HostFacts.from_dict({**rec.facts.to_dict(), "ok": True}).summary
        rows.append(
            HostRow(
                name=ph.host.name,
                address=rec.info.address if rec else ph.host.address,  # a created machine's, once known
                role=ph.role,
                client_ids=ids,
                price_per_hour=ph.host.price_per_hour,
                currency=ph.host.currency,
                status=str(rec.status) if rec else "planned",
                detail=detail,
                processes=procs,
            )
        )
    return rows
