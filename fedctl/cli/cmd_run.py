"""``fedctl run``: provision + start + follow + teardown (or ``on_finish``) in one command.

The whole run is the library's (``fedctl.ops.run.run_experiment``); this module only implements its
``RunUI`` (``fedctl.cli.console_ui``): the live dashboard on a terminal (where ``d`` detaches and
leaves the run going), a line per round otherwise, or one JSON document with ``--json``. The error that stopped the run keeps its
exit code (130 for Ctrl-C, which tears the run down first).
"""

from __future__ import annotations

from typing import Optional

import typer

from fedctl.cli.cmd_lifecycle import IdleOpt, MaxCostOpt, MaxHoursOpt, budget_sets
from fedctl.cli.common import ConfigOpt, InventoryOpt, JsonOpt, OptList, SetOpt, YesOpt, env


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
    """provision + start + wait for the last round + teardown (or on_finish), in one command.

    Keys of the live screen (on a terminal): d (or q) detaches, the run goes on (`fedctl watch`
    comes back to it); Ctrl-C stops the run, collects the results and tears down; f cycles the log
    filter. Without a terminal (or with --json) it prints a line per round instead.
    """
    from fedctl.cli.console_ui import ConsoleUI
    from fedctl.ops.common import load_inputs
    from fedctl.ops.run import run_experiment

    e = env()
    sets = budget_sets(sets, max_cost, max_hours, idle_minutes)
    if on_finish is not None:
        sets.append(f"on_finish={on_finish}")
    inputs = load_inputs(inventory, config, sets, clients=clients, rounds=rounds, store=e.store)
    run_experiment(e.store, inputs, ConsoleUI(e, yes, final_json=as_json), overrides=sets, interval=interval)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
