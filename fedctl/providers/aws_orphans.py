"""What ``fedctl instances`` shows and sweeps: the machines fedctl created, and whose they are.

Works for any provider that creates machines (``creates_machines``); aws is the one there is. A
machine belongs to the run this folder is working on, or it is an orphan of this folder (its run
was torn down, forgotten or its state deleted), or it was started from another folder or machine
(``fedctl-origin`` differs): that one is listed but swept only when asked for explicitly, since
it may be someone's running experiment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fedctl.errors import UsageError
from fedctl.providers.base import Machine, Provider, folder_origin
from fedctl.state import StateStore

THIS_RUN, ORPHAN, OTHER_FOLDER = "this run", "orphan", "other folder"


@dataclass(frozen=True)
class Listed:
    """One machine and whose it is."""

    machine: Machine
    whose: str  # THIS_RUN | ORPHAN | OTHER_FOLDER

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.machine), "whose": self.whose, "billed": self.machine.billed}


def provider_here(store: StateStore, inventory: str | None, progress: Callable[[str], None] | None = None) -> Provider:
    """The machine provider to ask: from ``inventory``, else from this folder's run (current or the
    newest archived one), whose hosts carry the provider's settings (region, endpoint)."""
    from fedctl.providers import provider_class

    if inventory is not None:
        from fedctl.config.inventory import load_inventory

        inv = load_inventory(inventory)
        cls = provider_class(inv.provider)
        if not cls.creates_machines:
            raise UsageError(f"provider {inv.provider} ({inventory}) creates no machines: there are none to list")
        return cls(hosts=list(inv.hosts), progress=progress)  # type: ignore[call-arg]
    for state in _states(store):
        cls = provider_class(state.provider)
        if cls.creates_machines and state.hosts:
            return cls(hosts=[r.info for r in state.hosts], progress=progress)  # type: ignore[call-arg]
    raise UsageError("no run in this folder says where to look for instances",
                     hint="give the inventory that created them: `fedctl instances -i aws.yaml`")


def _states(store: StateStore) -> list[Any]:
    """The current state first, then archived runs, newest first (unreadable ones skipped)."""
    from fedctl.errors import StateError
    from fedctl.state import RunState

    out = []
    try:
        cur = store.load_or_none()
    except StateError:
        cur = None
    if cur is not None:
        out.append(cur)
    archived = sorted((store.root / "runs").glob("*/state.json"), reverse=True) if (store.root / "runs").exists() else []
    for path in archived:
        try:
            out.append(RunState.from_dict(json.loads(Path(path).read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return out


def active_run(store: StateStore) -> str | None:
    """The run this folder is still working on (its machines are not orphans)."""
    from fedctl.errors import StateError

    try:
        state = store.load_or_none()
    except StateError:
        return None
    return state.run_id if state is not None and state.phase != "torn_down" else None


def classify(machines: Sequence[Machine], active: str | None, origin: str) -> list[Listed]:
    out = []
    for m in machines:
        if active is not None and m.run_id == active:
            whose = THIS_RUN
        elif m.origin == origin:
            whose = ORPHAN
        else:
            whose = OTHER_FOLDER
        out.append(Listed(m, whose))
    return out


def listing(store: StateStore, provider: Provider, include_ended: bool) -> list[Listed]:
    """Every machine fedctl created with this provider's account and region, and whose it is."""
    machines = provider.machines(all_runs=True, include_ended=include_ended)
    return classify(machines, active_run(store), folder_origin(store.root))


def sweep_targets(store: StateStore, provider: Any, any_folder: bool) -> tuple[list[Listed], list[str]]:
    """The live machines to terminate and the runs to clean (their security groups included)."""
    from fedctl.providers import aws_ec2

    active, origin = active_run(store), folder_origin(store.root)
    wanted = (ORPHAN, OTHER_FOLDER) if any_folder else (ORPHAN,)
    targets = [x for x in listing(store, provider, include_ended=False) if x.whose in wanted]
    runs = {x.machine.run_id for x in targets if x.machine.run_id}
    # security groups of runs whose instances are all gone already (a crash between the two)
    for g in aws_ec2.run_groups(provider.ec2, None):
        tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
        run = tags.get(aws_ec2.TAG_RUN)
        if run and run != active and (any_folder or tags.get(aws_ec2.TAG_ORIGIN) == origin):
            runs.add(run)
    return targets, sorted(runs)
