"""The pure rich renderer of a watch Snapshot: ``render(snapshot) -> renderable``.

No I/O, no clock: the same snapshot always renders the same screen, which is what the tests check.
Given a ``width``, every line fits it and no cell wraps (so no word is broken across lines): cells
are cut with an ellipsis, host names are cut one way everywhere (``fmt.fit_name``), and the columns
that matter least give up their room first. ``compact`` is the small-terminal form: sections headed
by a rule instead of a box, one line per host, the alerts under the numbers. The plain-text renderer
is ``fedctl.dashboard.plain``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from fedctl.dashboard.fmt import (allocation_text, compact_seconds, fit_name, fmt_count, fmt_ids, fmt_money, fmt_num, fmt_staleness,
                                  gpu_short, gpu_text, host_reach, name_width, sparkline, stragglers)
from fedctl.monitor.snapshot import Alert, ClientSnapshot, HostSnapshot, Snapshot
from fedctl.units import fmt_duration

T = TypeVar("T")

STATE_STYLE = {
    "training": "cyan",
    "uploading": "blue",
    "reported": "green",
    "waiting": "dim",
    "dropped": "yellow",
    "dead": "bold red",
    "finished": "green",
    "unknown": "dim",
}
SPARK_POINTS = 40  # the charts show the most recent rounds, so a long run does not wrap them
GAP = 2  # columns between two table columns (padding 1 on each side, none at the edges)


def _heat_cell(value: float | None, median: float | None, straggler: bool) -> Text:
    if value is None:
        return Text("  · ", style="dim")
    if value < 0:
        return Text("  ✗ ", style="bold white on red")
    if math.isnan(value):
        return Text("  ? ", style="dim")
    ratio = value / median if median else 1.0
    style = "black on green" if ratio <= 1.25 else "black on yellow" if ratio <= 2.0 else "white on red"
    if straggler:  # the straggler gets a marker, not only a style: visible without colours too
        label = compact_seconds(value, 3) + "*"
        style += " bold underline"
    else:
        label = compact_seconds(value, 4)
    return Text(label[:4].rjust(4), style=style)


def pick_rows(items: Sequence[T], limit: int | None, severity: Callable[[T], int]) -> list[T]:
    """At most ``limit`` of ``items``, the most severe first (then in order); shown in order.

    A screen too small for every client/host still shows the dead, dropped and unreachable ones.
    """
    if limit is None or len(items) <= limit:
        return list(items)
    ranked = sorted(range(len(items)), key=lambda i: (-severity(items[i]), i))
    return [items[i] for i in sorted(ranked[: max(0, limit)])]


def client_severity(c: ClientSnapshot) -> int:
    """How much a client row needs to be seen: dead > dropped > still training > the rest."""
    return {"dead": 3, "dropped": 2, "training": 1, "uploading": 1}.get(c.state, 0)


def host_severity(h: HostSnapshot) -> int:
    """Unreachable > a dead process > stale data > nvidia-smi failing > the rest."""
    if h.reachable is False:
        return 4
    if any(p.alive is False for p in h.processes):
        return 3
    if h.stale:
        return 2
    return 1 if h.gpu.status == "error" else 0


# -- columns that fit a width ------------------------------------------------------------------------
@dataclass
class _Col:
    header: str
    cells: list[Text] = field(default_factory=list)
    justify: str = "left"

    def natural(self) -> int:
        return max([cell_len(self.header)] + [cell_len(line) for c in self.cells for line in c.plain.split("\n")])


def _total(widths: Sequence[int]) -> int:
    shown = [w for w in widths if w > 0]
    return sum(shown) + GAP * max(0, len(shown) - 1)


def _fit_widths(natural: Sequence[int], avail: int | None, shrink: Sequence[tuple[int, int]]) -> list[int]:
    """Column widths within ``avail``: the columns in ``shrink`` (index, least width) give up room in
    that order, down to their least width; a least width of 0 drops the column."""
    widths = list(natural)
    if avail is None:
        return widths
    for i, least in shrink:
        over = _total(widths) - avail
        if over <= 0:
            break
        widths[i] = 0 if least == 0 else max(min(least, widths[i]), widths[i] - over)
    return widths


def _table(cols: Sequence[_Col], widths: Sequence[int]) -> Table:
    """A borderless table of the columns with a width (never wrapped: cut with an ellipsis)."""
    t = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    kept = [i for i, w in enumerate(widths) if w > 0]
    for i in kept:
        t.add_column(cols[i].header, justify=cols[i].justify, width=widths[i],  # type: ignore[arg-type]
                     no_wrap=True, overflow="ellipsis")
    for r in range(len(cols[0].cells) if cols else 0):
        t.add_row(*[cols[i].cells[r] for i in kept])
    return t


class _FitTable:
    """A table whose column widths are chosen for the width it is rendered in: ``shrink`` says which
    columns give up room first (see ``_fit_widths``); ``extra`` columns (the heatmap's rounds, oldest
    first) fill the room left, the most recent ones kept."""

    def __init__(self, cols: list[_Col], shrink: Sequence[tuple[int, int]], extra: Sequence[_Col] = ()) -> None:
        self.cols, self.shrink, self.extra = cols, shrink, list(extra)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        avail = options.max_width
        widths = _fit_widths([c.natural() for c in self.cols], avail, self.shrink)
        room, kept = avail - _total(widths), 0
        for col in reversed(self.extra):
            if col.natural() + GAP > room:
                break
            room -= col.natural() + GAP
            kept += 1
        extra = self.extra[len(self.extra) - kept:]
        yield _table(self.cols + extra, widths + [c.natural() for c in extra])


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _line(*parts: str | tuple[str, str]) -> Text:
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _section(title: str, body: RenderableType, compact: bool, subtitle: str | None = None,
             legend: str | None = None) -> RenderableType:
    """A boxed panel, or (compact) a one-line rule with the title: two lines fewer per section.

    The rule holds the title, then the subtitle (rows not shown), then the legend, cut at its end."""
    if compact:
        head = " · ".join(p for p in (title, subtitle, legend) if p)
        return Group(Rule(Text(head, style="bold"), align="left", style="dim"), body)
    title = f"{title} ({legend})" if legend else title
    return Panel(body, title=title, title_align="left", subtitle=subtitle, subtitle_align="left")


# -- the screen --------------------------------------------------------------------------------------
def render(
    snapshot: Snapshot,
    max_log_lines: int = 10,
    heat_columns: int | None = None,
    max_client_rows: int | None = None,
    max_host_rows: int | None = None,
    width: int | None = None,
    compact: bool = False,
    max_alerts: int = 8,
) -> RenderableType:
    """The whole watch screen for ``snapshot``: header, federation, clients (+heatmap), hosts, logs.

    ``max_client_rows``/``max_host_rows`` bound the tables for a small screen (problem rows first);
    ``heat_columns`` bounds the heatmap to the most recent rounds; ``width`` is the screen's width
    (None: every column as wide as its content); ``compact`` the form for small terminals.
    """
    name_w = names_width(snapshot, width, compact)
    parts: list[RenderableType] = [
        _header(snapshot, width),
        _federation(snapshot, compact, max_alerts),
        _clients(snapshot, heat_columns, max_client_rows, name_w, compact),
        _hosts(snapshot, max_host_rows, name_w, compact),
    ]
    if max_log_lines > 0:
        parts.append(render_logs(snapshot, max_log_lines, compact, name_w))
    return Group(*parts)


def names_width(s: Snapshot, width: int | None, compact: bool) -> int | None:
    """The one width of host names in every table and log prefix on a ``width``-column screen."""
    inner = None if width is None else max(10, width if compact else width - 4)  # a panel's frame takes 4
    return name_width([h.name for h in s.hosts] + [c.host for c in s.clients], inner)


def _header(s: Snapshot, width: int | None) -> RenderableType:
    f = s.federation
    phase_style = "bold green" if f.phase == "finished" else "bold red" if f.phase == "failed" else "bold"
    title = _line(("fedctl watch ", "bold"), (s.run_id, "bold cyan"),
                  f"  payload {s.payload or '-'}  strategy {s.strategy or '-'}  phase ", (f.phase, phase_style))
    left = f"round {f.round} of {f.rounds or '?'} "
    right = (f" elapsed {fmt_duration(s.elapsed_s)}  ETA {fmt_duration(s.eta_s) if not s.done else 'done'}"
             f"  cost {fmt_money(s.cost, s.currency)} ({fmt_money(s.cost_per_hour, s.currency)}/h)")
    bar_w = 30 if width is None else min(30, width - len(left) - len(right))
    line = _line((left, "bold"))
    if bar_w >= 8:  # a bar too short to read is left out, the numbers stay
        done_rounds = len(f.history) and f.history[-1].round or 0
        filled = round(bar_w * min(1.0, done_rounds / max(1, f.rounds)))
        line.append("━" * filled, style="green" if s.done else "magenta")
        line.append("━" * (bar_w - filled), style="grey35")
    line.append(right)
    if s.allocation is None:
        return Group(title, line)
    # the run's batch allocation (a Slurm job): cut at the screen's edge, never wrapped
    job = Text(allocation_text(s.allocation, s.node_hours), no_wrap=True, overflow="ellipsis",
               style="red" if s.allocation.ended else "yellow" if s.allocation.state != "RUNNING" else "")
    return Group(title, line, job)


def _federation(s: Snapshot, compact: bool, max_alerts: int) -> RenderableType:
    f = s.federation
    acc = sparkline([p.accuracy for p in f.history][-SPARK_POINTS:])
    loss = sparkline([p.loss for p in f.history][-SPARK_POINTS:])
    last = f.history[-1] if f.history else None
    strag = (f"round {last.round}: client {last.straggler} ({fmt_num(last.straggler_s, 2)}s)"
             if last and last.straggler is not None else None)
    alerts = _alert_lines(s.alerts, max_alerts)
    title = "federation" + (f" · {len(s.alerts)} {_plural(len(s.alerts), 'alert')}" if s.alerts else "")
    a = f.asynchronous
    if compact:  # the numbers on two lines, then one line per alert
        age = f"this round {fmt_duration(f.round_age_s)}  " if f.round_age_s is not None else ""
        # an asynchronous run has no sampled/reported round: in flight and staleness say more
        first = (f"{age}in flight {fmt_count(a.in_flight)}  staleness {fmt_staleness(a)}  waiting " if a
                 else f"{age}sampled {len(f.sampled)}  reported {len(f.reported)}  waiting ")
        updates = (f"  updates {fmt_count(a.client_updates)}" + (f" ({a.dropped_stale} stale)" if a.dropped_stale else "")
                   if a else "")  # before the straggler, which is cut first on a narrow screen
        lines = [
            _line(first, (fmt_ids(f.waiting), "cyan")),
            _line("accuracy ", (acc, "green"), f" {fmt_num(s.accuracy)}  loss ", (loss, "magenta"),
                  f" {fmt_num(s.loss)}{updates}", *([("  straggler " + strag, "yellow")] if strag else [])),
        ]
        return _section(title, Group(*lines, *alerts), compact)
    left = Table.grid(padding=(0, 1))
    left.add_column(style="bold", no_wrap=True)
    left.add_column(no_wrap=True, overflow="ellipsis")
    left.add_row("sampled", fmt_ids(f.sampled))
    left.add_row("reported", fmt_ids(f.reported))
    left.add_row("waiting", Text(fmt_ids(f.waiting), style="cyan") if f.waiting else "-")
    if f.round_age_s is not None:
        left.add_row("this round", fmt_duration(f.round_age_s))
    if a:  # from the last server update's round line
        left.add_row("in flight", fmt_count(a.in_flight))
        left.add_row("staleness", f"{fmt_staleness(a)} (min/mean/max, {fmt_count(a.aggregated)} updates)")
        left.add_row("updates", f"{fmt_count(a.client_updates)} applied, {fmt_count(a.dropped_stale)} dropped stale")
    left.add_row("accuracy", Text.assemble((acc, "green"), f" {fmt_num(s.accuracy)}"))
    left.add_row("loss", Text.assemble((loss, "magenta"), f" {fmt_num(s.loss)}"))
    if strag:
        left.add_row("straggler", Text(strag, style="yellow"))
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(left, Group(*alerts) if alerts else Text("no alerts", style="green"))
    return _section(title, grid, compact)


def _alert_lines(alerts: Sequence[Alert], limit: int) -> list[Text]:
    """One line per alert (cut, never wrapped), at most ``limit`` lines with a "more" line last."""
    if limit <= 0 or not alerts:
        return []
    # the section's title says how many there are, so one line shows an alert rather than "N more"
    shown = alerts if len(alerts) <= limit else alerts[: max(1, limit - 1)]
    out = [_line(("✖ " if a.level == "error" else "! ", "bold red" if a.level == "error" else "yellow"),
                 (a.message, "red" if a.level == "error" else "yellow")) for a in shown]
    if len(shown) < len(alerts) and limit > 1:
        more = len(alerts) - len(shown)
        out.append(_line(f"... {more} more {_plural(more, 'alert')} (fedctl watch --json)"))
    return out


def _clients(s: Snapshot, heat_columns: int | None, max_rows: int | None, name_w: int | None,
             compact: bool) -> RenderableType:
    f = s.federation
    shown = pick_rows(s.clients, max_rows, client_severity)
    cols = [
        _Col("client", [Text(str(c.id)) for c in shown], "right"),
        _Col("host", [Text(fit_name(c.host, name_w)) for c in shown]),
        _Col("state", [Text(c.state, style=STATE_STYLE.get(c.state, "")) for c in shown]),
        _Col("resp" if compact else "last resp",
             [Text("-" if c.last_response_s is None else f"{c.last_response_s:.2f}s") for c in shown], "right"),
        _Col("rounds", [Text(str(c.rounds_taken)) for c in shown], "right"),
        _Col("loss" if compact else "last loss", [Text(fmt_num(c.last_loss)) for c in shown], "right"),
    ]
    rounds = list(f.heat_rounds)
    if heat_columns is not None:
        rounds = rounds[-heat_columns:] if heat_columns > 0 else []
    offset = len(f.heat_rounds) - len(rounds)
    strag = stragglers(s)
    heat = []
    for j, rnum in enumerate(rounds):
        vals = [c.heat[offset + j] for c in s.clients if len(c.heat) > offset + j]
        good = [v for v in vals if v is not None and v >= 0 and math.isfinite(v)]
        median = statistics.median(good) if good else None
        cells = [_heat_cell(c.heat[offset + j] if len(c.heat) > offset + j else None, median, strag.get(rnum) == c.id)
                 for c in shown]
        heat.append(_Col(f"r{rnum}", cells, "right"))
    more = len(s.clients) - len(shown)
    subtitle = f"{more} more {_plural(more, 'client')} not shown (bigger window, or --json)" if more else None
    legend = "response time per round; * = straggler, ✗ = dropped, · = not sampled"
    table = _FitTable(cols, [(5, 0), (4, 0), (3, 0), (1, 4)], heat)  # loss, rounds, resp go before the names
    return _section("clients", table, compact, subtitle, legend)


def _hosts(s: Snapshot, max_rows: int | None, name_w: int | None, compact: bool) -> RenderableType:
    shown = pick_rows(s.hosts, max_rows, host_severity)
    reach = [host_reach(h, short=compact) for h in shown]
    cols = [
        _Col("host", [Text(fit_name(h.name, name_w)) for h in shown]),
        _Col("reachable", [Text(r, style=st) for r, st in reach]),
        _Col("load", [Text("-" if h.load1 is None else f"{h.load1:.2f}" + (f"/{h.ncpu}" if h.ncpu else ""))
                      for h in shown]),
        _Col("RAM", [Text("-" if h.mem_total_mib is None
                          else f"{(h.mem_used_mib or 0) / 1024:.1f}/{h.mem_total_mib / 1024:.1f}G") for h in shown]),
        # compact: every GPU of a host on its one line; else one line per GPU (the rest is in --json)
        _Col("GPU" if compact else "GPU (util mem temp power run-mem)",
             [Text(gpu_short(h.gpu) if compact else "\n".join(gpu_text(h.gpu)),
                   style="red" if h.gpu.status == "error" else "") for h in shown]),
        _Col("processes", [_procs(h) for h in shown]),
    ]
    if not compact:
        cols.insert(1, _Col("role", [Text(h.role) for h in shown]))
    gpu, procs, ram, load, reach_i = (len(cols) - 2, len(cols) - 1, len(cols) - 3, len(cols) - 4, len(cols) - 5)
    # the GPU details give way first, then the error text, then load and RAM; the names last of all
    shrink = [(gpu, 72), (reach_i, 24), (gpu, 40), (procs, 10), (reach_i, 10), (gpu, 16),
              (ram, 0), (load, 0), (gpu, 0), (0, 4)]
    more = len(s.hosts) - len(shown)
    subtitle = f"{more} more {_plural(more, 'host')} not shown (bigger window, or --json)" if more else None
    return _section(_hosts_title(s), _FitTable(cols, shrink), compact, subtitle)


def _hosts_title(s: Snapshot) -> str:
    """``hosts (48/50 reachable, 1 with a dead process, 2 stale)``: the count line of a big fleet."""
    dead = sum(1 for h in s.hosts if any(p.alive is False for p in h.processes))
    stale = sum(1 for h in s.hosts if h.stale and h.reachable)
    extra = (f", {dead} with a dead process" if dead else "") + (f", {stale} stale" if stale else "")
    return f"hosts ({sum(1 for h in s.hosts if h.reachable)}/{len(s.hosts)} reachable{extra})"


def _procs(h: HostSnapshot) -> Text:
    t = Text()
    for i, p in enumerate(h.processes):
        if i:
            t.append(" ")
        mark, style = ("●", "green") if p.alive else ("✖", "red") if p.alive is False else ("?", "dim")
        t.append(f"{p.label}{mark}", style=style)
    return t


def render_logs(s: Snapshot, n: int, compact: bool = False, name_w: int | None = None) -> RenderableType:
    """The logs section with the last ``n`` lines (already filtered by the snapshot's log filter)."""
    t = Text(no_wrap=True, overflow="ellipsis")
    lines = s.logs[-n:]
    for i, ln in enumerate(lines):
        if i:
            t.append("\n")
        t.append(f"{fit_name(ln.host, name_w)} {ln.shown}", style="cyan" if ln.role == "server" else "blue")
        t.append(" | ")
        t.append(ln.text)
    if not lines:
        t.append("(no log lines yet)", style="dim")
    flt = f" - filter: {s.log_filter}" if s.log_filter else ""
    return _section(f"logs{flt}", t, compact)
