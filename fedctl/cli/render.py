"""Tables the lifecycle commands print. Pure functions: report in, rich renderable out."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

_STATUS_STYLE = {
    "provisioned": "green",
    "torn_down": "green",
    "running": "green",
    "finished": "green",
    "failed": "red",
    "provisioning": "yellow",
    "tearing_down": "yellow",
    "pending": "yellow",
}


def fmt_accuracy(value: Any) -> str:
    """An accuracy for people: 4 decimals (``0.8942``), ``-`` when there is none (a JSON 1 is 1.0000)."""
    from fedctl.results.fmt import fmt_value

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return fmt_value(float(value) if number else value)


def fmt_ids(ids: Sequence[int]) -> str:
    """``[0,1,2,3,7]`` -> ``"0-3,7"``: compact client id lists for tables."""
    if not ids:
        return "-"
    ids = sorted(ids)
    parts, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def money(value: float | None, currency: str) -> str:
    return "-" if value is None else f"{value:.2f} {currency}"


def plan_table(rows: Sequence[Any], title: str = "plan") -> Table:
    """Host, address, role, clients, price/hour, status and detail; total per hour in the footer."""
    t = Table(title=title, show_footer=True, title_justify="left")
    t.add_column("host", footer="total")
    t.add_column("address")
    t.add_column("role")
    t.add_column("clients")
    totals: dict[str, float] = {}
    for r in rows:
        if r.price_per_hour is not None:
            totals[r.currency] = totals.get(r.currency, 0.0) + r.price_per_hour
    footer = " + ".join(f"{v:.2f} {c}/h" for c, v in totals.items()) or "-"
    t.add_column("price/hour", footer=footer, justify="right")
    t.add_column("status")
    t.add_column("detail", overflow="fold")
    for r in rows:
        t.add_row(
            r.name,
            r.address,
            r.role,
            fmt_ids(r.client_ids) + (f"\n{r.processes}" if getattr(r, "processes", "") else ""),
            money(r.price_per_hour, r.currency),
            Text(r.status, style=_STATUS_STYLE.get(r.status, "")),
            Text(r.detail or ""),
        )
    return t


def status_table(st: Any) -> RenderableType:
    """Per host: role, reachable, each process alive or dead; the run's Slurm job on a line above."""
    t = Table(title_justify="left")
    for col in ("host", "role", "reachable", "processes", "status"):
        t.add_column(col)
    for h in st.hosts:
        procs = Text()
        for label, alive in h.alive.items():
            procs.append(f"{label}:", style="")
            procs.append("alive " if alive else "dead ", style="green" if alive else "red")
        if h.reachable is None:
            reach = Text("-" if h.status == "torn_down" else "not checked")  # not asked now
        elif h.reachable:
            reach = Text("yes", style="green")
        else:
            reach = Text(f"no ({h.error or 'unreachable'})", style="red")
        t.add_row(
            h.name,
            h.role,
            reach,
            procs if h.alive else Text("-"),
            Text(h.status, style=_STATUS_STYLE.get(h.status, "")),
        )
    if getattr(st, "allocation", None) is None:
        return t
    from fedctl.dashboard.fmt import allocation_text

    return Group(Text(allocation_text(st.allocation), style="red" if st.allocation.ended else ""), t)
