"""The console's side of the library's ``RunUI`` (``fedctl.ops.run``): how provision, start,
teardown and ``run`` show their progress and reports: rich tables and lines, the live screen on a
terminal, or JSON.

Two JSON modes: ``json_reports`` (``provision/start/teardown --json``: each step prints its report
as one JSON document) and ``final_json`` (``run --json``: the steps print nothing on stdout, the
outcome is one JSON document at the end). Progress always goes to stderr.
"""

from __future__ import annotations

from typing import Any, Callable

from fedctl.cli.common import CliEnv, as_text, print_progress
from fedctl.cli.render import fmt_accuracy
from fedctl.units import fmt_duration


def print_estimate(e: CliEnv, state_or_plan: Any, rounds: int) -> None:
    """The cost estimate line (nothing when no host is priced)."""
    from fedctl.cost import estimate, format_totals

    est = estimate(state_or_plan, rounds)
    if not est.per_hour:
        return
    e.console.print(
        f"per hour: {format_totals(est.per_hour)}; whole run (~{est.hours:.2f} h at an assumed "
        f"{est.seconds_per_round:.0f} s/round, updated once rounds are measured): {format_totals(est.total)}"
    )


def print_teardown(e: CliEnv, report: Any, as_json: bool) -> None:
    """The teardown report: a table and where the results are, or one JSON document."""
    from rich.table import Table
    from rich.text import Text

    if as_json:
        e.print_json(
            {
                "run_id": report.state.run_id,
                "ok": report.ok,
                "phase": str(report.state.phase),
                "results": report.state.results_dir,
                "hosts": [h.__dict__ for h in report.hosts],
            }
        )
        return
    t = Table(title=f"run {report.state.run_id}: teardown", title_justify="left")
    for col in ("host", "pids signalled", "files removed", "left running", "result"):
        t.add_column(col)
    for h in report.hosts:
        t.add_row(
            h.name,
            str(h.stopped),
            "yes" if h.removed else "no" if (h.error or h.leftover_files) else "kept",
            ", ".join(map(str, h.leftover_pids)) or "none",
            Text("ok", style="green") if h.ok else Text(h.error or "leftovers", style="red"),
        )
    e.console.print(t)
    if report.state.results_dir:
        e.console.print(f"results: {report.state.results_dir}")
    if report.report_error:
        e.err.print(f"[yellow]results report incomplete:[/] {as_text(report.report_error)}")


class ConsoleUI:
    """``fedctl.ops.run.RunUI`` on the console (see the module docstring for the JSON modes)."""

    def __init__(self, e: CliEnv, yes: bool = False, json_reports: bool = False, final_json: bool = False) -> None:
        self.e, self.yes, self.json_reports, self.final_json = e, yes, json_reports, final_json

    @property
    def _text(self) -> bool:
        return not (self.json_reports or self.final_json)

    def progress(self, message: str) -> None:
        print_progress(self.e.err, message)

    def notice(self, message: str, level: str = "info") -> None:
        text = as_text(message)
        if level == "info" and self._text:
            self.e.console.print(text)
        else:
            style = {"warning": "yellow", "error": "red"}.get(level, "dim")
            self.e.err.print(f"[{style}]{text}[/]")

    def confirm(self, question: str) -> None:
        self.e.confirm(question, self.yes)

    def plan(self, inputs: Any) -> None:
        from fedctl.cli.render import plan_table
        from fedctl.ops.provision import plan_rows

        if self._text:
            self.e.console.print(plan_table(plan_rows(inputs.plan), title=f"plan: {inputs.experiment.clients} clients"))
            print_estimate(self.e, inputs.plan, inputs.experiment.rounds)
        from fedctl.budget import budget_notes

        for note in budget_notes(inputs.plan, inputs.experiment.budget):
            self.notice(note, "warning")

    def provisioned(self, report: Any) -> None:
        from fedctl.cli.render import plan_table

        if self.json_reports:
            self.e.print_json({"run_id": report.state.run_id, "ok": report.ok,
                               "hosts": [r.__dict__ for r in report.rows]})
        elif self._text:
            self.e.console.print(plan_table(report.rows, title=f"run {report.state.run_id}: provision"))

    def started(self, report: Any) -> None:
        state = report.state
        if self.json_reports:
            self.e.print_json({"run_id": state.run_id, "ok": report.ok, "failures": report.failures,
                               "server": state.server.to_dict()})
        elif self._text and report.ok:
            n = sum(len(r.processes) for r in state.hosts)
            self.e.console.print(f"run [bold]{state.run_id}[/] running: {n} process(es), server at "
                                 f"{state.server.dial}. `fedctl watch` to follow it.")

    def round(self, event: Any) -> None:
        if event.dead:
            self.e.err.print(f"[yellow]dead client processes:[/] {', '.join(event.dead)}")
        elif self._text:
            self.e.console.print(f"round {event.round}/{event.rounds}  accuracy {fmt_accuracy(event.accuracy)}  "
                                 f"({event.phase})")

    def live(self, store: Any, state: Any, stop_when: Callable[[Any, Any], Any], interval: float) -> Any:
        """The live dashboard on a terminal (None without one, or in a JSON mode: plain lines)."""
        from fedctl.ops.run import LiveResult

        if not self._text or not self.e.console.is_terminal:
            return None
        from fedctl.dashboard.live import WatchLoop
        from fedctl.monitor.allocation import AllocationReader
        from fedctl.ops.common import open_fleet

        with open_fleet(store, state.hosts) as fleet:
            # the guards also count status.json's time, which the monitor reads but the snapshot omits
            loop = WatchLoop(state, fleet, self.e.console, interval=interval, until_done=True,
                             reload_state=store.load_or_none, run_mode=True,
                             allocation=AllocationReader.for_run(state, store),
                             stop_when=lambda snap: stop_when(snap, loop.model.status))
            outcome = loop.run()
        if outcome.reason == "detached":
            return LiveResult(detached=True)
        return LiveResult(trip=loop.stop_value if outcome.reason == "stopped" else None)

    def torn_down(self, report: Any) -> None:
        if not self.final_json:
            print_teardown(self.e, report, self.json_reports)

    def finished(self, outcome: Any) -> None:
        st = outcome.status
        if self.final_json:
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
            wall = s.get("wall_s")
            self.e.console.print(
                f"[bold]{st.phase}[/]: {s.get('rounds_completed')} rounds, final accuracy "
                f"{fmt_accuracy(s.get('final_accuracy'))}, wall "
                f"{fmt_duration(wall if isinstance(wall, (int, float)) else None)}"
            )
