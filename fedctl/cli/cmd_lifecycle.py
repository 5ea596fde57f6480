"""``provision``, ``start``, ``status``, ``stop`` and ``teardown`` (``run`` is in ``cmd_run``).

Each command: parse, call the library (fedctl.ops.*), print the typed report. Library imports are
inside the functions so ``fedctl --help`` stays light.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from fedctl.cli.common import ConfigOpt, InventoryOpt, JsonOpt, OptList, SetOpt, YesOpt, as_text, env, progress
from fedctl.model import Phase


def _do_provision(
    clients: Optional[int],
    inventory: Optional[str],
    config: Optional[str],
    sets: OptList,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    rounds: Optional[int] = None,
) -> Any:
    """Validate, plan, confirm, provision (``fedctl.ops.run.provision_step``). Returns the
    ProvisionReport (None for a dry run)."""
    from fedctl.cli.console_ui import ConsoleUI
    from fedctl.ops.common import load_inputs
    from fedctl.ops.run import provision_step

    e = env()
    inputs = load_inputs(inventory, config, sets or [], clients=clients, rounds=rounds, store=e.store)
    ui = ConsoleUI(e, yes, json_reports=as_json)
    if dry_run:
        ui.plan(inputs)
        if as_json:
            e.print_json({"plan": inputs.plan.to_dict(), "dry_run": True})
        return None
    return provision_step(e.store, inputs, ui, overrides=sets or [])


def provision_cmd(
    clients: Optional[int] = typer.Option(None, "--clients", "-n", help="number of FL clients"),
    inventory: Optional[str] = InventoryOpt,
    config: Optional[str] = ConfigOpt,
    sets: OptList = SetOpt,
    yes: bool = YesOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the plan; touch nothing"),
    as_json: bool = JsonOpt,
) -> None:
    """Check the hosts of the plan and prepare their workdirs."""
    _do_provision(clients, inventory, config, sets, yes, dry_run, as_json)


def _load_experiment_for(
    state: Any, config: Optional[str], sets: OptList, rounds: Optional[int], clients: Optional[int] = None
) -> Any:
    """The experiment for ``start``: the file given now, else the one recorded at provision.

    The number of clients is the plan's (the file's own ``clients:`` may differ from provision's
    ``--clients``), but a ``--set clients=N`` or ``--clients N`` given to this start that asks for
    another number is an error: the hosts were placed for the plan's count."""
    from fedctl.config.experiment import load_experiment
    from fedctl.config.overrides import parse_overrides
    from fedctl.errors import UsageError

    path = config or state.config_path
    # a --set that provision already applied (``fedctl run`` passes its --set to both) is not a new
    # ask: there provision's --clients, if given, took precedence and the plan follows it
    asked = [o.text for o in parse_overrides(sets or []) if o.path == ("clients",) and o.text not in state.overrides]
    # provision's --set values still hold unless this start sets the same keys again
    exp = load_experiment(path, [*state.overrides, *(sets or [])],
                          clients=clients if clients is not None else None if asked else state.clients,
                          rounds=rounds)
    if exp.clients != state.clients:
        how = f"--clients {clients}" if clients is not None else f"--set {asked[-1]}"
        raise UsageError(
            f"{how} asks for {exp.clients} clients, but run {state.run_id} was provisioned for {state.clients}",
            hint=f"provision again for {exp.clients} clients (`fedctl provision --clients {exp.clients}`; "
            "a run that was started: `fedctl teardown` first), or start without changing the number of clients",
        )
    return exp


def _do_start(
    config: Optional[str], sets: OptList, rounds: Optional[int], as_json: bool, resume: bool = False,
    clients: Optional[int] = None,
) -> Any:
    """Start (or resume) the provisioned run (``fedctl.ops.run.start_step``)."""
    from fedctl.cli.console_ui import ConsoleUI
    from fedctl.errors import UsageError
    from fedctl.ops.run import start_step

    e = env()
    if resume and (config or sets or rounds or clients is not None):
        raise UsageError("--resume continues the run as it was configured: -c/--set/--rounds/--clients cannot change it")
    exp = None if resume else _load_experiment_for(e.store.load(), config, sets, rounds, clients)
    return start_step(e.store, exp, ConsoleUI(e, json_reports=as_json), resume=resume)


