"""A whole experiment as one library call: provision + start + follow + teardown (or ``on_finish``).

``run_experiment(store, inputs, ui)`` is what ``fedctl run`` does; the CLI only implements the
small ``RunUI`` protocol (progress lines, the live screen, confirmation, the reports) and maps the
error that stopped the run to its exit code. Any program can run an experiment the same way.

Money is never left burning by accident: Ctrl-C (KeyboardInterrupt) or any failure after the run
started stops it, collects the results and tears it down, then raises what stopped it; a provision
that fails after a machine-creating provider (aws) made machines terminates them. Leaving the run
going is an explicit choice of the UI (the live screen's ``d`` key: ``LiveResult(detached=True)``).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from fedctl.model import Phase
from fedctl.ops.common import Inputs, Progress, open_fleet, quiet, session
from fedctl.ops.follow import FollowEvent, GuardInputs, follow_plain, guard_tripped  # noqa: F401 - re-exported
from fedctl.state import RunState, StateStore


@dataclass(frozen=True)
class LiveResult:
    """How a live view ended: the user detached (the run goes on), or a guard passed to it tripped."""

    detached: bool = False
    trip: Any = None


class RunUI(Protocol):
    """What ``run_experiment`` shows and asks. Every method may be a no-op (``QuietUI``)."""

    def progress(self, message: str) -> None:
        """A step in progress (provision, start, teardown ...)."""

    def notice(self, message: str, level: str = "info") -> None:
        """A line worth the user's attention: ``info``, ``warning`` or ``error``."""

    def confirm(self, question: str) -> None:
        """Ask before renting anything; refuse by raising (``fedctl.errors.Declined``)."""

    def plan(self, inputs: Inputs) -> None:
        """The plan, before anything is touched."""

    def provisioned(self, report: Any) -> None:
        """The provision report (``fedctl.ops.provision.ProvisionReport``)."""

    def started(self, report: Any) -> None:
        """The start report (``fedctl.ops.start.StartReport``); the server's endpoint is in its state."""

    def round(self, event: FollowEvent) -> None:
        """A new round or newly dead client processes (when there is no live view)."""

    def live(self, store: StateStore, state: RunState, stop_when: Callable[[Any, Any], Any],
             interval: float) -> LiveResult | None:
        """Show the run live until it ends; call ``stop_when(snapshot, server_status)`` on each frame
        (the monitor's last ``contract.ServerStatus``, None when none was read) and end with its
        truthy answer as ``trip``. None: this UI has no live view (plain ``round`` lines)."""

    def torn_down(self, report: Any) -> None:
        """The teardown report (``fedctl.ops.teardown.TeardownReport``)."""

    def finished(self, outcome: "RunOutcome") -> None:
        """The outcome, before ``run_experiment`` returns it or raises what stopped the run."""


class QuietUI:
    """A RunUI that shows nothing and agrees to everything (for programs and tests)."""

    def progress(self, message: str) -> None: ...
    def notice(self, message: str, level: str = "info") -> None: ...
    def confirm(self, question: str) -> None: ...
    def plan(self, inputs: Inputs) -> None: ...
    def provisioned(self, report: Any) -> None: ...
    def started(self, report: Any) -> None: ...
    def round(self, event: FollowEvent) -> None: ...
    def live(self, store: StateStore, state: RunState, stop_when: Callable[[Any, Any], Any],
             interval: float) -> LiveResult | None:
        return None
    def torn_down(self, report: Any) -> None: ...
    def finished(self, outcome: "RunOutcome") -> None: ...


@dataclass
class RunOutcome:
    """What became of a run: its last status, how it ended and what was done after."""

    run_id: str
    status: Any = None  # the last fedctl.ops.status.RunStatus (None: detached or never followed)
    detached: bool = False
    trip: Any = None  # the budget guard's trip, when one stopped the run
    finish: str = "teardown"  # what was done at the end: teardown | stop | poweroff
    problem: str | None = None  # why the run did not finish, when it did not
    poweroff: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.detached or (self.trip is None and self.problem is None and self.status is not None
                                 and self.status.phase == Phase.FINISHED)


