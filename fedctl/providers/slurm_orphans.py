"""The Slurm twin of ``fedctl instances``: fedctl's jobs of this user on the cluster, and whose they are.

A job is fedctl's when squeue shows it named ``fedctl-<run>`` AND commented
``fedctl-origin=<origin>`` (what ``SlurmProvider.allocate`` submits). Each one is this folder's
current run, an orphan of this folder (its run was torn down, forgotten or its state deleted while the
job went on), another folder's (``origin`` differs: someone's running experiment, perhaps on
another machine), or, while this folder's state cannot be read, unknown. A job named like fedctl's
but without fedctl's comment is listed as not fedctl's and never cancelled.

``sweep`` cancels exactly the jobs of a plan, each re-read with squeue just before its ``scancel``
(name AND comment, as ``slurm_jobs.cancel_ours`` does for teardown), and waits until squeue no longer shows
them. Other folders' and unknown jobs are swept only with ``any_folder`` (``--any-folder``, as for
EC2 instances). Typed and callable without the CLI.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from fedctl.errors import UsageError
from fedctl.providers.aws_orphans import ORPHAN, OTHER_FOLDER, THIS_RUN, UNKNOWN, folder_view
from fedctl.providers.base import folder_origin
from fedctl.providers.slurm_jobs import Job, SlurmCli, wait_gone
from fedctl.state import StateStore

#: a job named ``fedctl-*`` without fedctl's origin comment: not fedctl's, never cancelled
NOT_OURS = "not fedctl's (no origin comment)"
#: how long ``sweep`` waits for the cancelled jobs to leave squeue (seconds)
SWEEP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ListedJob:
    """One job squeue shows and whose it is."""

    job: Job
    whose: str  # THIS_RUN | ORPHAN | OTHER_FOLDER | UNKNOWN | NOT_OURS

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``fedctl instances --json``)."""
        return {**asdict(self.job), "run_id": self.job.run_id, "origin": self.job.origin, "whose": self.whose}


def slurm_cli_here(store: StateStore, inventory: str | None) -> SlurmCli | None:
    """The login node to ask, as a ``SlurmCli``: from ``inventory`` when it says ``provider: slurm``,
    else from this folder's newest run (current first, then archived) when that run was on Slurm.
    None when neither is about Slurm (``fedctl instances`` then lists cloud instances)."""
    from fedctl.ops.common import known_hosts_path
    from fedctl.providers.slurm import login_connector
    from fedctl.providers.slurm_config import settings

    hosts: list[Any] = []
    if inventory is not None:
        from fedctl.config.inventory import load_inventory

        inv = load_inventory(inventory)
        if inv.provider != "slurm":
            return None
        hosts = list(inv.hosts)
    else:
        from fedctl.providers.aws_orphans import _states

        newest = next((s for s in _states(store) if s.hosts), None)
        if newest is None or newest.provider != "slurm":
            return None
        hosts = [r.info for r in newest.hosts]
    if not hosts:
        raise UsageError(f"{inventory or store.state_file}: provider slurm without hosts: no login node to ask")
    return SlurmCli(connector=login_connector(settings(hosts[0]), known_hosts_path(store)))


def classify(jobs: Sequence[Job], active: str | None, origin: str, unreadable: bool = False,
             active_origin: str | None = None) -> list[ListedJob]:
    """Whose each job is. ``origin`` is this folder's, ``active_origin`` the active run's (the
    same unless the folder moved since the run began)."""
    out = []
    for j in jobs:
        if j.run_id is None or j.origin is None:
            whose = NOT_OURS
        elif active is not None and j.run_id == active and j.origin in (origin, active_origin or origin):
            whose = THIS_RUN
        elif j.origin in (origin, active_origin or origin):
            whose = UNKNOWN if unreadable else ORPHAN
        else:
            whose = OTHER_FOLDER
        out.append(ListedJob(j, whose))
    return out


def listing(store: StateStore, cli: SlurmCli) -> list[ListedJob]:
    """This user's jobs named ``fedctl-*`` that squeue shows now, and whose each is."""
    view = folder_view(store)
    return classify(cli.jobs(), view.active, folder_origin(store.root), view.unreadable, view.origin)


@dataclass(frozen=True)
class JobSweepPlan:
    """What ``sweep`` cancels (exactly these jobs) and what it refuses (this folder's jobs while
    its state cannot be read: they may be the live run's)."""

    targets: list[ListedJob]
    refused: list[ListedJob]


def sweep_plan(store: StateStore, cli: SlurmCli, any_folder: bool) -> JobSweepPlan:
    """The jobs to cancel: this folder's orphans; with ``any_folder`` other folders' and unknown
    ones too. Never the current run's, never one without fedctl's name and comment."""
    wanted = (ORPHAN, OTHER_FOLDER, UNKNOWN) if any_folder else (ORPHAN,)
    rows = listing(store, cli)
    return JobSweepPlan([x for x in rows if x.whose in wanted],
                        [x for x in rows if x.whose == UNKNOWN and not any_folder])


@dataclass
class SweepResult:
    """What ``sweep`` cancelled and what it left alone (its name or comment changed since listed)."""

    cancelled: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def sweep(cli: SlurmCli, targets: Sequence[ListedJob], say: Callable[[str], None] = lambda _m: None,
          poll_s: float = 1.0, timeout_s: float = SWEEP_TIMEOUT_S, clock: Callable[[], float] = time.monotonic
          ) -> SweepResult:
    """Cancel exactly ``targets``: each run's jobs re-read with squeue just before their scancel and
    cancelled only while their name AND comment are still that run's and origin's; then wait until
    squeue shows none of them. A job whose name or comment changed since (or that ended) is left
    and reported."""
    result = SweepResult()
    groups: dict[tuple[str, str], list[str]] = {}
    for x in targets:
        if x.job.run_id is None or x.job.origin is None:  # a plan never holds one; a caller's list might
            result.left.append(x.job.id)
            continue
        groups.setdefault((x.job.run_id, x.job.origin), []).append(x.job.id)
    for (run_id, origin), ids in sorted(groups.items()):
        still = [j.id for j in cli.jobs(ids=ids) if j.run_id == run_id and j.origin == origin]
        result.left += [i for i in ids if i not in still]
        cli.cancel(still)
        result.cancelled += still
    wait_gone(cli, result.cancelled, set(groups), timeout_s, poll_s, say, clock)
    return result
