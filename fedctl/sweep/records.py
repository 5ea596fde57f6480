"""One run of a campaign, as the campaign's state records it and its tables read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: A run's status in the campaign's state. ``queued`` runs (and ``failed``/``interrupted`` ones,
#: on request) are run again by the same command; ``finished`` runs never are.
STATUSES = ("queued", "running", "finished", "failed", "interrupted")


@dataclass(frozen=True)
class SweepRun:
    """One configuration of the grid with one seed.

    ``params`` keeps the grid's keys in the sweep file's order (``(("strategy.name", "fedavg"),
    ("data.alpha", 0.1))``); ``key`` is the stable name of the run in the state and on disk;
    ``results_dir`` is the run's own collected results folder (its ``metrics.jsonl`` is read through
    the payload contract), None until the run was collected."""

    key: str
    params: tuple[tuple[str, Any], ...]
    seed: int | None
    status: str = "queued"
    run_id: str | None = None
    results_dir: str | None = None
    error: str | None = None
    # added by the campaign (fedctl.sweep.campaign); tables may ignore them
    started_at: float | None = None  # this machine's clock, when its latest attempt started
    finished_at: float | None = None  # when its latest attempt ended (finished, failed or interrupted)
    attempts: int = 0  # how many times it was started

    @property
    def config_key(self) -> tuple[tuple[str, Any], ...]:
        """The configuration without the seed: runs that differ only by seed share it."""
        return self.params