def run_experiment(
    store: StateStore, inputs: Inputs, ui: RunUI | None = None, overrides: Sequence[str] = (), interval: float = 2.0,
) -> RunOutcome:
    """Provision ``inputs``' plan, start the run, follow it until it ends (or a budget guard trips,
    or the UI detaches), then finish it the way ``on_finish`` says. Opens one Session on ``store``
    for the whole run (unless one is bound already). Returns the outcome of a run that finished or
    was detached; raises what stopped any other run, after cleaning up (FedctlError, or
    KeyboardInterrupt for Ctrl-C)."""
    from fedctl.errors import FedctlError

    ui = ui or QuietUI()
    with session(store):
        before = _marker(store)
        try:
            report = provision_step(store, inputs, ui, overrides)
        except BaseException:
            # a provider that creates machines (aws) may have made some before it failed: they bill
            # until terminated, so the same clean-up as after a failed run (Ctrl-C included)
            if _made_machines(store, before):
                ui.notice("provision failed: terminating the machines it created", "warning")
                _clean_up_after_provision(store, ui)
            raise
        outcome = RunOutcome(report.state.run_id, finish=report.state.experiment.finish)
        failure: BaseException | None = None  # what stopped the run: the caller's exit code is its
        try:
            start_step(store, inputs.experiment, ui)
            outcome.status, outcome.trip, outcome.detached = _follow(store, ui, interval)
            if outcome.detached:
                ui.finished(outcome)
                return outcome
        except KeyboardInterrupt as exc:
            outcome.problem, failure = "interrupted", exc
            ui.notice("interrupted: stopping the run, collecting results and tearing it down "
                      "(Ctrl-C again stops the clean-up; `fedctl teardown` then finishes it)", "warning")
            outcome.finish = "teardown" if outcome.finish == "stop" else outcome.finish
        except FedctlError as exc:
            outcome.problem, failure = str(exc), exc
            ui.notice(str(exc), "error")
        except Exception as exc:  # a bug in fedctl: the hosts are still cleaned up before it is reported
            outcome.problem, failure = f"{type(exc).__name__}: {exc}", exc
            ui.notice(f"{outcome.problem}: cleaning up before reporting it", "error")
        if failure is not None and _creates_machines(store):
            outcome.finish = "teardown"  # on_finish: stop keeps machines for a run that worked, not one that failed
        _finish(store, ui, outcome)
        ui.finished(outcome)
    if outcome.trip is not None:
        raise FedctlError(outcome.trip.message if outcome.trip.reason == "ended"
                          else f"stopped by the budget guard: {outcome.trip.message}")
    if failure is not None:
        raise failure
    if outcome.status is None or outcome.status.phase != Phase.FINISHED:
        why = outcome.problem or (outcome.status.phase if outcome.status else "failed to start")
        raise FedctlError(f"the run did not finish: {why}")
    return outcome


def provision_step(store: StateStore, inputs: Inputs, ui: RunUI, overrides: Sequence[str] = ()) -> Any:
    """Show the plan, confirm (nothing to agree to on this machine), provision; HostsFailed unless
    every host is provisioned."""
    from fedctl.errors import HostsFailed
    from fedctl.model import HostStatus
    from fedctl.ops.provision import provision

    ui.plan(inputs)
    if inputs.inventory.provider != "local":  # type: ignore[attr-defined]
        ui.confirm("provision these hosts?")
    with store.lock():
        report = provision(store, inputs, progress=ui.progress, overrides=overrides)
    ui.provisioned(report)
    if not report.ok:
        raise HostsFailed(
            "provision failed on: " + ", ".join(r.name for r in report.rows if r.status != HostStatus.PROVISIONED),
            hint="fix the hosts and run the same command again (provisioned hosts are kept), "
            "or `fedctl teardown` to clean up",
            host_key=report.host_key_failed,
        )
    return report


def start_step(store: StateStore, experiment: Any, ui: RunUI, resume: bool = False) -> Any:
    """Start the provisioned run with ``experiment`` (a ``fedctl.config.experiment.Experiment``),
    or with ``resume`` restart its dead processes as configured; HostsFailed when a host failed."""
    from fedctl.errors import HostsFailed
    from fedctl.ops.resume import resume as resume_run
    from fedctl.ops.start import start

    with store.lock(create=False):
        state = store.load()
        if resume:
            report = resume_run(store, state, progress=ui.progress)
        else:
            report = start(store, state, experiment, progress=ui.progress)
    ui.started(report)
    if not report.ok:
        raise HostsFailed(
            "start failed: " + "; ".join(f"{h}: {m}" for h, m in report.failures.items()),
            hint="`fedctl logs` / `fedctl status` to look, `fedctl stop` or `fedctl teardown` to clean up",
        )
    return report


def teardown_step(store: StateStore, ui: RunUI, keep_files: bool = False, grace_s: float = 10.0) -> Any:
    """Tear the run down (None when it is torn down already); HostsFailed when a host kept
    something."""
    from fedctl.errors import HostsFailed
    from fedctl.ops.teardown import teardown

    with store.lock(create=False):
        state = store.load()
        if state.phase == Phase.TORN_DOWN:
            return None
        report = teardown(store, state, keep_files=keep_files, grace_s=grace_s, progress=ui.progress)
    ui.torn_down(report)
    if not report.ok:
        bad = [h for h in report.hosts if not h.ok]
        raise HostsFailed(
            "teardown incomplete on: " + ", ".join(f"{h.name} ({h.error or 'leftovers'})" for h in bad),
            hint="those hosts stay in the state; run `fedctl teardown` again when they are reachable",
        )
    return report


