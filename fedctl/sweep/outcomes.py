"""What each run of a campaign says through the payload contract, grouped by configuration.

The table, the curves, the tracker logs and ``fedctl results compare`` of a sweep all read the runs
here, so they agree: a run's final and best accuracy are its summary line's (else its last and best
round's), exactly as ``fedctl results`` reports one run (``fedctl.results.report.run_summary``); the
round and time at which it reached a target come from ``fedctl.results.compare.reach``. A run counts
in a configuration's means only when it finished and reported accuracy; every other run is counted as
``failed`` or ``missing`` with its reason, never dropped silently.

``table.json`` (written by ``tables.write_sweep_outputs``) records the sweep's runs, so a sweep's folder
alone is enough to compare its configurations later.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedctl.contract import MetricsLog, collected_metrics, read_metrics
from fedctl.sweep.records import SweepRun

TABLE_JSON = "table.json"
#: how a run counts in its configuration's row
FINISHED, FAILED, MISSING = "finished", "failed", "missing"


@dataclass(frozen=True)
class RunOutcome:
    """One run as its collected metrics say. ``outcome``: finished (counts in the means), failed, or
    missing (queued, running, interrupted, or no metrics/accuracy to read); ``reason`` says why."""

    run: SweepRun
    outcome: str
    reason: str | None
    log: MetricsLog | None
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    rounds_to_target: int | None = None
    seconds_to_target: float | None = None
    updates_to_target: int | None = None

    @property
    def asynchronous(self) -> bool:
        """Do its round lines count client updates (FedBuff, FedAsync)?"""
        from fedctl.results.plots import is_async

        return self.log is not None and is_async(self.log)


def fmt_param(value: Any) -> str:
    """A grid value as the sweep file writes it (YAML's spelling of true/false/null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def config_label(params: Sequence[tuple[str, Any]]) -> str:
    """``strategy.name=fedavg, data.alpha=0.1`` (``all runs`` for a sweep with only seeds)."""
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in params) or "all runs"


def run_outcome(run: SweepRun, target: float | None) -> RunOutcome:
    """Read one run's metrics.jsonl (through the contract) and classify it."""
    from fedctl.results.compare import reach, updates_to

    if run.status not in (FINISHED, FAILED):
        return RunOutcome(run, MISSING, run.status + (f" ({run.error})" if run.error else ""), None)
    if not run.results_dir:
        why = (run.error or "failed") if run.status == FAILED else "finished but no results folder recorded"
        return RunOutcome(run, FAILED if run.status == FAILED else MISSING, why, None)
    path = collected_metrics(run.results_dir)
    log = read_metrics(str(path)) if path.is_file() else None
    if run.status == FAILED:
        return RunOutcome(run, FAILED, run.error or "failed", log)
    if log is None:
        return RunOutcome(run, MISSING, f"no {path.name} in {run.results_dir}", None)
    if log.summary is not None and log.summary.status == FAILED:
        return RunOutcome(run, FAILED, f"the payload says failed: {log.summary.reason or 'no reason given'}", log)
    accs = log.series("accuracy")[1]
    summ = log.summary

    def final(key: str, default: float | None) -> float | None:
        # the summary line's number when it has one, as the run's own summary.md says
        got = summ.get(key) if summ is not None else None
        return float(got) if got is not None else default

    if not accs and final("final_accuracy", None) is None:
        return RunOutcome(run, MISSING, "no accuracy reported", log)
    rnd, secs = reach(log, target) if target is not None else (None, None)
    return RunOutcome(run, FINISHED, None, log, final("final_accuracy", accs[-1] if accs else None),
                      final("best_accuracy", max(accs) if accs else None), rnd, secs,
                      updates_to(log, target) if target is not None else None)


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1, numpy's ``std(ddof=1)``); None below two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


