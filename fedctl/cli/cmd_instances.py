"""``fedctl instances [--all] [--sweep]``: the machines fedctl created in the cloud, orphans included.

Lists what the provider's API reports (not what the state believes), marks each machine as this
folder's run, an orphan of this folder (its run is gone from the state) or another folder's, and
with ``--sweep`` terminates the orphans after asking.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

from fedctl.cli.common import InventoryOpt, JsonOpt, YesOpt, env


def _progress(msg: str) -> None:
    env().err.print(f"[dim]·[/] {msg}", highlight=False)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) + "Z"


def _table(rows: list[Any], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for col in ("instance", "run", "host", "state", "type", "address", "launched", "whose"):
        t.add_column(col)
    style = {"this run": "green", "orphan": "red", "other folder": "yellow"}
    for x in rows:
        m = x.machine
        t.add_row(m.id, m.run_id or "-", m.host or "-", m.state, m.machine_type,
                  m.address or m.private_address or "-", _when(m.launched_at),
                  Text(x.whose, style=style.get(x.whose, "") if m.billed else "dim"))
    return t


def instances_cmd(
    inventory: Optional[str] = InventoryOpt,
    show_all: bool = typer.Option(False, "--all", help="also instances that ended (shutting down, terminated)"),
    sweep: bool = typer.Option(False, "--sweep", help="terminate this folder's orphans (after asking)"),
    any_folder: bool = typer.Option(
        False, "--any-folder", help="with --sweep: also fedctl instances started from other folders or machines"
    ),
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the cloud instances fedctl created (orphans included); --sweep terminates orphans."""
    from fedctl.providers.aws_orphans import listing, provider_here, sweep_targets

    e = env()
    store = e.store
    provider: Any = provider_here(store, inventory, progress=_progress)
    if not sweep:
        rows = listing(store, provider, include_ended=show_all)
        if as_json:
            e.print_json({"instances": [x.to_dict() for x in rows]})
            return
        e.console.print(_table(rows, f"fedctl instances ({len(rows)})"))
        orphans = [x for x in rows if x.whose == "orphan" and x.machine.billed]
        if orphans:
            e.err.print(f"[yellow]{len(orphans)} orphan(s) still billed:[/] `fedctl instances --sweep` terminates them")
        return
    targets, runs = sweep_targets(store, provider, any_folder)
    if not runs:
        if as_json:
            e.print_json({"swept": [], "runs": []})
        else:
            e.console.print("no orphans: nothing to sweep")
        return
    if targets and not as_json:
        e.console.print(_table(targets, "to terminate"))
    e.confirm(f"terminate {len(targets)} instance(s) and clean up run(s) {', '.join(runs)}?", yes)
    with store.lock():  # not while another fedctl changes this folder's run
        provider.destroy_runs(runs)
    if as_json:
        e.print_json({"swept": [x.machine.id for x in targets], "runs": runs})
    else:
        e.console.print(f"swept {len(targets)} instance(s) of {len(runs)} run(s); none of them bills any more")


def register(app: typer.Typer) -> None:
    app.command("instances")(instances_cmd)
