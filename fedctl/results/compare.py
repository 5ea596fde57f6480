"""``compare``: several runs' accuracy on one plot, and a table of rounds and time to a target (and,
for an asynchronous run, client updates to it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from fedctl.contract import MetricsLog, collected_metrics, read_metrics
from fedctl.fsutil import atomic_write
from fedctl.results.fmt import fmt_duration, fmt_value
from fedctl.results.plots import is_async, plot_curves


@dataclass
class CompareRow:
    run: str
    label: str
    strategy: str | None
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    rounds_to_target: int | None
    seconds_to_target: float | None
    wall_s: float | None
    client_updates: int | None = None  # an asynchronous run's total (FedBuff, FedAsync); None: synchronous
    updates_to_target: int | None = None


@dataclass
class Comparison:
    target: float | None
    rows: list[CompareRow]
    plot: Path
    table: Path

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": [asdict(r) for r in self.rows], "plot": str(self.plot),
                "table": str(self.table)}


def reach(log: MetricsLog, target: float) -> tuple[int | None, float | None]:
    """(round, seconds since the first round started) at which accuracy first reached ``target``."""
    rounds = log.ordered
    first = min((r.start for r in rounds if r.start is not None), default=None)
    for r in rounds:
        if r.accuracy is not None and r.accuracy >= target:
            return r.round, (r.end - first if first is not None and r.end is not None else None)
    return None, None


def updates_to(log: MetricsLog, target: float) -> int | None:
    """Client updates (the running total) an asynchronous run had taken when accuracy first reached
    ``target``; None when it never did or the run is synchronous."""
    for r in log.ordered:
        if r.accuracy is not None and r.accuracy >= target:
            got = r.values.get("client_updates")
            return int(got) if got is not None else None
    return None


def total_updates(log: MetricsLog) -> int | None:
    """An asynchronous run's client updates: the summary line's total, else the last running total."""
    if not is_async(log):
        return None
    got = log.summary.get("client_updates") if log.summary is not None else None
    if got is None:
        got = next((r.values["client_updates"] for r in reversed(log.ordered) if "client_updates" in r.values), 0)
    return int(got)


def compare(runs: Sequence[Path], out: Path, target: float | None = None) -> Comparison:
    """Accuracy curves of several runs on one plot (``out``, a PNG) and a table (``out`` with .md).

    ``target`` None: the highest accuracy every run reached (the lowest of the runs' best), so the
    "rounds / time to target" columns compare like with like.
    """
    loaded = [(Path(r), read_metrics(str(collected_metrics(r)))) for r in runs]
    bests = [max(ys) for _, log in loaded if (ys := log.series("accuracy")[1])]
    if target is None and bests:
        target = min(bests)
    rows = []
    for path, log in loaded:
        accs = log.series("accuracy")[1]
        strategy = log.strategy
        rnd, secs = reach(log, target) if target is not None else (None, None)
        name = path.name
        rows.append(CompareRow(name, f"{strategy} ({name})" if strategy else name, strategy, len(log.rounds),
                               accs[-1] if accs else None, max(accs) if accs else None, rnd, secs, log.wall_s,
                               total_updates(log), updates_to(log, target) if target is not None else None))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves([(row.label, *log.series("accuracy")) for row, (_, log) in zip(rows, loaded)], out,
                "accuracy per round", "accuracy", target)
    table = out.with_suffix(".md")
    # an asynchronous run counts server updates as rounds: client updates compare it with the others
    updates = any(r.client_updates is not None for r in rows)
    lines = [
        f"Target accuracy: {fmt_value(target)}",
        "",
        "| Run | Strategy | Rounds | Final accuracy | Best accuracy | Rounds to target | Time to target | Wall time |"
        + (" Client updates | Updates to target |" if updates else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if updates else ""),
    ]
    for r in rows:
        line = (f"| {r.run} | {r.strategy or '-'} | {r.rounds} | {fmt_value(r.final_accuracy)} "
                f"| {fmt_value(r.best_accuracy)} "
                f"| {fmt_value(r.rounds_to_target) if r.rounds_to_target else 'not reached'} "
                f"| {fmt_duration(r.seconds_to_target)} | {fmt_duration(r.wall_s)} |")
        if updates:
            reached = ("-" if r.client_updates is None else
                       "not reached" if r.updates_to_target is None else str(r.updates_to_target))
            line += f" {fmt_value(r.client_updates)} | {reached} |"
        lines.append(line)
    atomic_write(table, ("\n".join(lines) + "\n").encode())
    return Comparison(target, rows, out, table)


# -- a sweep's configurations (fedctl sweep): mean curves and mean numbers over the seeds -------------------
@dataclass
class SweepComparison:
    """The configurations of one or more sweeps compared: one row per configuration."""

    target: float | None
    rows: list[dict[str, Any]]
    plot: Path
    table: Path

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": self.rows, "plot": str(self.plot), "table": str(self.table)}


def resolve_sweep(arg: str, root: Path = Path("results")) -> Path | None:
    """A sweep argument: a sweep's results folder, or a sweep's name under ``root/sweeps``; None when
    ``arg`` is neither (it may be a run)."""
    from fedctl.sweep.outcomes import TABLE_JSON

    for cand in (Path(arg), root / "sweeps" / arg):
        if (cand / TABLE_JSON).is_file():
            return cand
    return None


def compare_sweeps(sweeps: Sequence[Path], out: Path, target: float | None = None) -> SweepComparison:
    """Every configuration of ``sweeps``: its mean curve with the seeds' min-max band on one plot
    (``out``, a PNG) and a table (``out`` with .md) of mean final/best accuracy (sample std) and mean
    rounds and time to a target over the seeds that reached it.

    ``target`` None: the sweeps' own ``target_accuracy`` when they agree on one, else, as for runs, the
    highest accuracy every finished run reached.
    """
    from fedctl.sweep.curves import curve_axis, plot_all
    from fedctl.sweep.outcomes import ConfigRow, group, load_sweep

    loaded = [load_sweep(Path(s)) for s in sweeps]
    own = {t for _, _, _, t in loaded}
    if target is None and len(own) == 1:
        target = next(iter(own))
    rows: list[ConfigRow] = []
    for name, _, runs, _ in loaded:
        for row in group(runs, None):
            rows.append(ConfigRow(((("sweep", name),) if len(loaded) > 1 else ()) + row.params, row.outcomes))
    if target is None:
        bests = [o.best_accuracy for r in rows for o in r.finished if o.best_accuracy is not None]
        target = min(bests) if bests else None
    if target is not None:  # the rounds and times to this target
        rows = [ConfigRow(r.params, tuple(group([o.run for o in r.outcomes], target)[0].outcomes)) for r in rows]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_all(rows, curve_axis(rows), target, out, "accuracy per configuration")
    dicts = []
    for r in rows:
        d = r.to_dict([], target, updates=False)
        dicts.append({"configuration": r.label, **d})
    lines = [f"Target accuracy: {fmt_value(target)}. Means over each configuration's finished seeds; "
             "std: sample standard deviation (ddof=1).", "",
             "| Configuration | n | Failed | Final accuracy | Best accuracy | Rounds to target | Time to target "
             "| Reached |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def pm(m: float | None, s: float | None) -> str:
        return fmt_value(m) + (f" ± {fmt_value(s)}" if s is not None else "")

    for d in dicts:
        rnd = d.get("rounds_to_target_mean")
        lines.append(f"| {d['configuration'].replace('|', '/')} | {d['n']}/{d['runs']} | {d['failed']} "
                     f"| {pm(d['final_accuracy_mean'], d['final_accuracy_std'])} "
                     f"| {pm(d['best_accuracy_mean'], d['best_accuracy_std'])} "
                     f"| {'-' if rnd is None else f'{rnd:.1f}'} | {fmt_duration(d.get('seconds_to_target_mean'))} "
                     f"| {d.get('reached_target', '-')} |")
    table = out.with_suffix(".md")
    atomic_write(table, ("\n".join(lines) + "\n").encode())
    return SweepComparison(target, dicts, out, table)
