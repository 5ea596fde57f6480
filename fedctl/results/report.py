"""``build_report``: the paper-ready results folder of one run, and its summary.md table.

Works only on the local folder that ``collect_raw`` filled and on the run state (so it is tested with
a fabricated metrics.jsonl). metrics.jsonl is read by the payload contract (``fedctl.contract``): a
round repeated after a resume counts once, as in ``cost`` and ``watch``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedctl.contract import MetricsLog, collected_metrics, read_metrics
from fedctl.cost import estimate, format_money, format_totals, run_cost
from fedctl.fsutil import atomic_write
from fedctl.results.fmt import fmt_bytes, fmt_duration, fmt_value
from fedctl.results.plots import (
    is_async,
    participation_matrix,
    plot_accuracy_by,
    plot_cost,
    plot_curve,
    plot_participation,
    plot_response_heatmap,
    plot_staleness,
    update_staleness,
)
from fedctl.results.provenance import inventory_dict, versions
from fedctl.results.redact import known_secrets, redact_text, redact_tree, scrub
from fedctl.state import RunState


@dataclass
class Report:
    """What ``build_report`` wrote (paths relative to ``dir``) and the numbers of the summary table."""

    dir: Path
    files: list[str]
    plots: list[str]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "files": self.files, "plots": self.plots,
                "summary": self.summary, "warnings": self.warnings}


def _yaml(data: Any) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True).encode()


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def metric_table(log: MetricsLog) -> dict[str, dict[str, Any]]:
    """Every metric the payload's round lines report (whatever it is): rounds reporting it, last,
    min and max."""
    out = {}
    for name in log.metric_names():
        _, ys = log.series(name)
        out[name] = {"rounds": len(ys), "last": ys[-1], "min": min(ys), "max": max(ys)}
    return out


def run_summary(log: MetricsLog, state: RunState, rc: Any, guard: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers of the paper table (None where unknown)."""
    rounds_x, accs = log.series("accuracy")
    losses = log.series("loss")[1]
    secs = [e - s for s, e in log.round_times()]
    ids, _, status, resp = participation_matrix(log, state.clients)
    sampled = sum(1 for row in status for s in row if s)
    reported = sum(1 for row in status for s in row if s == 1)
    resp_vals = [v for row in resp for v in row if not math.isnan(v)]
    summ = log.summary
    best_i = max(range(len(accs)), key=lambda i: accs[i]) if accs else None

    def final(key: str, default: Any) -> Any:
        return summ.get(key, default) if summ is not None else default

    return {
        "run_id": state.run_id,
        "strategy": log.strategy,
        "clients": state.clients or len(ids),
        "rounds_planned": state.rounds or log.total_rounds,
        "rounds_completed": final("rounds_completed", len(log.rounds)),
        "final_accuracy": final("final_accuracy", accs[-1] if accs else None),
        "best_accuracy": final("best_accuracy", max(accs) if accs else None),
        "best_round": rounds_x[best_i] if best_i is not None else None,
        "final_loss": final("final_loss", losses[-1] if losses else None),
        "wall_s": log.wall_s,
        "mean_round_s": statistics.fmean(secs) if secs else None,
        "median_round_s": statistics.median(secs) if secs else None,
        "mean_response_s": statistics.fmean(resp_vals) if resp_vals else None,
        "participation": reported / sampled if sampled else None,
        "dropped": sampled - reported,
        # a payload that only knows the run's total (Flower) puts it in the summary line
        "bytes_in": int(final("bytes_in", sum(log.series("bytes_in")[1]))),
        "bytes_out": int(final("bytes_out", sum(log.series("bytes_out")[1]))),
        "status": summ.status if summ is not None else str(state.phase),
        "stopped_by": (guard or {}).get("reason"),
        "cost": dict(rc.total),
        "host_hours": sum(r.hours for r in rc.rows),
        "metrics": metric_table(log),
        **async_summary(log),
    }


