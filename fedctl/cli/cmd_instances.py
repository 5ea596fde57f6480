"""``fedctl instances [--all] [--sweep]``: the machines fedctl created in the cloud, orphans included.

Lists what the provider's API reports (not what the state believes), marks each machine as this
folder's run, an orphan of this folder (its run is gone from the state), another folder's, or
unknown (this folder's, but its state cannot be read), and with ``--sweep`` terminates exactly the
orphans it lists, after asking, each re-checked by its tags just before the call.

On Slurm (the inventory given says ``provider: slurm``, or, without ``-i``, this folder's newest run
was on Slurm) the same command lists this user's fedctl jobs that squeue shows (named ``fedctl-<run>``,
commented ``fedctl-origin=...``) and ``--sweep`` cancels this folder's orphan jobs
(``fedctl.providers.slurm_orphans``).
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
    sweep: bool = typer.Option(False, "--sweep", help="terminate this folder's orphans (Slurm: cancel its orphan jobs), after asking"),
    any_folder: bool = typer.Option(
        False, "--any-folder", help="with --sweep: also fedctl instances started from other folders or machines, and this folder's "
        "while its state cannot be read"
    ),
    yes: bool = YesOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the cloud instances (or, on Slurm, the jobs) fedctl created, orphans included; --sweep ends orphans."""
    from fedctl.errors import UsageError
    from fedctl.providers.aws_orphans import ORPHAN, UNKNOWN, listing, provider_here, sweep_plan

    from fedctl.providers.slurm_orphans import slurm_cli_here

    e = env()
    store = e.store
    cli = slurm_cli_here(store, inventory)
    if cli is not None:
        _slurm_jobs(e, cli, sweep, any_folder, yes, as_json)
        return
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


def _jobs_table(rows: list[Any], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    for col in ("job", "run", "state", "nodes / reason", "whose"):
        t.add_column(col)
    style = {"this run": "green", "orphan": "red", "other folder": "yellow", "unknown (state unreadable)": "magenta"}
    for x in rows:
        j = x.job
        where = j.nodes or (j.reason if j.reason not in ("", "None") else "-")
        t.add_row(j.id, j.run_id or "-", j.state, where, Text(x.whose, style=style.get(x.whose, "dim")))
    return t


def _slurm_jobs(e: Any, cli: Any, sweep: bool, any_folder: bool, yes: bool, as_json: bool) -> None:
    """``fedctl instances`` on a Slurm cluster: this user's fedctl jobs; --sweep cancels orphans."""
    from fedctl.errors import UsageError
    from fedctl.providers.slurm_orphans import ORPHAN, UNKNOWN, listing, sweep_plan
    from fedctl.providers.slurm_orphans import sweep as sweep_jobs

    store = e.store
    if not sweep:
        rows = listing(store, cli)
        if as_json:
            e.print_json({"jobs": [x.to_dict() for x in rows]})
            return
        e.console.print(_jobs_table(rows, f"fedctl jobs on {cli.where} ({len(rows)})"))
        orphans = [x for x in rows if x.whose == ORPHAN]
        if orphans:
            e.err.print(f"[yellow]{len(orphans)} orphan job(s) hold an allocation:[/] `fedctl instances --sweep` "
                        "cancels them")
        if any(x.whose == UNKNOWN for x in rows):
            e.err.print(f"[yellow]jobs of this folder, but {store.state_file} cannot be read:[/] they may be the "
                        "live run's; run the fedctl version that wrote it")
        return
    with store.lock():  # not while another fedctl changes this folder's run
        plan = sweep_plan(store, cli, any_folder)
        if plan.refused:
            raise UsageError(
                f"{len(plan.refused)} job(s) of this folder ({', '.join(x.job.id for x in plan.refused)}) cannot "
                f"be told from the live run's: {store.state_file} cannot be read",
                hint="use the fedctl version that wrote the state (`fedctl teardown` ends its run), or "
                "`fedctl instances --sweep --any-folder` to cancel them anyway")
        if not plan.targets:
            if as_json:
                e.print_json({"cancelled": [], "left": []})
            else:
                e.console.print("no orphan jobs: nothing to sweep")
            return
        if not as_json:
            e.console.print(_jobs_table(plan.targets, "to cancel (exactly these)"))
        e.confirm(f"cancel {len(plan.targets)} job(s)?", yes)
        done = sweep_jobs(cli, plan.targets, say=progress)
    if as_json:
        e.print_json({"cancelled": done.cancelled, "left": done.left})
    else:
        e.console.print(f"cancelled {len(done.cancelled)} job(s); squeue shows none of them any more"
                        + (f"; left alone (name or comment changed, or ended, since listed): {', '.join(done.left)}"
                           if done.left else ""))


def register(app: typer.Typer) -> None:
    app.command("instances")(instances_cmd)
