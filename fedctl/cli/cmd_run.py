"""``fedctl run``: provision + start + follow + teardown (or ``on_finish``) in one command.

The whole run is the library's (``fedctl.ops.run.run_experiment``); this module only implements its
``RunUI``: the live dashboard on a terminal (where ``d`` detaches and leaves the run going), a line
per round otherwise, or one JSON document with ``--json``. The error that stopped the run keeps its
exit code (130 for Ctrl-C, which tears the run down first).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import typer

from fedctl.cli.cmd_lifecycle import IdleOpt, MaxCostOpt, MaxHoursOpt, _print_estimate, _print_teardown, budget_sets
from fedctl.cli.common import CliEnv, ConfigOpt, InventoryOpt, JsonOpt, OptList, SetOpt, YesOpt, env


class ConsoleUI:
    """``run_experiment``'s UI on the console: rich lines, the live screen when on a terminal."""

    def __init__(self, e: CliEnv, yes: bool, as_json: bool = False) -> None:
        self.e, self.yes, self.as_json = e, yes, as_json

    def progress(self, message: str) -> None:
        self.e.err.print(f"[dim]·[/] {message}", highlight=False)

    def notice(self, message: str, level: str = "info") -> None:
        from rich.markup import escape

        from fedctl.textsafe import printable

        text = escape(printable(message))
        if level == "info" and not self.as_json:
            self.e.console.print(text)
        else:
            style = {"warning": "yellow", "error": "red"}.get(level, "dim")
            self.e.err.print(f"[{style}]{text}[/]")

    def confirm(self, question: str) -> None:
        self.e.confirm(question, self.yes)

    def plan(self, inputs: Any) -> None:
        from fedctl.cli.render import plan_table
        from fedctl.ops.provision import plan_rows

        if not self.as_json:
            self.e.console.print(plan_table(plan_rows(inputs.plan), title=f"plan: {inputs.experiment.clients} clients"))
            _print_estimate(inputs.plan, inputs.experiment.rounds)

    def provisioned(self, report: Any) -> None:
        from fedctl.cli.render import plan_table

        if not self.as_json:
            self.e.console.print(plan_table(report.rows, title=f"run {report.state.run_id}: provision"))

    def started(self, report: Any) -> None:
        if report.ok and not self.as_json:
            n = sum(len(r.processes) for r in report.state.hosts)
            self.e.console.print(f"run [bold]{report.state.run_id}[/] running: {n} process(es), server at "
                                 f"{report.state.server.dial}. `fedctl watch` to follow it.")

    def round(self, event: Any) -> None:
        if event.dead:
            self.e.err.print(f"[yellow]dead client processes:[/] {', '.join(event.dead)}")
        elif not self.as_json:
            acc = "-" if event.accuracy is None else f"{event.accuracy:.4f}"
            self.e.console.print(f"round {event.round}/{event.rounds}  accuracy {acc}  ({event.phase})")

    def live(self, store: Any, state: Any, stop_when: Callable[[Any], Any], interval: float) -> Any:
        """The live dashboard on a terminal (None without one, or with --json: plain lines)."""
        from fedctl.ops.run import LiveResult

        if self.as_json or not self.e.console.is_terminal:
            return None
        from fedctl.dashboard.live import WatchLoop
        from fedctl.ops.common import open_fleet

        with open_fleet(store, state.hosts) as fleet:
            loop = WatchLoop(state, fleet, self.e.console, interval=interval, until_done=True,
                             reload_state=store.load_or_none, stop_when=stop_when, run_mode=True)
            outcome = loop.run()
        if outcome.reason == "detached":
            return LiveResult(detached=True)
        return LiveResult(trip=loop.stop_value if outcome.reason == "stopped" else None)

    def torn_down(self, report: Any) -> None:
        if not self.as_json:
            _print_teardown(report, as_json=False)

    def finished(self, outcome: Any) -> None:
        st = outcome.status
        if self.as_json:
            self.e.print_json({
                "run_id": outcome.run_id, "ok": outcome.ok, "detached": outcome.detached,
                "phase": str(st.phase) if st else None, "summary": st.summary if st else None,
                "finish": outcome.finish, "guard": outcome.trip.message if outcome.trip else None,
                "problem": outcome.problem,
                "poweroff": [{"host": h, "ok": ok, "detail": d} for h, ok, d in outcome.poweroff],
            })
            return
        if outcome.detached:
            self.e.console.print("detached: the run goes on. `fedctl watch` to come back, "
                                 "`fedctl teardown` to end it (budget watchdogs, if set, still guard it)")
        elif st is not None and st.summary:
            s = st.summary
            self.e.console.print(
                f"[bold]{st.phase}[/]: {s.get('rounds_completed')} rounds, final accuracy "
                f"{s.get('final_accuracy')}, wall {s.get('wall_s')} s"
            )


def run_cmd(
    clients: Optional[int] = typer.Option(None, "--clients", "-n", help="number of FL clients"),
    inventory: Optional[str] = InventoryOpt,
    config: Optional[str] = ConfigOpt,
    sets: OptList = SetOpt,
    rounds: Optional[int] = typer.Option(None, "--rounds", "-r", help="override the number of rounds"),
    yes: bool = YesOpt,
    max_cost: Optional[float] = MaxCostOpt,
    max_hours: Optional[float] = MaxHoursOpt,
    idle_minutes: Optional[float] = IdleOpt,
    on_finish: Optional[str] = typer.Option(
        None, "--on-finish", help="stop | teardown (default) | poweroff; overrides the config's on_finish"
    ),
    interval: float = typer.Option(2.0, "--interval", help="seconds between progress checks"),
    as_json: bool = JsonOpt,
) -> None:
    """provision + start + wait for the last round + teardown (or on_finish), in one command."""
    from fedctl.ops.common import load_inputs
    from fedctl.ops.run import run_experiment

    e = env()
    sets = budget_sets(sets, max_cost, max_hours, idle_minutes)
    if on_finish is not None:
        sets.append(f"on_finish={on_finish}")
    inputs = load_inputs(inventory, config, sets, clients=clients, rounds=rounds, store=e.store)
    run_experiment(e.store, inputs, ConsoleUI(e, yes, as_json), overrides=sets, interval=interval)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
