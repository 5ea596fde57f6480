"""``fedctl run``: provision + start + follow + teardown (or ``on_finish``) in one command.

The steps are the library's (``fedctl.ops``, ``fedctl.ops.run``); this module chooses how to show
them (the live dashboard on a terminal, a line per round otherwise) and keeps the exit code of the
error that stopped the run.

Money is never left burning by accident: Ctrl-C (or any failure) after the run started stops it,
collects the results and tears it down, then exits with the code of what stopped it (130 for
Ctrl-C); a provision that fails after a machine-creating provider (aws) made machines terminates
them. Leaving the run going is an explicit choice: the ``d`` key on the live screen.
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

    Returns (final status or None when the user detached, guard trip or None). Ctrl-C propagates
    (KeyboardInterrupt): the caller tears the run down."""
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
                             reload_state=store.load_or_none, stop_when=guard, run_mode=True)
            outcome = loop.run()
        if outcome.reason == "detached":
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
    before = _marker(e.store)
    try:
        report = _do_provision(clients, inventory, config, sets, yes, False, False, rounds=rounds)
    except BaseException:
        # a provider that creates machines (aws) may have made some before it failed: they bill
        # until terminated, so the same clean-up as after a failed run (Ctrl-C included)
        if _made_machines(e.store, before):
            e.err.print("[yellow]provision failed: terminating the machines it created[/]")
            _clean_up_after_provision()
        raise
    finish = report.state.experiment.get("on_finish") or "teardown"
    final, trip, problem = None, None, None
    failure: BaseException | None = None  # what stopped the run: its exit code is the run's
    try:
        _do_start(config, sets, rounds, False)
        final, trip = _follow(interval)
        if final is None:
            e.console.print("detached: the run goes on. `fedctl watch` to come back, "
                            "`fedctl teardown` to end it (budget watchdogs, if set, still guard it)")
            return
    except KeyboardInterrupt as exc:
        problem, failure = "interrupted", exc
        e.err.print("[yellow]interrupted: stopping the run, collecting results and tearing it down[/] "
                    "(Ctrl-C again stops the clean-up; `fedctl teardown` then finishes it)")
        finish = "teardown" if finish == "stop" else finish
    except FedctlError as exc:
        problem, failure = str(exc), exc
        e.err.print(f"[red]{escape(printable(str(exc)))}[/]")
    except Exception as exc:  # a bug in fedctl: the hosts are still cleaned up before it is reported
        problem, failure = f"{type(exc).__name__}: {exc}", exc
        e.err.print(f"[red]{escape(printable(problem))}[/]: cleaning up before reporting it")
    if failure is not None and _creates_machines(e.store):
        finish = "teardown"  # on_finish: stop keeps machines for a run that worked, not one that failed
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


def _marker(store: Any) -> tuple[str, float | None] | None:
    """What the state looks like before provision (run id, last saved): provision saves it once it
    has recorded its intent, so a failure after that is told from one before it."""
    from fedctl.errors import StateError

    try:
        state = store.load_or_none()
    except StateError:
        return None
    return None if state is None else (state.run_id, state.updated_at)


def _made_machines(store: Any, before: tuple[str, float | None] | None) -> bool:
    """Whether this command's provision got as far as a machine-creating provider (its intent is
    recorded, so machines may exist) and the run is not torn down."""
    from fedctl.errors import FedctlError
    from fedctl.providers import provider_class

    try:
        state = store.load_or_none()
        if state is None or state.phase == "torn_down" or _marker(store) == before:
            return False
        return provider_class(state.provider).creates_machines
    except FedctlError:  # an unreadable state or unknown provider: provision never got that far
        return False


def _creates_machines(store: Any) -> bool:
    from fedctl.providers import provider_class

    return store.exists() and provider_class(store.load().provider).creates_machines


def _clean_up_after_provision() -> None:
    """Tear down after a failed provision; its own failure is said, the provision's error wins."""
    from rich.markup import escape

    from fedctl.errors import FedctlError
    from fedctl.textsafe import printable

    try:
        _do_teardown(False, False)
    except FedctlError as exc:
        env().err.print(f"[red]clean-up incomplete: {escape(printable(exc.message))}[/]"
                        + (f" ({escape(printable(exc.hint))})" if exc.hint else ""))


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
