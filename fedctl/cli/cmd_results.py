"""``fedctl results [--out DIR]`` (collect + report) and ``fedctl results compare RUN_A RUN_B ...`` (or
``compare SWEEP``: a sweep's configurations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from fedctl.cli.common import JsonOpt, as_text, env
from fedctl.cli.render import fmt_accuracy
from fedctl.model import HostStatus

results_app = typer.Typer(
    help="Gather a run's results into results/<run-id>/ (plots, summary.md, config, versions, cost).",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
)


def _results_root() -> Path:
    from fedctl.results import results_root

    return results_root(env().store)


def _read_token(fleet: Any, state: Any) -> list[str]:
    """The run token from the server's run dir (only to mask it in the results; never printed)."""
    from fedctl.deploy import read_file, remote_run_dir
    from fedctl.ops.common import server_record

    rec = server_record(state)
    if rec is None or not rec.workdir or rec.status == HostStatus.TORN_DOWN:
        return []
    try:
        text = read_file(fleet.connector(rec.name), remote_run_dir(rec, state.run_id) + "/token")
    except Exception:  # noqa: BLE001 - unreachable server: there is nothing new to mask either
        return []
    return [text.strip()] if text and text.strip() else []


def collect_and_build(state: Any, out: Path, collect: bool) -> tuple[Any, list[str]]:
    """Collect from the run's hosts when they are still there, then build the report on ``out``."""
    from fedctl.results import build_report

    e = env()
    notes: list[str] = []
    secrets: list[str] = []
    live = [r for r in state.hosts if r.workdir and r.status != HostStatus.TORN_DOWN]
    if collect and live:
        try:
            from fedctl.ops.collect import collect_raw
            from fedctl.ops.common import open_fleet
        except ImportError:
            notes.append("collecting is not available in this version: using what is already in " + str(out))
        else:
            with e.store.lock():
                with open_fleet(e.store, live) as fleet:
                    secrets = _read_token(fleet, state)
                    rep = collect_raw(e.store, state, dest=out, fleet=fleet)
                e.store.save(state)
            for host, why in rep.failures.items():
                notes.append(f"{host}: could not collect: {why}")
    elif not live:
        notes.append("the run's hosts are released: building from what was collected before")
    report = build_report(out, state, now=e.clock() if live else None, secrets=secrets)
    return report, notes + report.warnings


@results_app.callback()
def results_cmd(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, "--out", help="results folder (default: results/<run-id>/)"),
    run: Optional[str] = typer.Option(None, "--run", help="an archived run id (default: the current run)"),
    no_collect: bool = typer.Option(False, "--no-collect", help="do not contact the hosts; use what is here"),
    as_json: bool = JsonOpt,
) -> None:
    """Collect the current run's metrics, logs and model and write plots, summary.md and the rest."""
    if ctx.invoked_subcommand is not None:
        return
    from fedctl.results import load_run_state

    e = env()
    state = load_run_state(e.store, run)
    from fedctl.ops.collect import results_dir  # refuses a run id that is not a plain name

    dest = out or results_dir(e.store, state.run_id)
    report, notes = collect_and_build(state, dest, collect=not no_collect)
    if as_json:
        e.print_json({**report.to_dict(), "notes": notes})
        return
    for n in notes:
        e.err.print(f"[yellow]note:[/] {as_text(n)}", highlight=False)
    s = report.summary
    acc = fmt_accuracy(s["final_accuracy"])
    e.console.print(f"results of run {state.run_id}: {report.dir}", highlight=False)
    e.console.print(f"  rounds {s['rounds_completed']}, final accuracy {acc}, status {s['status']}"
                    + (f", stopped by budget guard {s['stopped_by']}" if s["stopped_by"] else ""), highlight=False)
    e.console.print(f"  {len(report.files)} files; summary: {report.dir / 'summary.md'}", highlight=False)


@results_app.command("compare")
def compare_cmd(
    runs: List[str] = typer.Argument(..., help="run ids under results/ or results folders; or sweeps "
                                               "(a name under results/sweeps/ or a sweep's folder)"),
    target: Optional[float] = typer.Option(None, "--target", help="target accuracy (default: what every run reached; "
                                                                   "a sweep's own target_accuracy)"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: results/compare.png, a sweep's "
                                                           "compare.png in its folder); a .md table goes next to it"),
    as_json: bool = JsonOpt,
) -> None:
    """Accuracy curves of several runs on one plot and a table of rounds and time to a target accuracy.

    Given sweeps, it compares their configurations: each one's mean curve over its seeds with a
    min-max band, and mean final and best accuracy with their standard deviation."""
    from fedctl.errors import UsageError
    from fedctl.results import compare, resolve_run
    from fedctl.results.compare import compare_sweeps, resolve_sweep

    e = env()
    if target is not None and not 0 < target <= 1:
        raise UsageError(f"--target {target} must be an accuracy in (0, 1]")
    if out is not None and out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: give a .png file name")
    sweeps = [resolve_sweep(r, _results_root()) for r in runs]
    comp: Any
    if any(s is not None for s in sweeps):
        if not all(sweeps):
            others = [r for r, s in zip(runs, sweeps) if s is None]
            raise UsageError(f"{', '.join(others)}: not a sweep; compare sweeps with sweeps, runs with runs",
                             hint="a run of a sweep is in results/sweeps/<name>/ beside its table")
        folders = [s for s in sweeps if s is not None]
        dest = out or (folders[0] / "compare.png" if len(folders) == 1 else _results_root() / "compare.png")
        comp = compare_sweeps(folders, dest, target)
    else:
        if len(runs) < 2:
            where = _results_root() / "sweeps" / runs[0]
            raise UsageError(f"{runs[0]}: not a sweep (no table.json there nor in {where}); "
                             "compare needs at least two runs or one sweep",
                             hint="a sweep's folder is results/sweeps/<name>/ (written when `fedctl sweep` ends)")
        folders = [resolve_run(r, _results_root()) for r in runs]
        comp = compare(folders, out or (_results_root() / "compare.png"), target)
    if as_json:
        e.print_json(comp.to_dict())
        return
    e.console.print(comp.table.read_text(), highlight=False, markup=False, soft_wrap=True)
    e.console.print(f"plot: {comp.plot}\ntable: {comp.table}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(results_app, name="results")
