"""``fedctl sweep SWEEP.yaml``: a paper's campaign on one fleet; ``fedctl sweep status [SWEEP]``.

The campaign is the library's (``fedctl.sweep.campaign.run_campaign``); this module parses, shows
the plan or the dry run, and implements the campaign's UI: one live screen on a terminal, plain
lines otherwise, JSON lines with ``--json``. Exit codes: 0 all runs finished, 1 a run failed (after
all others ran) or the budget stopped it, 2 bad input (before anything started), 130 Ctrl-C (after
the runs in flight were stopped and collected and the fleet torn down).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

import typer

from fedctl.cli.common import CliEnv, InventoryOpt, JsonOpt, OptList, SetOpt, YesOpt, env


class SweepConsoleUI:
    """The campaign's UI on the console (``fedctl.sweep.campaign.SweepUI``)."""

    def __init__(self, e: CliEnv, yes: bool, as_json: bool) -> None:
        from fedctl.cli.console_ui import ConsoleUI

        self.e, self.as_json = e, as_json
        self.base = ConsoleUI(e, yes, final_json=as_json)  # provision/teardown reports, confirmation
        self.live: Any = None
        self.last: Any = None

    @property
    def _screen(self) -> bool:
        return not self.as_json and self.e.console.is_terminal

    def progress(self, message: str) -> None:
        if self.live is None:
            self.base.progress(message)

    def notice(self, message: str, level: str = "info") -> None:
        if self.as_json:
            self._json({"event": "notice", "level": level, "message": message})
        elif self.live is not None:
            from fedctl.cli.common import as_text

            self.live.console.print(as_text(message))
        else:
            self.base.notice(message, level)

    def confirm(self, question: str) -> None:
        self.base.confirm(question)

    def plan(self, inputs: Any) -> None:
        self.base.plan(inputs)

    def provisioned(self, report: Any) -> None:
        self.base.provisioned(report)

    def torn_down(self, report: Any) -> None:
        self.close()
        if self.as_json:
            self._json({"event": "torn_down", "ok": report.ok, "phase": str(report.state.phase)})
        else:
            self.base.torn_down(report)

    def frame(self, view: Any, changed: Sequence[str] = ()) -> None:
        from fedctl.sweep.view import plain_lines, render_view

        if self._screen:
            if self.live is None:
                from rich.live import Live

                self.live = Live(render_view(view), console=self.e.console, auto_refresh=False, transient=False)
                self.live.start()
            self.live.update(render_view(view), refresh=True)
            return
        lines = plain_lines(view)
        if lines == self.last:
            return
        self.last = lines
        if self.as_json:
            self._json({"event": "frame", **view.to_dict()})
        else:
            for line in lines:
                self.e.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    @staticmethod
    def _json(data: Any) -> None:
        sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()


def sweep_cmd(
    target: str = typer.Argument(..., help="the sweep file (SWEEP.yaml), or `status`"),
    name: Optional[str] = typer.Argument(None, help="with `status`: the sweep file or the campaign's name"),
    inventory: Optional[str] = InventoryOpt,
    yes: bool = YesOpt,
    sets: OptList = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and the campaign's cost estimate; touch nothing"),
    rerun_failed: bool = typer.Option(False, "--rerun-failed", help="run failed runs again too"),
    only: OptList = typer.Option(None, "--only", help="only runs with KEY=VALUE (a grid key or seed; repeatable)"),
    interval: float = typer.Option(2.0, "--interval", help="seconds between progress checks"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="also log the runs to MLflow: a tracking URI or a "
                                         "folder (mlruns for ./mlruns); needs mlflow installed"),
    as_json: bool = JsonOpt,
) -> None:
    """Run a campaign: every combination of the sweep file's grid values, once per seed, on one
    fleet provisioned once and torn down at the end, several runs at once where the fleet holds
    them. The same command again runs only what is missing (and failed runs with --rerun-failed).
    Results: results/sweeps/<name>/ (a table, curves, and each run's own folder)."""
    from fedctl.errors import UsageError

    e = env()
    if target == "status":
        _status(e, name, as_json)
        return
    if name is not None:
        raise UsageError(f"unexpected argument {name!r}", hint="`fedctl sweep SWEEP.yaml` or `fedctl sweep status [SWEEP]`")
    from fedctl.sweep.campaign import run_campaign
    from fedctl.sweep.plan import plan_campaign
    from fedctl.sweep.spec import load_sweep
    from fedctl.sweep.state import SweepStore

    spec = load_sweep(target)
    sweeps = SweepStore(e.state_dir, spec.name, clock=e.clock)
    plan = plan_campaign(spec, inventory, list(sets or []), sweeps.fleet_store())
    if dry_run:
        _dry_run(e, sweeps, plan, as_json)
        return
    ui = SweepConsoleUI(e, yes, as_json)
    try:
        outcome = run_campaign(sweeps, plan, ui, only=list(only or []), rerun_failed=rerun_failed, interval=interval,
                               mlflow=mlflow)
    finally:
        ui.close()
    _summary(e, outcome.state, outcome.outputs, as_json)
    if outcome.failed:
        from fedctl.errors import FedctlError

        raise FedctlError(f"{len(outcome.failed)} run(s) of campaign {spec.name} failed: " + ", ".join(outcome.failed[:5]),
                          hint="`fedctl sweep status` shows why; the same command with --rerun-failed runs them again")


