"""Pure renderers of a watch Snapshot: ``render`` (a rich renderable) and ``render_lines`` (plain text).

No I/O, no clock: the same snapshot always renders the same screen, which is what the tests check.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence, TypeVar

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fedctl.monitor.snapshot import Alert, ClientSnapshot, GpuReport, HostSnapshot, Snapshot
from fedctl.units import fmt_duration

T = TypeVar("T")

SPARK = "▁▂▃▄▅▆▇█"
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


# -- small formatters (pure, shared by both renderers) ----------------------------------------------
def fmt_num(value: float | None, digits: int = 3) -> str:
    """A float for a table cell: None -> ``-``, NaN -> ``NaN``."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    return f"{value:.{digits}f}"


def fmt_money(value: float | None, currency: str) -> str:
    """fedctl's one money format (``cost.format_money``), ``-`` for an unknown amount."""
    from fedctl.cost import format_money

    return format_money(value, currency, none="-")


def sparkline(values: Sequence[float | None]) -> str:
    """Block-character chart of ``values`` (None/NaN drawn as a space)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif hi == lo:
            out.append(SPARK[len(SPARK) // 2])
        else:
            out.append(SPARK[int((v - lo) / (hi - lo) * (len(SPARK) - 1))])
    return "".join(out)


def gpu_text(report: GpuReport) -> list[str]:
    """One line per GPU (or one line saying there is none / why nvidia-smi failed)."""
    if report.status == "none":
        return ["no GPU"]
    if report.status == "error":
        return [f"nvidia-smi error: {report.error}"]
    if report.status != "ok":
        return ["-"]
    lines = []
    for g in report.gpus:
        util = "n/a" if g.util_pct is None else f"{g.util_pct:.0f}%"
        used = "n/a" if g.mem_used_mib is None else f"{g.mem_used_mib / 1024:.1f}"
        total = "n/a" if g.mem_total_mib is None else f"{g.mem_total_mib / 1024:.1f}G"
        temp = "n/a" if g.temp_c is None else f"{g.temp_c:.0f}°C"
        power = "n/a" if g.power_w is None else f"{g.power_w:.0f}W"
        run = f" run {g.run_mem_mib / 1024:.1f}G" if g.run_pids else " run 0G"
        if g.processes:  # whose memory it is: "client-0 1.2G, server 0.3G"
            run += " (" + ", ".join(f"{p.label} {p.mem_mib / 1024:.1f}G" for p in g.processes) + ")"
        lines.append(f"{g.index}:{g.name} {util} {used}/{total} {temp} {power}{run}")
    if report.error:
        lines.append(report.error)
    return lines


def host_reach(h: HostSnapshot) -> tuple[str, str]:
    """(text, style) for a host's reachability cell, saying how stale its data is."""
    if h.reachable is None:
        return "connecting", "dim"
    if not h.reachable:
        age = f", data {fmt_duration(h.age_s)} old" if h.age_s is not None else ""
        return f"NO ({h.error}){age}", "bold red"
    if h.stale:
        return f"stale {fmt_duration(h.age_s)}", "yellow"
    return "yes", "green"


def stragglers(snapshot: Snapshot) -> dict[int, int]:
    """round -> straggler client id (the reporting client with the largest response time)."""
    return {p.round: p.straggler for p in snapshot.federation.history if p.straggler is not None}


def compact_seconds(value: float, width: int) -> str:
    """Seconds in at most ``width`` characters that still tell rounds of 20 ms from 200 ms:
    ``.023``/``.02``, ``1.2``, ``12``, ``123``, then minutes ``15m`` and hours ``3h``."""
    candidates = []
    if value < 1:
        fine = f"{value:.{max(1, width - 1)}f}"
        candidates.append(fine[1:] if fine.startswith("0.") else fine)  # the leading 0 carries nothing
    candidates += [f"{value:.1f}", f"{value:.0f}", f"{value / 60:.0f}m", f"{value / 3600:.0f}h"]
    return next((c for c in candidates if len(c) <= width), candidates[-1][:width])


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


# -- rich renderer -----------------------------------------------------------------------------------
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


