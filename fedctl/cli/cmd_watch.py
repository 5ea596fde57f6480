"""``fedctl watch [--interval S] [--once] [--json] [--until-done] [--logs TARGET]``: the live dashboard.

Reads the state without taking the lock (watch only reads), opens one persistent connection per
host through a Fleet, and shows ``fedctl.dashboard.screen.fit_screen`` of the snapshot (the keys on
its first line). Quitting never stops the training.
"""

from __future__ import annotations

from typing import Optional

import typer

from fedctl.cli.common import JsonOpt, env


def watch_cmd(
    interval: float = typer.Option(1.0, "--interval", "-n", help="seconds between probes of each host"),
    once: bool = typer.Option(False, "--once", help="print one snapshot and exit"),
    as_json: bool = JsonOpt,
    until_done: bool = typer.Option(False, "--until-done", help="exit when the run finishes and print the summary"),
    logs: Optional[str] = typer.Option(None, "--logs", help="show only the logs of this host, role or client-K"),
    duration: Optional[float] = typer.Option(None, "--duration", help="stop watching after this many seconds"),
) -> None:
    """Show the run live: rounds, clients (with a response-time heatmap), hosts and GPUs, logs.

    Keys: q quits (so does Ctrl-C); the run keeps going. f cycles the log filter: all, server,
    client, then each host. In the screen of `fedctl run`: d detaches (the run goes on; `fedctl
    watch` comes back to it) and Ctrl-C stops the run, collects the results and tears down.
    Without a terminal, watch prints plain status lines instead.
    """
    from fedctl.errors import UsageError

    if interval <= 0:
        raise UsageError(f"--interval must be positive (got {interval})")
    e = env()
    store = e.store
    state = store.load()  # read only: no lock, a running `fedctl start` keeps its lock
    records = [h for h in state.hosts if h.status not in ("torn_down", "tearing_down")]
    if not records:
        raise UsageError(f"run {state.run_id} has no hosts to watch (phase {state.phase})",
                         hint="start a run with `fedctl run` or `fedctl provision` + `fedctl start`")
    if logs is not None:
        _check_target(state, logs)

    from fedctl.monitor.allocation import AllocationReader
    from fedctl.ops.common import open_fleet

    allocation = AllocationReader.for_run(state, store)  # the Slurm job; None for hosts and clouds
    with open_fleet(store, records) as fleet:
        if once or as_json:
            from fedctl.dashboard.live import snapshot_once

            snap = snapshot_once(state, fleet, interval=interval, log_filter=logs, clock=e.clock,
                                 allocation=allocation)
            if as_json and not until_done:
                e.print_json(snap.to_dict())
                return
            if not until_done or snap.done:
                if as_json:
                    e.print_json(snap.to_dict())
                else:
                    _print_snapshot(snap, e)
                return

        from fedctl.dashboard.live import WatchLoop, summary_lines

        def reload():  # re-read the state now and then (phase, restarted processes), still without lock
            return store.load_or_none()

        loop = WatchLoop(state, fleet, e.console, interval=interval, until_done=until_done,
                         log_filter=logs, clock=e.clock, reload_state=reload, max_duration=duration,
                         allocation=allocation)
        outcome = loop.run()
    if as_json:
        e.print_json(outcome.snapshot.to_dict())
        return
    if outcome.reason == "done":
        for line in summary_lines(outcome.snapshot):
            e.console.print(line, highlight=False, markup=False)
    elif outcome.reason == "quit":
        e.err.print(f"stopped watching run {state.run_id}; training keeps running", highlight=False)


def _print_snapshot(snap, e) -> None:  # type: ignore[no-untyped-def]
    from fedctl.dashboard.plain import render_lines
    from fedctl.dashboard.render import render
    from fedctl.dashboard.screen import FULL_SIZE

    if e.console.is_terminal:  # sized to the terminal's width: cells are cut, never wrapped
        width = e.console.width
        e.console.print(render(snap, max_log_lines=10, width=width, compact=width < FULL_SIZE[0]))
    else:
        for line in render_lines(snap):
            e.console.file.write(line + "\n")
        e.console.file.flush()


def _check_target(state, target: str) -> None:  # type: ignore[no-untyped-def]
    from fedctl.monitor.targets import resolve_targets

    resolve_targets(state, target)


def register(app: typer.Typer) -> None:
    app.command("watch")(watch_cmd)