@dataclass(frozen=True)
class ConfigRow:
    """One configuration of the grid over its seeds: the table's row."""

    params: tuple[tuple[str, Any], ...]
    outcomes: tuple[RunOutcome, ...]

    @property
    def label(self) -> str:
        return config_label(self.params)

    def of(self, outcome: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == outcome]

    @property
    def finished(self) -> list[RunOutcome]:
        return self.of(FINISHED)

    def values(self, field: str) -> list[float]:
        """``field`` of the finished runs that have it."""
        return [float(v) for o in self.finished if (v := getattr(o, field)) is not None]

    def reached(self) -> list[RunOutcome]:
        return [o for o in self.finished if o.rounds_to_target is not None]

    def to_dict(self, grid_keys: Sequence[str], target: float | None, updates: bool) -> dict[str, Any]:
        """The row by column name (table.csv's columns; None where there is nothing to report)."""
        params = dict(self.params)
        row: dict[str, Any] = {k: params.get(k) for k in grid_keys}
        fin, bst = self.values("final_accuracy"), self.values("best_accuracy")
        row.update({"runs": len(self.outcomes), "n": len(self.finished), "failed": len(self.of(FAILED)),
                    "missing": len(self.of(MISSING)),
                    "final_accuracy_mean": mean(fin), "final_accuracy_std": sample_std(fin),
                    "best_accuracy_mean": mean(bst), "best_accuracy_std": sample_std(bst)})
        if target is not None:
            hit = self.reached()
            row.update({
                "rounds_to_target_mean": mean([o.rounds_to_target for o in hit if o.rounds_to_target is not None]),
                "seconds_to_target_mean": mean([o.seconds_to_target for o in hit if o.seconds_to_target is not None]),
                "reached_target": len(hit),
            })
            if updates:
                row["updates_to_target_mean"] = mean(
                    [o.updates_to_target for o in hit if o.updates_to_target is not None])
        return row


def group(runs: Sequence[SweepRun], target: float | None) -> list[ConfigRow]:
    """The runs' outcomes by configuration, in the order the configurations first appear (the grid's)."""
    by: dict[tuple[tuple[str, Any], ...], list[RunOutcome]] = {}
    for run in runs:
        by.setdefault(run.config_key, []).append(run_outcome(run, target))
    return [ConfigRow(k, tuple(sorted(v, key=lambda o: (o.run.seed is None, o.run.seed or 0)))) for k, v in by.items()]


# -- table.json: the sweep's runs, so its folder alone can be compared later -------------------------------
def _portable(path: str | None, out_dir: Path) -> str | None:
    """A run's results folder relative to the sweep's folder when it lies inside it (the folder moves
    with its runs), else absolute."""
    if not path:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(out_dir.resolve()))
    except ValueError:
        return str(p)


def sweep_record(out_dir: Path, name: str, grid_keys: Sequence[str], runs: Sequence[SweepRun],
                 target: float | None) -> dict[str, Any]:
    """table.json's runs part: the name, grid keys, target and each run's record."""
    return {"name": name, "grid_keys": list(grid_keys), "target_accuracy": target,
            "runs": [{"key": r.key, "params": [[k, v] for k, v in r.params], "seed": r.seed, "status": r.status,
                      "run_id": r.run_id, "results_dir": _portable(r.results_dir, out_dir), "error": r.error}
                     for r in runs]}


def load_sweep(out_dir: Path) -> tuple[str, list[str], list[SweepRun], float | None]:
    """(name, grid keys, runs, target accuracy) of a sweep's folder, from its table.json."""
    from fedctl.errors import UsageError

    path = Path(out_dir) / TABLE_JSON
    try:
        data = json.loads(path.read_text())
        runs = []
        for r in data["runs"]:
            rd = r.get("results_dir")
            if rd and not Path(rd).is_absolute():
                rd = str(Path(out_dir) / rd)
            runs.append(SweepRun(key=str(r["key"]), params=tuple((str(k), v) for k, v in r["params"]),
                                 seed=r.get("seed"), status=str(r.get("status") or "queued"),
                                 run_id=r.get("run_id"), results_dir=rd, error=r.get("error")))
        return str(data["name"]), [str(k) for k in data["grid_keys"]], runs, data.get("target_accuracy")
    except FileNotFoundError:
        raise UsageError(f"{out_dir}: no {TABLE_JSON} there: not a sweep's results folder",
                         hint="a sweep writes it into results/sweeps/<name>/ when it ends") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is unreadable: {exc}") from None
