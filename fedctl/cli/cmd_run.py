"""``fedctl run``: provision + start + follow + teardown (or ``on_finish``) in one command.

The steps are the library's (``fedctl.ops``, ``fedctl.ops.run``); this module chooses how to show
them (the live dashboard on a terminal, a line per round otherwise) and keeps the exit code of the
error that stopped the run.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from fedctl.cli.cmd_lifecycle import (
    IdleOpt,
    MaxCostOpt,
    MaxHoursOpt,
    _do_provision,
    _do_start,
    _do_teardown,
    _progress,
    budget_sets,
)
from fedctl.cli.common import ConfigOpt, InventoryOpt, OptList, SetOpt, YesOpt, env


def _print_event(ev: Any) -> None:
    e = env()
    if ev.dead:
        e.err.print(f"[yellow]dead client processes:[/] {', '.join(ev.dead)}")
    else:
        acc = "-" if ev.accuracy is None else f"{ev.accuracy:.4f}"
        e.console.print(f"round {ev.round}/{ev.rounds}  accuracy {acc}  ({ev.phase})")


def _follow(interval: float) -> tuple[Any, Any]:
    """Follow the run until it ends: the live dashboard on a terminal, progress lines otherwise.

    Returns (final status or None when the user quit the screen, guard trip or None)."""
    from fedctl.ops.run import follow_plain, guard_tripped
    from fedctl.ops.status import observe

    e = env()
    store = e.store
    if not e.console.is_terminal:
        st, trip = follow_plain(store, interval, _print_event)
    else:
        from fedctl.dashboard.live import WatchLoop
        from fedctl.ops.common import open_fleet

        state = store.load()

        def guard(snap: Any) -> Any:
            age = snap.federation.round_age_s
            utils = [g.util_pct for h in snap.hosts for g in h.gpu.gpus if g.util_pct is not None]
            return guard_tripped(store, store.load(), snap.now - age if age is not None else None,
                                 max(utils) if utils else None)

        with open_fleet(store, state.hosts) as fleet:
            loop = WatchLoop(state, fleet, e.console, interval=interval, until_done=True,
                             reload_state=store.load_or_none, stop_when=guard)
            outcome = loop.run()
        if outcome.reason == "quit":
            return None, None
        trip = loop.stop_value if outcome.reason == "stopped" else None
        st = observe(store, store.load())
    if trip is not None:
        e.err.print(f"[bold red]budget guard:[/] {trip.message}; collecting results and stopping the run")
    return st, trip


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
) -> None:
    """provision + start + wait for the last round + teardown (or on_finish), in one command."""
    from rich.markup import escape

    from fedctl.errors import FedctlError
    from fedctl.ops.run import poweroff, stop_and_collect
    from fedctl.textsafe import printable

    e = env()
    sets = budget_sets(sets, max_cost, max_hours, idle_minutes)
    if on_finish is not None:
        sets.append(f"on_finish={on_finish}")
    report = _do_provision(clients, inventory, config, sets, yes, False, False, rounds=rounds)
    finish = report.state.experiment.get("on_finish") or "teardown"
    final, trip, problem = None, None, None
    failure: BaseException | None = None  # what stopped the run: its exit code is the run's
    try:
        _do_start(config, sets, rounds, False)
        final, trip = _follow(interval)
        if final is None:
            e.console.print("left the screen: the run goes on. `fedctl watch` to look again, "
                            "`fedctl teardown` when done (budget watchdogs, if set, still guard it)")
            return
    except KeyboardInterrupt as exc:
        problem, failure = "interrupted", exc
        e.err.print("[yellow]interrupted: collecting results and tearing the run down[/]")
        finish = "teardown" if finish == "stop" else finish
    except FedctlError as exc:
        problem, failure = str(exc), exc
        e.err.print(f"[red]{escape(printable(str(exc)))}[/]")
    if finish == "stop" and trip is None:
        stop_and_collect(e.store, progress=_progress)
        e.console.print("processes stopped, hosts kept (on_finish: stop): `fedctl teardown` when done")
    else:
        _do_teardown(False, False)
        if finish == "poweroff":
            if e.store.exists() and e.store.load().provider == "local":
                e.err.print("on_finish: poweroff does nothing for the local provider (this machine stays on)")
            for host, _ok, detail in poweroff(e.store):
                e.console.print(f"{host}: power-off {detail}")
    if final is not None and final.summary:
        s = final.summary
        e.console.print(
            f"[bold]{final.phase}[/]: {s.get('rounds_completed')} rounds, final accuracy "
            f"{s.get('final_accuracy')}, wall {s.get('wall_s')} s"
        )
    if trip is not None:
        raise FedctlError(f"stopped by the budget guard: {trip.message}")
    if failure is not None:
        raise failure
    if final is None or final.phase != "finished":
        raise FedctlError(f"the run did not finish: {problem or (final.phase if final else 'failed to start')}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
