"""``fedctl cost [--json] [--run ID]``: what each host and the whole run has cost so far."""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

from fedctl.cli.common import JsonOpt, env


def cost_report(state: Any, now: float) -> dict[str, Any]:
    """Everything ``cost --json`` prints: the ledger, the budget and what is left of it, the estimate."""
    from fedctl.budget import billing_start, budget_notes
    from fedctl.cost import estimate, run_cost
    from fedctl.results.runs import find_collected_metrics, results_root

    rc = run_cost(state, now)
    budget = state.experiment.budget
    left: dict[str, Any] = {}
    # an allocation without a price is not held to max_cost (budget_notes says so): no "left" to show
    if budget.max_cost is not None and len(rc.currencies) <= 1 and (rc.currencies or not rc.unpriced_allocations):
        left["cost"] = budget.max_cost - rc.total_in()
    start = billing_start(state)
    if budget.max_hours is not None and start is not None:
        left["hours"] = budget.max_hours - max(0.0, now - start) / 3600.0
    est = estimate(state, state.rounds or 0) if state.rounds else None
    metrics: Any = find_collected_metrics(state, results_root(env().store))
    if metrics is None and est is not None:
        from fedctl.ops.status import server_metrics

        metrics = server_metrics(env().store, state)  # the run is still on its hosts
    if est is not None and metrics is not None:
        est = est.updated_from_metrics(metrics)
    return {**rc.to_dict(), "budget": budget.to_dict(), "budget_left": left, "budget_notes": budget_notes(state, budget),
            "estimate": est.to_dict() if est else None}


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cost_cmd(
    run: Optional[str] = typer.Option(None, "--run", help="an archived run id (default: the current run)"),
    as_json: bool = JsonOpt,
) -> None:
    """What each host and the whole run has cost so far (inventory price_per_hour x hours held; a
    Slurm allocation: its nodes x hours held, priced with slurm.price_per_node_hour/price_per_gpu_hour)."""
    from rich.table import Table

    from fedctl.cost import format_money, format_totals
    from fedctl.results.runs import load_run_state

    e = env()
    state = load_run_state(e.store, run)
    data = cost_report(state, e.clock())
    if as_json:
        e.print_json(data)
        return
    t = Table(title=f"cost of run {state.run_id}", title_justify="left")
    node_hours = data["node_hours"]  # a batch allocation (Slurm): its node-hours, priced or not
    cols = [("host", "left"), ("role", "left"), ("per hour", "right"), ("acquired", "left"),
            ("released", "left"), ("hours", "right")]
    cols += [("nodes", "right"), ("node-hours", "right")] if node_hours is not None else []
    for col, just in (*cols, ("cost", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in data["hosts"]:
        price = "-" if r["price_per_hour"] is None else format_money(r["price_per_hour"], r["currency"])
        released = "held" if r["running"] else _when(r["released_at"])
        nodes = ([str(r["nodes"]), f"{r['node_hours']:.3f}"] if r["nodes"] is not None else ["-", "-"]
                 ) if node_hours is not None else []
        t.add_row(r["name"], r["role"], price, _when(r["acquired_at"]), released, f"{r['hours']:.3f}", *nodes,
                  format_money(r["cost"], r["currency"]))
    total_nodes = ["", f"{node_hours:.3f}"] if node_hours is not None else []
    t.add_row("total", "", format_totals(data["per_hour"]), "", "", f"{data['hours']:.3f}", *total_nodes,
              format_totals(data["total"]), style="bold")
    e.console.print(t)
    allocations = {r["name"] for r in data["hosts"] if r["nodes"] is not None}
    hosts = [n for n in data["unpriced"] if n not in allocations]
    if hosts:
        e.console.print(f"[yellow]no price_per_hour in the inventory for:[/] {', '.join(hosts)}")
    for name in (n for n in data["unpriced"] if n in allocations):
        e.console.print(f"{name}: {node_hours:.3f} node-hours; no money counted (give slurm.price_per_node_hour "
                        "and/or slurm.price_per_gpu_hour in the inventory, in its currency, to count it)")
    b, left = data["budget"], data["budget_left"]
    for note in data["budget_notes"]:
        e.console.print(f"[yellow]{note}[/]")
    if "cost" in left:
        e.console.print(f"budget: max_cost {b['max_cost']:g}, left {left['cost']:.4f}")
    if "hours" in left:
        e.console.print(f"budget: max_hours {b['max_hours']:g}, left {left['hours']:.3f} h")
    est = data["estimate"]
    if est and est["per_hour"]:
        how = (f"measured {est['seconds_per_round']:.1f} s/round over {est['rounds_done']} round(s)"
               if est["measured"] else f"assumed {est['seconds_per_round']:.0f} s/round")
        e.console.print(f"estimate for the whole run ({est['rounds']} rounds, {how}): {format_totals(est['total'])}")


def register(app: typer.Typer) -> None:
    app.command("cost")(cost_cmd)