def start_cmd(
    rounds: Optional[int] = typer.Option(None, "--rounds", "-r", help="override the number of rounds"),
    clients: Optional[int] = typer.Option(
        None, "--clients", "-n", help="must match what was provisioned (to change it, provision again)"
    ),
    config: Optional[str] = ConfigOpt,
    sets: OptList = SetOpt,
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="budget: stop the run before it costs this much"),
    max_hours: Optional[float] = typer.Option(None, "--max-hours", help="budget: stop the run after this many hours"),
    idle_minutes: Optional[float] = typer.Option(None, "--idle-minutes", help="budget: stop when no round completed for this long"),
    resume: bool = typer.Option(
        False, "--resume", help="restart the current run's dead processes; the server continues from its checkpoint"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Push the payload and start the server and clients, detached (budget watchdogs included)."""
    _do_start(config, budget_sets(sets, max_cost, max_hours, idle_minutes), rounds, as_json, resume=resume,
              clients=clients)


def status_cmd(as_json: bool = JsonOpt) -> None:
    """Phase, round k of R, accuracy, and which processes are alive on each host."""
    from fedctl.cli.render import status_table
    from fedctl.ops.status import observe

    e = env()
    store = e.store
    state = store.load()
    st = observe(store, state)
    gone = _machines_ended(store, state, st)
    if as_json:
        e.print_json({**st.to_dict(), "machines_ended": gone})
        return
    acc = "-" if st.accuracy is None else f"{st.accuracy:.4f}"
    e.console.print(
        f"run [bold]{st.run_id}[/]  phase [bold]{st.phase}[/]  round {st.round}/{st.rounds}  accuracy {acc}"
    )
    if st.error:
        e.console.print(f"[red]{as_text(st.error)}[/]", highlight=False)
    if gone:
        e.console.print(f"[red]the run's machines are gone: {as_text(gone)}[/]", highlight=False)
        e.err.print("`fedctl start --resume` continues the run on new ones (Slurm: a new allocation, from the "
                    "checkpoint); `fedctl teardown` collects its results", highlight=False)
    e.console.print(status_table(st))


def _machines_ended(store: Any, state: Any, st: Any) -> str | None:
    """Why the run's machines are gone for good (a Slurm job's time limit, preemption, a node
    failure, a scancel: ``Provider.ended``), asked only when a host could not be reached."""
    from fedctl.errors import FedctlError
    from fedctl.model import HostStatus
    from fedctl.providers import for_run

    if not any(h.reachable is False for h in st.hosts):
        return None
    try:
        return for_run(state, store).ended([r.info for r in state.hosts if r.status != HostStatus.TORN_DOWN])
    except FedctlError:  # cannot ask (the login node is down): the hosts' errors say what failed
        return None


def stop_cmd(
    grace: float = typer.Option(10.0, "--grace", help="seconds between TERM and KILL"),
    as_json: bool = JsonOpt,
) -> None:
    """Stop the run's processes (TERM, then KILL); the hosts stay provisioned."""
    from fedctl.errors import HostsFailed
    from fedctl.ops.stop import stop

    e = env()
    store = e.store
    with store.lock(create=False):
        state = store.load()
        report = stop(store, state, grace_s=grace, progress=progress)
    if as_json:
        e.print_json({"ok": report.ok, "stopped": report.stopped, "survivors": report.survivors, "failures": report.failures})
    else:
        for host, n in report.stopped.items():
            e.console.print(f"{host}: {n} process(es) stopped")
    if not report.ok:
        raise HostsFailed("stop incomplete: " + "; ".join(f"{h}: {m}" for h, m in report.failures.items()))


def _do_teardown(keep_files: bool, as_json: bool, grace: float = 10.0) -> Any:
    """Tear the run down (``fedctl.ops.run.teardown_step``); says so when it already is."""
    from fedctl.cli.console_ui import ConsoleUI
    from fedctl.ops.run import teardown_step

    e = env()
    report = teardown_step(e.store, ConsoleUI(e, json_reports=as_json), keep_files=keep_files, grace_s=grace)
    if report is None and not as_json:
        e.console.print(f"run {e.store.load().run_id} is already torn down")
    return report


def teardown_cmd(
    yes: bool = YesOpt,
    keep_files: bool = typer.Option(False, "--keep-files", help="keep fedctl's files on the hosts"),
    grace: float = typer.Option(10.0, "--grace", help="seconds between TERM and KILL"),
    forget: OptList = typer.Option(
        None, "--forget", help="drop HOST from the run without reaching it (it is gone for good); repeatable"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Stop everything, collect results, remove fedctl's files, release, verify."""
    e = env()
    state = e.store.load()
    if forget:
        from rich.markup import escape

        from fedctl.ops.teardown import forget as forget_hosts

        e.confirm(f"forget {', '.join(forget)} without cleaning up there?", yes)
        with e.store.lock():
            for note in forget_hosts(e.store, e.store.load(), forget):
                e.err.print(f"[yellow]{escape(note)}[/]")
        state = e.store.load() if e.store.exists() else state
        if state.phase == Phase.TORN_DOWN:
            e.console.print(f"run {state.run_id} is torn down")
            return
    if state.phase != Phase.TORN_DOWN:
        e.confirm(f"tear down run {state.run_id}?", yes or state.provider == "local")
    _do_teardown(keep_files, as_json, grace)


MaxCostOpt = typer.Option(None, "--max-cost", help="budget: stop the run before it costs this much")
MaxHoursOpt = typer.Option(None, "--max-hours", help="budget: stop the run after this many hours")
IdleOpt = typer.Option(None, "--idle-minutes", help="budget: stop when no round completed for this long")


def budget_sets(sets: OptList, max_cost: Optional[float], max_hours: Optional[float], idle: Optional[float]) -> list[str]:
    """Budget flags as ``--set`` overrides: validated like the file and recorded in the run's config
    (where the remote watchdogs read them)."""
    out = list(sets or [])
    for key, value in (("max_cost", max_cost), ("max_hours", max_hours), ("idle_minutes", idle)):
        if value is not None:
            out.append(f"budget.{key}={value}")
    return out


def register(app: typer.Typer) -> None:
    app.command("provision")(provision_cmd)
    app.command("start")(start_cmd)
    app.command("status")(status_cmd)
    app.command("stop")(stop_cmd)
    app.command("teardown")(teardown_cmd)