def render(
    snapshot: Snapshot,
    max_log_lines: int = 10,
    heat_columns: int | None = None,
    max_client_rows: int | None = None,
    max_host_rows: int | None = None,
) -> RenderableType:
    """The whole watch screen for ``snapshot``: header, federation, clients (+heatmap), hosts, logs.

    ``max_client_rows``/``max_host_rows`` bound the tables for a small screen (problem rows first);
    ``heat_columns`` bounds the heatmap to the most recent rounds.
    """
    parts: list[RenderableType] = [
        _header(snapshot),
        _federation(snapshot),
        _clients(snapshot, heat_columns, max_client_rows),
        _hosts(snapshot, max_host_rows),
    ]
    if max_log_lines > 0:
        parts.append(render_logs(snapshot, max_log_lines))
    return Group(*parts)


def _header(s: Snapshot) -> RenderableType:
    f = s.federation
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    grid.add_column()
    title = Text.assemble(
        ("fedctl watch ", "bold"), (s.run_id, "bold cyan"),
        f"  payload {s.payload or '-'}  strategy {s.strategy or '-'}  phase ",
        (f.phase, "bold green" if f.phase == "finished" else "bold red" if f.phase == "failed" else "bold"),
    )
    done_rounds = len(f.history) and f.history[-1].round or 0
    bar = ProgressBar(total=max(1, f.rounds), completed=min(done_rounds, max(1, f.rounds)), width=30)
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        Text(f"round {f.round} of {f.rounds or '?'}", style="bold"),
        bar,
        Text(f"elapsed {fmt_duration(s.elapsed_s)}  ETA {fmt_duration(s.eta_s) if not s.done else 'done'}"
             f"  cost {fmt_money(s.cost, s.currency)} ({fmt_money(s.cost_per_hour, s.currency)}/h)"),
    )
    grid.add_row(title)
    grid.add_row(progress)
    return grid


def _federation(s: Snapshot) -> RenderableType:
    f = s.federation
    left = Table.grid(padding=(0, 1))
    left.add_column(style="bold")
    left.add_column()
    left.add_row("sampled", _ids(f.sampled))
    left.add_row("reported", _ids(f.reported))
    left.add_row("waiting", Text(_ids(f.waiting), style="cyan") if f.waiting else "-")
    if f.round_age_s is not None:
        left.add_row("this round", fmt_duration(f.round_age_s))
    acc = [p.accuracy for p in f.history]
    loss = [p.loss for p in f.history]
    left.add_row("accuracy", Text.assemble((sparkline(acc), "green"), f" {fmt_num(s.accuracy)}"))
    left.add_row("loss", Text.assemble((sparkline(loss), "magenta"), f" {fmt_num(s.loss)}"))
    last = f.history[-1] if f.history else None
    if last and last.straggler is not None:
        left.add_row("straggler", Text(f"round {last.round}: client {last.straggler} ({fmt_num(last.straggler_s, 2)}s)",
                                       style="yellow"))
    right = _alerts(s.alerts)
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(left, right)
    return Panel(grid, title="federation", title_align="left")


def _ids(ids: Sequence[int]) -> str:
    if not ids:
        return "-"
    text = ",".join(str(i) for i in ids[:24])
    return f"{len(ids)}: {text}" + (" ..." if len(ids) > 24 else "")


def _alerts(alerts: Sequence[Alert]) -> RenderableType:
    if not alerts:
        return Text("no alerts", style="green")
    t = Text()
    for i, a in enumerate(alerts[:8]):
        if i:
            t.append("\n")
        t.append("✖ " if a.level == "error" else "! ", style="bold red" if a.level == "error" else "yellow")
        t.append(a.message, style="red" if a.level == "error" else "yellow")
    if len(alerts) > 8:
        t.append(f"\n... {len(alerts) - 8} more")
    return t


