"""Small pure formatters shared by the rich screen (``render``) and the plain lines (``plain``).

Strings only: no rich, no I/O, so ``fedctl logs`` and the plain renderer stay light.
"""

from __future__ import annotations

import math
from typing import Sequence

from fedctl.monitor.snapshot import AsyncProgress, GpuReport, HostSnapshot, Snapshot
from fedctl.providers.base import AllocationStatus
from fedctl.units import fmt_duration

SPARK = "▁▂▃▄▅▆▇█"
ELLIPSIS = "…"


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


def fmt_staleness(a: AsyncProgress) -> str:
    """``0/0.50/2``: min/mean/max staleness of the last server update's client updates (``-`` unknown)."""
    if a.staleness_min is None and a.staleness_mean is None and a.staleness_max is None:
        return "-"

    def whole(v: float | None) -> str:
        return "-" if v is None else f"{v:g}" if float(v).is_integer() else f"{v:.2f}"

    return f"{whole(a.staleness_min)}/{fmt_num(a.staleness_mean, 2)}/{whole(a.staleness_max)}"


def fmt_count(value: int | None) -> str:
    """An int for a cell, ``-`` when unknown."""
    return "-" if value is None else str(value)


def fmt_ids(ids: Sequence[int], limit: int = 24) -> str:
    """``4: 0,1,2,3``: how many, then the first ``limit`` ids."""
    if not ids:
        return "-"
    text = ",".join(str(i) for i in ids[:limit])
    return f"{len(ids)}: {text}" + (" ..." if len(ids) > limit else "")


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


def gpu_short(report: GpuReport) -> str:
    """Every GPU of a host on one line: ``87% 29.4/40G, 0% 0.0/40G`` (the details are in --json)."""
    if report.status == "none":
        return "no GPU"
    if report.status == "error":
        return "nvidia-smi error"
    if report.status != "ok":
        return "-"
    parts = []
    for g in report.gpus:
        util = "n/a" if g.util_pct is None else f"{g.util_pct:.0f}%"
        used = "n/a" if g.mem_used_mib is None else f"{g.mem_used_mib / 1024:.1f}"
        total = "n/a" if g.mem_total_mib is None else f"{g.mem_total_mib / 1024:.0f}G"
        parts.append(f"{util} {used}/{total}")
    return ", ".join(parts) or "no GPU"


def host_reach(h: HostSnapshot, short: bool = False) -> tuple[str, str]:
    """(text, style) for a host's reachability cell, saying how stale its data is.

    ``short``: a word and an age (``NO 42s``); the error itself is in the alerts."""
    if h.reachable is None:
        return "connecting", "dim"
    if not h.reachable:
        if short:
            return "NO" + (f" {fmt_duration(h.age_s)}" if h.age_s is not None else ""), "bold red"
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


def name_width(names: Sequence[str], width: int | None) -> int | None:
    """How many columns host names get on a ``width``-column screen (None: whole names).

    One width for every table and the log prefixes, so a name is cut the same way everywhere."""
    longest = max((len(n) for n in names), default=4)
    if width is None:
        return None
    return min(longest, max(8, min(30, width // 5)))


def fit_name(name: str, width: int | None) -> str:
    """``name`` in at most ``width`` columns: whole when it fits, else cut the same way every time.

    A dotted name keeps its first label when that fits (``gpu-017.cluster.example`` -> ``gpu-017…``);
    otherwise the middle goes, keeping the end where host numbers usually are (``worker-…e-017``)."""
    if width is None or len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[:width]
    first = name.split(".", 1)[0]
    if "." in name and len(first) + 1 <= width:
        return first + ELLIPSIS
    head = (width - 1) // 2
    tail = width - 1 - head
    return name[:head] + ELLIPSIS + name[len(name) - tail:]


def allocation_text(a: AllocationStatus, node_hours: float | None = None, time_left: bool = True) -> str:
    """The job line: ``job 12 RUNNING on fl[1-2] (2 nodes) · 9m50s left of 10m00s · 0.05 node-h``,
    ``job 13 PENDING (Resources) · 2 nodes asked · limit 10m00s``, ``job 12 ended: TIMEOUT
    (TimeLimit) after 10m00s``. ``time_left`` False leaves the ticking numbers out (a plain status
    line is printed when it changes, not every time a second passes)."""
    nodes = "" if a.nodes is None else f"{a.nodes} node{'s' if a.nodes != 1 else ''}"
    reason = f" ({a.reason})" if a.reason else ""
    if a.state == "UNKNOWN":
        return f"job {a.job} state unknown" + (f": {a.problems[0]}" if a.problems else "")
    if a.ended:
        ran = f" after {fmt_duration(a.elapsed_s)}" if a.elapsed_s and time_left else ""
        return f"job {a.job} ended: {a.state}{reason}{ran}"
    parts = [f"job {a.job} {a.state}{reason}"]
    if a.nodelist:
        parts[0] += f" on {a.nodelist}" + (f" ({nodes})" if nodes else "")
    elif nodes:
        parts.append(f"{nodes} asked")
    if time_left:
        limit = "no limit" if a.time_limit_s is None else fmt_duration(a.time_limit_s)
        left = a.time_left_s
        parts.append(f"{fmt_duration(left)} left of {limit}" if left is not None else f"limit {limit}")
        if node_hours is not None and a.state == "RUNNING":  # a pending job holds no node
            parts.append(f"{node_hours:.2f} node-h")
    if a.problems:
        parts.append(f"{len(a.problems)} odd field(s): {a.problems[0]}")
    return " · ".join(parts)
