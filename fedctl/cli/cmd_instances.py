"""``fedctl instances [--all] [--sweep]``: the machines fedctl created in the cloud, orphans included.

Lists what the provider's API reports (not what the state believes), marks each machine as this
folder's run, an orphan of this folder (its run is gone from the state), another folder's, or
unknown (this folder's, but its state cannot be read), and with ``--sweep`` terminates exactly the
orphans it lists, after asking, each re-checked by its tags just before the call.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

from fedctl.cli.common import InventoryOpt, JsonOpt, YesOpt, env, progress


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) + "Z"


def _table(rows: list[Any], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for col in ("instance", "run", "host", "state", "type", "address", "launched", "whose"):
        t.add_column(col)
    style = {"this run": "green", "orphan": "red", "other folder": "yellow", "unknown (state unreadable)": "magenta"}
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
        False, "--any-folder", help="with --sweep: also fedctl instances started from other folders or machines, and this folder's "
        "while its state cannot be read"
    ),
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the cloud instances fedctl created (orphans included); --sweep terminates orphans."""
    from fedctl.errors import UsageError
    from fedctl.providers.aws_orphans import ORPHAN, UNKNOWN, listing, provider_here, sweep_plan

    e = env()
    store = e.store
    provider = provider_here(store, inventory, progress=progress)
    if not sweep:
        rows = listing(store, provider, include_ended=show_all)
        if as_json:
            e.print_json({"instances": [x.to_dict() for x in rows]})
            return
        e.console.print(_table(rows, f"fedctl instances ({len(rows)})"))
        orphans = [x for x in rows if x.whose == ORPHAN and x.machine.billed]
        if orphans:
            e.err.print(f"[yellow]{len(orphans)} orphan(s) still billed:[/] `fedctl instances --sweep` terminates them")
        unknown = [x for x in rows if x.whose == UNKNOWN and x.machine.billed]
        if unknown:
            e.err.print(f"[yellow]{len(unknown)} instance(s) of this folder, but {store.state_file} cannot be "
                        "read:[/] they may be the live run's; run the fedctl version that wrote it")
        return
    plan = sweep_plan(store, provider, any_folder)
    if plan.refused:
        raise UsageError(
            f"{len(plan.refused)} instance(s) of this folder ({', '.join(x.machine.id for x in plan.refused)}) "
            f"cannot be told from the live run's: {store.state_file} cannot be read",
            hint="use the fedctl version that wrote the state (`fedctl teardown` ends its run), or "
            "`fedctl instances --sweep --any-folder` to terminate them anyway")
    if not plan.targets and not plan.group_runs:
        if as_json:
            e.print_json({"swept": [], "runs": []})
        else:
            e.console.print("no orphans: nothing to sweep")
        return
    if plan.targets and not as_json:
        e.console.print(_table(plan.targets, "to terminate (exactly these)"))
    what = f"terminate {len(plan.targets)} instance(s)"
    e.confirm(f"{what} and delete unused security groups of run(s) {', '.join(plan.group_runs)}?"
              if plan.group_runs else f"{what}?", yes)
    with store.lock():  # not while another fedctl changes this folder's run
        swept = provider.sweep([x.machine for x in plan.targets], plan.group_runs, plan.origins)
    skipped = sorted(provider.refused)
    if as_json:
        e.print_json({"swept": swept, "runs": plan.group_runs, "refused": skipped})
    else:
        e.console.print(f"swept {len(swept)} instance(s); none of them bills any more"
                        + (f"; left alone (tags changed since listed): {', '.join(skipped)}" if skipped else ""))


def register(app: typer.Typer) -> None:
    app.command("instances")(instances_cmd)