def _clients(s: Snapshot, heat_columns: int | None, max_rows: int | None = None) -> RenderableType:
    f = s.federation
    rounds = list(f.heat_rounds)
    if heat_columns is not None:
        rounds = rounds[-heat_columns:] if heat_columns > 0 else []
    offset = len(f.heat_rounds) - len(rounds)
    strag = stragglers(s)
    medians: list[float | None] = []
    for j in range(len(rounds)):
        vals = [c.heat[offset + j] for c in s.clients if len(c.heat) > offset + j]
        good = [v for v in vals if v is not None and v >= 0 and math.isfinite(v)]
        medians.append(statistics.median(good) if good else None)
    t = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    for col in ("client", "host", "state", "last resp", "rounds", "last loss"):
        t.add_column(col, justify="right" if col in ("client", "last resp", "rounds", "last loss") else "left")
    for r in rounds:
        t.add_column(f"r{r}", justify="right", no_wrap=True, min_width=4)
    shown = pick_rows(s.clients, max_rows, client_severity)
    for c in shown:
        cells: list[RenderableType] = [
            str(c.id),
            c.host,
            Text(c.state, style=STATE_STYLE.get(c.state, "")),
            "-" if c.last_response_s is None else f"{c.last_response_s:.2f}s",
            str(c.rounds_taken),
            fmt_num(c.last_loss),
        ]
        for j, rnum in enumerate(rounds):
            v = c.heat[offset + j] if len(c.heat) > offset + j else None
            cells.append(_heat_cell(v, medians[j], strag.get(rnum) == c.id))
        t.add_row(*cells)
    title = "clients (response time per round; * = straggler, ✗ = dropped, · = not sampled)"
    more = len(s.clients) - len(shown)
    subtitle = f"{more} more clients not shown (bigger window, or --json)" if more else None
    return Panel(t, title=title, title_align="left", subtitle=subtitle, subtitle_align="left")


def _hosts(s: Snapshot, max_rows: int | None = None) -> RenderableType:
    t = Table(box=None, padding=(0, 1), header_style="bold")
    for col in ("host", "role", "reachable", "load", "RAM"):
        t.add_column(col, overflow="fold")
    # one line per GPU, cut rather than wrapped (the full nvidia-smi message is in --json)
    t.add_column("GPU (util mem temp power run-mem)", no_wrap=True, overflow="ellipsis", max_width=72)
    t.add_column("processes", overflow="fold")
    shown = pick_rows(s.hosts, max_rows, host_severity)
    for h in shown:
        reach, style = host_reach(h)
        load = "-" if h.load1 is None else f"{h.load1:.2f}" + (f"/{h.ncpu}" if h.ncpu else "")
        ram = "-" if h.mem_total_mib is None else f"{(h.mem_used_mib or 0) / 1024:.1f}/{h.mem_total_mib / 1024:.1f}G"
        gpu = Text("\n".join(gpu_text(h.gpu)), style="red" if h.gpu.status == "error" else "")
        procs = Text()
        for i, p in enumerate(h.processes):
            if i:
                procs.append(" ")
            mark, pst = ("●", "green") if p.alive else ("✖", "red") if p.alive is False else ("?", "dim")
            procs.append(f"{p.label}{mark}", style=pst)
        t.add_row(h.name, h.role, Text(reach, style=style), load, ram, gpu, procs)
    more = len(s.hosts) - len(shown)
    subtitle = f"{more} more hosts not shown (bigger window, or --json)" if more else None
    return Panel(t, title=f"hosts ({sum(1 for h in s.hosts if h.reachable)}/{len(s.hosts)} reachable)",
                 title_align="left", subtitle=subtitle, subtitle_align="left")


def render_logs(s: Snapshot, n: int) -> RenderableType:
    """The logs panel with the last ``n`` lines (already filtered by the snapshot's log filter)."""
    t = Text(no_wrap=True, overflow="ellipsis")
    lines = s.logs[-n:]
    for i, ln in enumerate(lines):
        if i:
            t.append("\n")
        t.append(f"{ln.host} {ln.label}", style="cyan" if ln.role == "server" else "blue")
        t.append(" | ")
        t.append(ln.text)
    if not lines:
        t.append("(no log lines yet)", style="dim")
    flt = f" - filter: {s.log_filter}" if s.log_filter else ""
    title = Text(f"logs{flt}  (f: filter, q: quit - training keeps running)")
    return Panel(t, title=title, title_align="left")