def _follow(store: StateStore, ui: RunUI, interval: float) -> tuple[Any, Any, bool]:
    """(last status, guard trip, detached): the UI's live view when it has one, else plain lines.
    Ctrl-C propagates (KeyboardInterrupt): the caller tears the run down."""
    from fedctl.ops.status import observe

    def stop_when(snap: Any, server_status: Any = None) -> Any:
        return guard_tripped(store, store.load(), GuardInputs.of_snapshot(snap, server_status))

    live = ui.live(store, store.load(), stop_when, interval)
    if live is None:
        st, trip = follow_plain(store, interval, ui.round)
    elif live.detached:
        return None, None, True
    else:
        st, trip = observe(store, store.load()), live.trip
    if trip is not None:
        what = trip.message if trip.reason == "ended" else f"budget guard: {trip.message}"
        ui.notice(f"{what}; collecting results and stopping the run", "error")
    return st, trip, False


def _finish(store: StateStore, ui: RunUI, outcome: RunOutcome) -> None:
    """``on_finish``: stop (hosts kept), or teardown, then power the hosts off for poweroff."""
    if outcome.finish == "stop" and outcome.trip is None:
        stop_and_collect(store, progress=ui.progress)
        ui.notice("processes stopped, hosts kept (on_finish: stop): `fedctl teardown` when done")
        return
    teardown_step(store, ui)
    if outcome.finish == "poweroff":
        if store.exists() and store.load().provider == "local":
            ui.notice("on_finish: poweroff does nothing for the local provider (this machine stays on)", "warning")
        outcome.poweroff = poweroff(store)
        for host, _ok, detail in outcome.poweroff:
            ui.notice(f"{host}: power-off {detail}")


def stop_and_collect(store: StateStore, progress: Progress = quiet) -> None:
    """``on_finish: stop``: stop the processes and collect results; the hosts stay provisioned."""
    from fedctl.ops.collect import collect_raw
    from fedctl.ops.stop import stop

    with store.lock():
        state = store.load()
        stop(store, state, progress=progress)
        collect_raw(store, state, progress=progress)
        store.save(state)


def poweroff(store: StateStore) -> list[tuple[str, bool, str]]:
    """``on_finish: poweroff``: power the run's (static) hosts off, never this machine.

    Returns (host, ok, detail) per host; empty for the local provider or when no run is recorded.
    The command (``FEDCTL_POWEROFF_COMMAND`` or ``sudo -n poweroff``) runs detached and delayed, so
    the SSH command returns before the host goes down."""
    from fedctl.budget import DEFAULT_POWEROFF_COMMAND, POWEROFF_ENV

    state = store.load() if store.exists() else None
    if state is None or state.provider == "local":
        return []
    command = os.environ.get(POWEROFF_ENV) or DEFAULT_POWEROFF_COMMAND
    with open_fleet(store, state.hosts) as fleet:
        results = fleet.run(f"nohup sh -c {shlex.quote('sleep 2; ' + command)} >/dev/null 2>&1 &", timeout=30)
    return [(r.host, r.ok, "requested" if r.ok else f"failed: {r.error}") for r in results]


def _marker(store: StateStore) -> tuple[str, float | None] | None:
    """What the state looks like before provision (run id, last saved): provision saves it once it
    has recorded its intent, so a failure after that is told from one before it."""
    from fedctl.errors import StateError

    try:
        state = store.load_or_none()
    except StateError:
        return None
    return None if state is None else (state.run_id, state.updated_at)


def _made_machines(store: StateStore, before: tuple[str, float | None] | None) -> bool:
    """Whether this provision got as far as a machine-creating provider (its intent is recorded, so
    machines may exist) and the run is not torn down."""
    from fedctl.errors import FedctlError
    from fedctl.providers import provider_class

    try:
        state = store.load_or_none()
        if state is None or state.phase == Phase.TORN_DOWN or _marker(store) == before:
            return False
        return provider_class(state.provider).creates_machines
    except FedctlError:  # an unreadable state or unknown provider: provision never got that far
        return False


def _creates_machines(store: StateStore) -> bool:
    from fedctl.providers import provider_class

    return store.exists() and provider_class(store.load().provider).creates_machines


def _clean_up_after_provision(store: StateStore, ui: RunUI) -> None:
    """Tear down after a failed provision; its own failure is said, the provision's error wins."""
    from fedctl.errors import FedctlError

    try:
        teardown_step(store, ui)
    except FedctlError as exc:
        ui.notice(f"clean-up incomplete: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), "error")
