"""What ``fedctl instances`` shows and sweeps: the machines fedctl created, and whose they are.

Works for any provider that creates machines (a ``MachineProvider``); aws is the one there is. A
machine belongs to the run this folder is working on, or it is an orphan of this folder (its run
was torn down, forgotten or its state deleted), or it was started from another folder or machine
(``fedctl-origin`` differs): that one is listed but swept only when asked for explicitly, since
it may be someone's running experiment. When this folder's state cannot be read, its machines are
``unknown``: they may be the live run's, so they are swept only with ``--any-folder`` too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fedctl.errors import UsageError
from fedctl.providers.base import Machine, folder_origin
from fedctl.providers.lifecycle import MachineProvider
from fedctl.state import StateStore

THIS_RUN, ORPHAN, OTHER_FOLDER = "this run", "orphan", "other folder"
#: a machine of this folder while its state cannot be read: maybe the live run's, so never an orphan
UNKNOWN = "unknown (state unreadable)"


@dataclass(frozen=True)
class Listed:
    """One machine and whose it is."""

    machine: Machine
    whose: str  # THIS_RUN | ORPHAN | OTHER_FOLDER | UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.machine), "whose": self.whose, "billed": self.machine.billed}


def provider_here(store: StateStore, inventory: str | None,
                  progress: Callable[[str], None] | None = None) -> MachineProvider:
    """The machine provider to ask: from ``inventory``, else from this folder's run (current or the
    newest archived one), whose hosts carry the provider's settings (region, endpoint)."""
    from fedctl.providers import provider_class

    if inventory is not None:
        from fedctl.config.inventory import load_inventory

        inv = load_inventory(inventory)
        cls = provider_class(inv.provider)
        if not issubclass(cls, MachineProvider):
            raise UsageError(f"provider {inv.provider} ({inventory}) creates no machines: there are none to list")
        return cls(hosts=list(inv.hosts), progress=progress)
    for state in _states(store):
        cls = provider_class(state.provider)
        if issubclass(cls, MachineProvider) and state.hosts:
            return cls(hosts=[r.info for r in state.hosts], progress=progress)
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


@dataclass(frozen=True)
class FolderView:
    """What this folder's state says: the run it works on and that run's origin tag; ``unreadable``
    when a state file exists but cannot be read (another fedctl version, a corrupt file): then no
    machine of this folder can be called an orphan."""

    active: str | None
    origin: str
    unreadable: bool = False


def folder_view(store: StateStore) -> FolderView:
    """The run this folder is still working on (its machines are not orphans)."""
    from fedctl.errors import StateError
    from fedctl.providers import run_origin

    origin = folder_origin(store.root)
    try:
        state = store.load_or_none()
    except StateError:
        return FolderView(None, origin, unreadable=True)
    if state is None or state.phase == "torn_down":
        return FolderView(None, origin)
    return FolderView(state.run_id, run_origin(state, store))


def active_run(store: StateStore) -> str | None:
    """The run this folder is still working on, if its state can be read."""
    return folder_view(store).active


def classify(machines: Sequence[Machine], active: str | None, origin: str, unreadable: bool = False,
             active_origin: str | None = None) -> list[Listed]:
    """Whose each machine is. ``origin`` is this folder's tag, ``active_origin`` the active run's
    (the same unless the folder moved since the run began)."""
    out = []
    for m in machines:
        if active is not None and m.run_id == active and m.origin in (origin, active_origin or origin):
            whose = THIS_RUN
        elif m.origin == origin and unreadable:
            whose = UNKNOWN
        elif m.origin == origin:
            whose = ORPHAN
        else:
            whose = OTHER_FOLDER
        out.append(Listed(m, whose))
    return out


def listing(store: StateStore, provider: MachineProvider, include_ended: bool) -> list[Listed]:
    """Every machine fedctl created with this provider's account and region, and whose it is."""
    view = folder_view(store)
    machines = provider.machines(all_runs=True, include_ended=include_ended)
    return classify(machines, view.active, folder_origin(store.root), view.unreadable, view.origin)


@dataclass(frozen=True)
class SweepPlan:
    """What ``--sweep`` will terminate (exactly these instances), which runs' security groups it
    may delete, and what it refuses (machines of this folder whose state cannot be read)."""

    targets: list[Listed]
    group_runs: list[str]
    refused: list[Listed]
    origins: set[str] | None  # whose groups may go: this folder's, or anyone's with --any-folder


def sweep_plan(store: StateStore, provider: Any, any_folder: bool) -> SweepPlan:
    """The live machines to terminate, the runs whose leftover groups to delete, what is refused.

    A security group never makes an instance a target: only listed instances are terminated."""
    from fedctl.providers import aws_ec2

    view = folder_view(store)
    origin = folder_origin(store.root)
    wanted = (ORPHAN, OTHER_FOLDER, UNKNOWN) if any_folder else (ORPHAN,)
    rows = listing(store, provider, include_ended=False)
    targets = [x for x in rows if x.whose in wanted]
    refused = [x for x in rows if x.whose == UNKNOWN and not any_folder]
    runs = {x.machine.run_id for x in targets if x.machine.run_id}
    # security groups of runs whose instances are all gone already (a crash between the two); with an
    # unreadable state this folder's active run is unknown, so its groups stay unless --any-folder
    if any_folder or not view.unreadable:
        for g in aws_ec2.run_groups(provider.ec2, None):
            tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
            run = tags.get(aws_ec2.TAG_RUN)
            if run and run != view.active and (any_folder or tags.get(aws_ec2.TAG_ORIGIN) == origin):
                runs.add(run)
    return SweepPlan(targets, sorted(runs), refused, None if any_folder else {origin})