# -- plain renderer ------------------------------------------------------------------------------------
def status_line(s: Snapshot) -> str:
    """One line summing up the run (for non-TTY streaming output)."""
    f = s.federation
    reach = sum(1 for h in s.hosts if h.reachable)
    last = f.history[-1] if f.history else None
    strag = f" straggler=c{last.straggler}({fmt_num(last.straggler_s, 2)}s)" if last and last.straggler is not None else ""
    return (
        f"run={s.run_id} phase={f.phase} round={f.round}/{f.rounds} acc={fmt_num(s.accuracy)} loss={fmt_num(s.loss)}"
        f" sampled={len(f.sampled)} reported={len(f.reported)} waiting={len(f.waiting)}"
        f" hosts={reach}/{len(s.hosts)} alerts={len(s.alerts)}{strag}"
    )


def render_lines(s: Snapshot, max_log_lines: int = 10) -> list[str]:
    """The whole snapshot as plain text lines (no colours), for pipes and logs."""
    f = s.federation
    out = [
        f"run {s.run_id}  payload {s.payload or '-'}  strategy {s.strategy or '-'}  phase {f.phase}",
        f"round {f.round} of {f.rounds or '?'}  elapsed {fmt_duration(s.elapsed_s)}  ETA {fmt_duration(s.eta_s)}"
        f"  cost {fmt_money(s.cost, s.currency)} ({fmt_money(s.cost_per_hour, s.currency)}/h)",
        f"federation: sampled {_ids(f.sampled)}  reported {_ids(f.reported)}  waiting {_ids(f.waiting)}",
        f"accuracy {fmt_num(s.accuracy)} {sparkline([p.accuracy for p in f.history])}"
        f"  loss {fmt_num(s.loss)} {sparkline([p.loss for p in f.history])}",
    ]
    for p in f.history[-5:]:
        strag = f" straggler client {p.straggler} ({fmt_num(p.straggler_s, 2)}s)" if p.straggler is not None else ""
        drop = f" dropped {','.join(map(str, p.dropped))}" if p.dropped else ""
        out.append(f"  round {p.round}: acc {fmt_num(p.accuracy)} loss {fmt_num(p.loss)}"
                   f" {p.reported}/{p.sampled} reported in {fmt_duration(p.duration_s)}{strag}{drop}")
    for a in s.alerts:
        out.append(f"ALERT {a.level}: {a.message}")
    out.append("clients:")
    for c in s.clients:
        resp = "-" if c.last_response_s is None else f"{c.last_response_s:.2f}s"
        heat = " ".join(_plain_heat(v) for v in c.heat)
        out.append(f"  client {c.id:>3} {c.host:<12} {c.state:<9} resp {resp:>7} rounds {c.rounds_taken:>3}"
                   f" loss {fmt_num(c.last_loss)}  [{heat}]")
    out.append("hosts:")
    for h in s.hosts:
        reach, _ = host_reach(h)
        load = "-" if h.load1 is None else f"{h.load1:.2f}"
        ram = "-" if h.mem_total_mib is None else f"{(h.mem_used_mib or 0) / 1024:.1f}/{h.mem_total_mib / 1024:.1f}G"
        procs = " ".join(f"{p.label}:{'alive' if p.alive else 'dead' if p.alive is False else '?'}" for p in h.processes)
        out.append(f"  {h.name:<12} {h.role:<13} reachable {reach}  load {load}  RAM {ram}  {procs}")
        for g in gpu_text(h.gpu):
            out.append(f"    gpu {g}")
    if max_log_lines > 0:
        for ln in s.logs[-max_log_lines:]:
            out.append(format_log_line(ln.host, ln.label, ln.text))
    return out


def _plain_heat(v: float | None) -> str:
    if v is None:
        return "."
    if v < 0:
        return "X"
    if math.isnan(v):
        return "?"
    return compact_seconds(v, 4)


def format_log_line(host: str, label: str, text: str) -> str:
    """``h2 client-0 | text``: how every log line is prefixed, in watch and in ``fedctl logs``."""
    return f"{host} {label} | {text}"

