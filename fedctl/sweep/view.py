"""The campaign's live view: a pure snapshot (``campaign_view``) rendered three ways: one rich screen
that fits 80x24 (``render_view``), plain lines (``plain_lines``) and JSON (``CampaignView.to_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedctl.dashboard.fmt import fit_name, fmt_money, fmt_num
from fedctl.sweep.state import CampaignState
from fedctl.units import fmt_duration

#: lines of running runs and of failed runs the screen shows (the rest is counted), so it fits 24 rows
MAX_RUNNING_ROWS = 8
MAX_FAILED_ROWS = 4
WIDTH = 80


@dataclass(frozen=True)
class RunningRow:
    key: str
    run_id: str | None
    round: int
    rounds: int
    accuracy: float | None
    seconds: float | None


@dataclass(frozen=True)
class CampaignView:
    name: str
    counts: dict[str, int]
    total: int
    parallel: int | None
    running: tuple[RunningRow, ...]
    failed: tuple[tuple[str, str], ...]  # (key, error)
    fleet_phase: str | None
    hosts: tuple[str, ...]
    cost: dict[str, float] = field(default_factory=dict)
    per_hour: dict[str, float] = field(default_factory=dict)
    elapsed_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def campaign_view(state: CampaignState, fleet_state: Any, now: float) -> CampaignView:
    """The snapshot of a campaign (its state, its fleet's state at ``now``); pure."""
    from fedctl.cost import run_cost

    running = []
    for key, run in state.runs.items():
        if run.status == "running":
            p = state.progress.get(key, {})
            running.append(RunningRow(key, run.run_id, int(p.get("round") or 0), int(p.get("rounds") or 0),
                                      p.get("accuracy"), now - run.started_at if run.started_at else None))
    failed = tuple((k, r.error or "") for k, r in state.runs.items() if r.status == "failed")
    cost: dict[str, float] = {}
    per_hour: dict[str, float] = {}
    hosts: tuple[str, ...] = ()
    elapsed = None
    phase = state.fleet
    if fleet_state is not None:
        rc = run_cost(fleet_state, now)
        cost, per_hour = dict(rc.total), dict(rc.per_hour)
        hosts = tuple(f"{h.name} ({h.role}, {h.status})" for h in fleet_state.hosts)
        starts = [h.acquired_at for h in fleet_state.hosts if h.acquired_at]
        ends = [h.released_at for h in fleet_state.hosts]
        end = max(ends) if ends and all(ends) else now  # a torn-down fleet's time is over
        elapsed = end - min(starts) if starts else None
        phase = str(fleet_state.phase)
    return CampaignView(state.name, state.counts(), len(state.runs), state.parallel, tuple(running), failed,
                        phase, hosts, cost, per_hour, elapsed)


def _money(totals: dict[str, float]) -> str:
    return " + ".join(fmt_money(v, c) for c, v in sorted(totals.items())) or "-"


def headline(v: CampaignView) -> str:
    c = v.counts
    return (f"{c['finished']}/{v.total} done, {c['running']} running, {c['queued'] + c['interrupted']} queued, "
            f"{c['failed']} failed")


def plain_lines(v: CampaignView) -> list[str]:
    """The view as a few plain lines (no terminal, and ``fedctl sweep status``)."""
    lines = [f"campaign {v.name}: {headline(v)}; parallel {v.parallel or '-'}; fleet {v.fleet_phase or '-'}; "
             f"cost {_money(v.cost)} ({_money(v.per_hour)}/h)"]
    for r in v.running:
        lines.append(f"  running {r.key}: round {r.round}/{r.rounds} accuracy {fmt_num(r.accuracy)}")
    for key, err in v.failed:
        lines.append(f"  failed {key}: {err}")
    return lines


def render_view(v: CampaignView, width: int = WIDTH) -> Any:
    """One screen (at most 80 columns, 24 rows): counts, cost, the running runs, the failures, the
    fleet."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(f"fedctl sweep {v.name}", style="bold")
    head.append(f"  elapsed {fmt_duration(v.elapsed_s)}", style="dim")
    counts = Text(headline(v))
    counts.append(f"  parallel {v.parallel or '-'}", style="dim")
    cost = Text(f"cost so far {_money(v.cost)}  ({_money(v.per_hour)}/h)  fleet {v.fleet_phase or '-'}")
    t = Table(box=None, pad_edge=False, show_edge=False, width=min(width, WIDTH))
    for col, w in (("running", 46), ("round", 10), ("acc", 7), ("time", 9)):
        t.add_column(col, width=w, no_wrap=True, overflow="ellipsis")
    for r in v.running[:MAX_RUNNING_ROWS]:
        t.add_row(fit_name(r.key, 46), f"{r.round}/{r.rounds}", fmt_num(r.accuracy), fmt_duration(r.seconds))
    parts: list[Any] = [head, counts, cost, t]
    if len(v.running) > MAX_RUNNING_ROWS:
        parts.append(Text(f"... and {len(v.running) - MAX_RUNNING_ROWS} more running", style="dim"))
    for key, err in v.failed[:MAX_FAILED_ROWS]:
        parts.append(Text(f"failed {key}: {err}"[: width - 1], style="red", no_wrap=True, overflow="ellipsis"))
    if len(v.failed) > MAX_FAILED_ROWS:
        parts.append(Text(f"... and {len(v.failed) - MAX_FAILED_ROWS} more failed", style="red"))
    hosts = ", ".join(v.hosts[:6]) + (f" (+{len(v.hosts) - 6})" if len(v.hosts) > 6 else "")
    parts.append(Text(f"fleet: {hosts or '-'}"[: width * 2 - 1], style="dim"))
    return Group(*parts)