def _dry_run(e: CliEnv, sweeps: Any, plan: Any, as_json: bool) -> None:
    from fedctl.cost import format_totals
    from fedctl.sweep.plan import estimate_campaign

    state = sweeps.load() if sweeps.exists() else None
    parallel = plan.spec.parallel if isinstance(plan.spec.parallel, int) else None
    est = estimate_campaign(plan, parallel)
    rows = [{"key": p.run.key, "params": dict(p.run.params), "seed": p.run.seed,
             "rounds": p.experiment.rounds,
             "status": state.runs[p.run.key].status if state and p.run.key in state.runs else "new"} for p in plan.runs]
    if as_json:
        e.print_json({"name": plan.spec.name, "runs": rows, "estimate": est})
        return
    from rich.table import Table

    t = Table(title=f"campaign {plan.spec.name}: {len(rows)} run(s)", title_justify="left")
    for col in ("run", *plan.spec.grid_keys, "seed", "rounds", "status"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["key"], *(json.dumps(r["params"][k]) if not isinstance(r["params"][k], str) else r["params"][k]
                              for k in plan.spec.grid_keys), str(r["seed"]) if r["seed"] is not None else "-",
                  str(r["rounds"]), r["status"])
    e.console.print(t)
    e.console.print(f"fleet: {len(plan.inputs.plan.hosts)} host(s), {format_totals(est['per_hour'])} per hour")
    line = (f"estimate: runs one at a time ~{est['serial_hours']:.2f} h, {format_totals(est['serial_total'])} "
            f"(at an assumed {est['seconds_per_round']:.0f} s/round)")
    if "packed_hours" in est:
        line += f"; {est['parallel']} at once ~{est['packed_hours']:.2f} h, {format_totals(est['packed_total'])}"
    e.console.print(line)


def _summary(e: CliEnv, state: Any, outputs: Any, as_json: bool) -> None:
    from fedctl.cli.common import as_text
    from fedctl.sweep.view import campaign_view, headline

    view = campaign_view(state, None, e.clock())
    if as_json:
        SweepConsoleUI._json({"event": "done", "name": state.name, "counts": view.counts, "outputs": str(outputs),
                              "runs": [{"key": r.key, "status": r.status, "run_id": r.run_id,
                                        "results_dir": r.results_dir, "error": r.error}
                                       for r in state.runs.values()]})
        return
    e.console.print(f"campaign {state.name}: {headline(view)}")
    if outputs is not None:
        from fedctl.sweep.tables import sweep_notes

        e.console.print(f"tables and curves: {outputs}")
        for note in sweep_notes(outputs):
            e.err.print(f"[yellow]note:[/] {as_text(note)}")


def _status(e: CliEnv, which: Optional[str], as_json: bool) -> None:
    """``fedctl sweep status [SWEEP.yaml|NAME]``: the live view, once."""
    from pathlib import Path

    from fedctl.errors import UsageError
    from fedctl.sweep.state import SweepStore, list_campaigns
    from fedctl.sweep.view import campaign_view, plain_lines, render_view

    if which is None:
        names = list_campaigns(e.state_dir)
        if len(names) != 1:
            raise UsageError("no campaign here" if not names else "several campaigns here: name one",
                             hint="`fedctl sweep status SWEEP.yaml` or NAME" + (f" (one of {', '.join(names)})" if names else ""))
        which = names[0]
    if which.endswith((".yaml", ".yml")) and Path(which).is_file():
        from fedctl.sweep.spec import load_sweep

        which = load_sweep(which).name
    sweeps = SweepStore(e.state_dir, which, clock=e.clock)
    state = sweeps.load()
    fleet = sweeps.fleet_store()
    view = campaign_view(state, fleet.load_or_none(), e.clock())
    if as_json:
        e.print_json({**view.to_dict(), "runs": [{"key": r.key, "params": dict(r.params), "seed": r.seed,
                                                  "status": r.status, "run_id": r.run_id, "error": r.error,
                                                  "results_dir": r.results_dir, "started_at": r.started_at,
                                                  "finished_at": r.finished_at, "attempts": r.attempts}
                                                 for r in state.runs.values()]})
    elif e.console.is_terminal:
        e.console.print(render_view(view))
    else:
        for line in plain_lines(view):
            e.console.print(line, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_cmd)