def async_summary(log: MetricsLog) -> dict[str, Any]:
    """An asynchronous run's totals (FedBuff, FedAsync): client updates the run took, updates dropped
    as stale, staleness of the applied ones; nothing for a synchronous run (its summary is unchanged)."""
    if not is_async(log):
        return {}
    summ, last = log.summary, log.ordered[-1]

    def total(key: str) -> int:
        # the summary line's total, else the last round line's running total
        got = summ.get(key) if summ is not None else None
        return int(got if got is not None else last.values.get(key, 0))

    stale = update_staleness(log)
    return {"client_updates": total("client_updates"), "dropped_stale": total("dropped_stale"),
            "staleness_mean": statistics.fmean(stale) if stale else None,
            "staleness_max": max(stale) if stale else None}


def summary_markdown(s: Mapping[str, Any], rc: Any, vers: Mapping[str, Any], guard: Mapping[str, Any] | None,
                     plots: Sequence[str]) -> str:
    """summary.md: the paper table, hosts and cost, every reported metric, versions, the plots."""
    cost = format_totals(s["cost"])
    part = "-" if s["participation"] is None else f"{100 * s['participation']:.1f}%"
    lines = [
        f"# Run {s['run_id']}",
        "",
        "| Run | Strategy | Clients | Rounds | Final accuracy | Best accuracy (round) | Final loss | Wall time | Mean round | Participation | Cost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['run_id']} | {s['strategy'] or '-'} | {s['clients']} | {s['rounds_completed']}/{s['rounds_planned'] or '-'} "
        f"| {fmt_value(s['final_accuracy'])} | {fmt_value(s['best_accuracy'])} ({fmt_value(s['best_round'])}) "
        f"| {fmt_value(s['final_loss'])} | {fmt_duration(s['wall_s'])} | {fmt_duration(s['mean_round_s'])} "
        f"| {part} | {cost} |",
        "",
        f"Status: **{s['status']}**" + (f" (stopped by the budget guard: {guard.get('reason')}: {guard.get('message')})"
                                        if guard else ""),
        "",
        f"Dropped updates: {s['dropped']}. Median round: {fmt_duration(s['median_round_s'])}. "
        f"Mean client response: {fmt_duration(s['mean_response_s'])}. "
        f"Traffic: {fmt_bytes(s['bytes_in'])} in, {fmt_bytes(s['bytes_out'])} out.",
        "",
    ]
    if s.get("client_updates") is not None:
        lines += [
            f"Asynchronous: {s['rounds_completed']} server updates took **{s['client_updates']} client updates**; "
            f"**{s['dropped_stale']} dropped as stale**. Staleness of the applied updates: mean "
            f"{fmt_value(s['staleness_mean'], 2)}, max {fmt_value(s['staleness_max'])}.",
            "",
        ]
    lines += [
        "## Hosts and cost",
        "",
        "| Host | Role | Price per hour | Hours | Cost |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rc.rows:
        price = "-" if r.price_per_hour is None else format_money(r.price_per_hour, r.currency)
        lines.append(f"| {r.name} | {r.role} | {price} | {r.hours:.3f} | {format_money(r.cost, r.currency)} |")
    lines.append(f"| **total** | | | {s['host_hours']:.3f} | {cost} |")
    if s["metrics"]:
        lines += ["", "## Metrics the payload reported", "", "| Metric | Rounds | Last | Min | Max |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {m['rounds']} | {fmt_value(m['last'])} | {fmt_value(m['min'])} | {fmt_value(m['max'])} |"
                  for name, m in s["metrics"].items()]
    git = vers.get("experiment_git") or {}
    packages = "; ".join(f"{name} {', '.join(vs)}" for name, vs in vers["packages"].items())
    lines += [
        "",
        "## Versions",
        "",
        f"- fedctl {vers['fedctl']}",
        f"- Python {', '.join(vers['python']) or '-'} (hosts)" + (f"; {packages}" if packages else ""),
        f"- experiment commit: {git.get('commit', '-')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def _ledger_time(state: RunState) -> float:
    """When the last host was released, else now (the ledger of a finished run stops there)."""
    held = [h for h in state.hosts if h.acquired_at is not None]
    if held and all(h.released_at is not None for h in held):
        return max(h.released_at for h in held)  # type: ignore[type-var]
    return time.time()


def build_report(
    results_dir: Path,
    state: RunState,
    now: float | None = None,
    secrets: Iterable[str] = (),
    guard: Mapping[str, Any] | None = None,
    experiment_dir: Path | None = None,
) -> Report:
    """Turn the folder ``collect_raw`` filled into the paper-ready results folder (see the package doc).

    ``now``: the ledger's time (default: when the last host was released, else the current time).
    ``secrets``: values to mask everywhere (the run token). ``guard``: the GuardTrip dict if a budget
    guard stopped the run (else ``results_dir/guard.json`` is read if collect_raw copied it).
    ``experiment_dir``: the folder whose git commit is recorded (default: the config file's folder).
    """
    from fedctl.budget import GUARD_FILE, parse_guard

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    now = _ledger_time(state) if now is None else now
    guard_path = results_dir / GUARD_FILE
    if guard is None and guard_path.exists():
        trip = parse_guard(guard_path.read_text(errors="replace"))
        if trip is None:
            warnings.append(f"{GUARD_FILE} is unreadable")
        else:
            guard = trip.to_dict()
    if experiment_dir is None and state.config_path:
        experiment_dir = Path(state.config_path).expanduser().absolute().parent
    secret_values = known_secrets(state, secrets)

    metrics_path = collected_metrics(results_dir, state)
    if not metrics_path.exists():
        warnings.append(f"no {metrics_path.name}: the run reported no rounds (or results were not collected)")
    log = read_metrics(str(metrics_path))
    if log.bad_lines:
        warnings.append(f"{metrics_path.name}: {log.bad_lines} unreadable line(s) left out")
    rc = run_cost(state, now)
    budget = state.experiment.budget
    plots = [
        plot_curve(log, "accuracy", results_dir / "accuracy.png", "global model accuracy per round", "accuracy"),
        plot_curve(log, "loss", results_dir / "loss.png", "global model loss per round", "loss", best="min"),
        plot_response_heatmap(log, results_dir / "response_heatmap.png", state.clients),
        plot_participation(log, results_dir / "participation.png", state.clients),
        plot_cost(state, now, results_dir / "cost.png", budget.max_cost),
    ]
    if is_async(log):  # a synchronous run's folder stays as it was
        plots += [
            plot_accuracy_by(log, "time", results_dir / "accuracy_vs_time.png"),
            plot_accuracy_by(log, "updates", results_dir / "accuracy_vs_updates.png"),
            plot_staleness(log, results_dir / "staleness.png"),
        ]
    plot_names = [p.name for p in plots]

    written: dict[str, bytes] = {}
    written["config.yaml"] = _yaml(scrub(state.experiment.rendered(), secret_values))
    written["inventory.yaml"] = _yaml(scrub(inventory_dict(state), secret_values))
    vers = versions(state, experiment_dir)
    written["versions.json"] = _json(vers)
    est = estimate(state, state.rounds or len(log.rounds))
    if log.rounds:
        est = est.updated_from_metrics(log)
    cost_doc = {**rc.to_dict(), "budget": budget.to_dict(), "guard": dict(guard) if guard else None,
                "estimate": est.to_dict()}
    written["cost.json"] = _json(cost_doc)
    summ = run_summary(log, state, rc, guard)
    written["summary.md"] = summary_markdown(summ, rc, vers, guard, plot_names).encode()
    if guard and not guard_path.exists():
        written[GUARD_FILE] = _json(dict(guard))
    for name, data in written.items():
        atomic_write(results_dir / name, redact_text(data.decode(), secret_values).encode())

    redact_tree(results_dir, secret_values)
    files = sorted(str(p.relative_to(results_dir)) for p in results_dir.rglob("*") if p.is_file())
    report = Report(results_dir, files + (["report.json"] if "report.json" not in files else []), plot_names, summ, warnings)
    atomic_write(results_dir / "report.json", _json(report.to_dict()))
    return report
