"""``fedctl sweep``: provision one fleet, run the campaign's runs on it packed, tear it down once.

Design: the fleet is the StateStore under ``.fedctl/sweeps/<name>/fleet/`` (provisioned and torn
down with the ordinary ``provision_step``/``teardown_step``); each run is a StateStore of its own
under ``runs/<key>/`` holding a copy of the fleet's hosts with the run's own id (so its own run dir,
token, port and processes), started, followed, stopped and collected with the ordinary ops. What a
run creates on a host is merged into the fleet's records (the fleet's teardown removes it), and the
id of every run in flight is in the fleet's ``previous_runs`` before it starts, so the fleet's
teardown finds its processes by run mark even after a fedctl killed mid-start.

One thread: each tick starts queued runs while the fleet has room, probes each run in flight,
stops and collects the runs that ended. A failed run never stops the others; Ctrl-C stops the runs
in flight, collects what they have, marks them interrupted, tears the fleet down and re-raises; a
budget trip (the campaign's, measured on the fleet) does the same and raises a FedctlError.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from fedctl.errors import FedctlError, StateError
from fedctl.model import LIVE_PHASES, Phase
from fedctl.sweep.plan import CampaignPlan
from fedctl.sweep.packing import FleetJournal, capacity, merge_owned, run_state_for
from fedctl.sweep.state import CampaignState, SweepStore, parse_only, reconcile, select


class SweepUI(Protocol):
    """The RunUI steps the fleet uses (progress, notice, confirm, plan, provisioned, torn_down)
    plus ``frame``: the campaign's snapshot after each tick and after each change of a run."""

    def progress(self, message: str) -> None: ...
    def notice(self, message: str, level: str = "info") -> None: ...
    def confirm(self, question: str) -> None: ...
    def plan(self, inputs: Any) -> None: ...
    def provisioned(self, report: Any) -> None: ...
    def torn_down(self, report: Any) -> None: ...
    def frame(self, view: Any, changed: Sequence[str] = ()) -> None: ...


class QuietSweepUI:
    """A SweepUI that shows nothing and agrees to everything (programs, tests)."""

    def progress(self, message: str) -> None: ...
    def notice(self, message: str, level: str = "info") -> None: ...
    def confirm(self, question: str) -> None: ...
    def plan(self, inputs: Any) -> None: ...
    def provisioned(self, report: Any) -> None: ...
    def torn_down(self, report: Any) -> None: ...
    def frame(self, view: Any, changed: Sequence[str] = ()) -> None: ...


@dataclass
class CampaignOutcome:
    state: CampaignState
    interrupted: bool = False
    trip: Any = None  # the campaign's budget trip, when one stopped it
    outputs: Any = None  # the tables' folder (fedctl.sweep.tables.write_sweep_outputs)

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.state.runs.items() if r.status == "failed"]


class Campaign:
    """One invocation of a campaign: the fleet's store and session, the runs in flight."""

    def __init__(self, sweeps: SweepStore, plan: CampaignPlan, ui: SweepUI, interval: float = 2.0,
                 grace_s: float = 10.0, mlflow: str | None = None) -> None:
        self.sweeps, self.plan, self.ui, self.mlflow = sweeps, plan, ui, mlflow
        self.interval, self.grace_s = interval, grace_s
        self.clock = sweeps.clock
        self.fleet = sweeps.fleet_store()
        self.state: CampaignState = CampaignState(plan.spec.name)
        self.planned = {p.run.key: p for p in plan.runs}
        self.inflight: dict[str, Any] = {}  # key -> (store, observer)
        self.session: Any = None

    # -- the whole campaign --------------------------------------------------------------------
    def run(self, only: Sequence[tuple[str, Any]] = (), rerun_failed: bool = False) -> CampaignOutcome:
        """Run what is missing (see ``select``); returns the outcome (raises KeyboardInterrupt or
        the budget's FedctlError after cleaning up)."""
        from fedctl.ops.common import session

        with self.sweeps.lock():
            self.state = reconcile(self.sweeps.load() if self.sweeps.exists() else None, self.plan, self.clock)
            self.sweeps.save(self.state)
            todo = select(self.state, list(self.planned), only, rerun_failed)
            outcome = CampaignOutcome(self.state)
            if not todo:
                self.ui.notice(f"campaign {self.state.name}: nothing to run "
                               f"({_counts_text(self.state)}; --rerun-failed runs failed ones again)")
                outcome.outputs = self.write_outputs()
                return outcome
            with session(self.fleet) as self.session:
                self._clean_leftover_fleet()
                try:
                    self._provision()
                    outcome.trip = self._loop(todo)
                except KeyboardInterrupt:
                    outcome.interrupted = True
                    self.ui.notice("interrupted: stopping the runs in flight, collecting what they have and "
                                   "tearing the fleet down (Ctrl-C again stops the clean-up; the same command, or "
                                   f"`fedctl teardown` in .fedctl/sweeps/{self.state.name}, then finishes it)",
                                   "warning")
                finally:
                    self._stop_inflight("interrupted" if outcome.interrupted or outcome.trip else "failed")
                    self._teardown()
            outcome.outputs = self.write_outputs()
        if outcome.interrupted:
            raise KeyboardInterrupt
        if outcome.trip is not None:
            raise FedctlError(f"campaign stopped by its budget: {outcome.trip.message}",
                              hint="raise budget in the sweep file and run the same command again: "
                              "only the runs not finished run")
        return outcome

    def _provision(self) -> None:
        from fedctl.ops.run import provision_step

        self.ui.progress(f"campaign {self.state.name}: provisioning its fleet")
        provision_step(self.fleet, self.plan.inputs, self.ui, self.plan.overrides)
        fstate = self.fleet.load()
        per_gpu = self.plan.inputs.experiment.placement.processes_per_gpu
        fit = capacity(fstate, per_gpu)
        want = self.plan.spec.parallel
        self.state.parallel = fit if want == "auto" else min(int(want), fit)
        if want != "auto" and int(want) > fit:
            self.ui.notice(f"parallel: {want} would over-subscribe the fleet: {fit} run(s) at once", "warning")
        port = self.plan.inputs.experiment.server.fixed_port
        if port is not None and self.state.parallel > 1:  # two servers cannot listen on one port
            self.ui.notice(f"server.port is fixed ({port}): one run at a time (`server.port: auto` packs them)",
                           "warning")
            self.state.parallel = 1
        self.state.fleet = str(fstate.phase)
        self.sweeps.save(self.state)

    def _loop(self, todo: list[str]) -> Any:
        """Start, follow and finish the runs; returns the budget's trip that stopped it, else None."""
        from fedctl.budget import check_guards

        queue = list(todo)
        self._frame()
        while queue or self.inflight:
            fstate = self.fleet.load()
            trip = check_guards(fstate.experiment.budget, fstate, self.clock(), None, None) \
                if self.plan.spec.budget.active else None
            if trip is not None and trip.reason in ("max_cost", "max_hours"):
                self.ui.notice(f"campaign budget: {trip.message}; stopping", "error")
                return trip
            while queue and len(self.inflight) < (self.state.parallel or 1):
                self._start(queue.pop(0))
            for key in list(self.inflight):
                self._probe(key)
            self._frame()
            if self.inflight or queue:
                time.sleep(self.interval)  # the poll interval, as fedctl run's follower
        return None

    # -- one run -------------------------------------------------------------------------------
    def _start(self, key: str) -> None:
        from fedctl.ops.start import start
        from fedctl.ops.status import StatusObserver
        from fedctl.state import new_run_id

        planned = self.planned[key]
        run_id = new_run_id(self.clock)
        fstate = self.fleet.load()
        fstate.previous_runs.append(run_id)  # intent: the fleet's teardown finds its processes
        self.fleet.save(fstate)
        store = self.sweeps.run_store(key)
        store.session = self.session  # the campaign's connections, one per host
        config_path = self.plan.spec.base or self.plan.spec.path
        st = run_state_for(fstate, run_id, config_path)
        merge_owned(self.fleet, st, intended=True)  # and its run dirs, before they are made
        store.save(st)
        journal = FleetJournal(self.fleet, st)
        old = self.state.runs[key]
        self.state.set(key, self.clock, status="running", run_id=run_id, started_at=self.clock(),
                       finished_at=None, error=None, results_dir=None, attempts=old.attempts + 1)
        self.state.progress[key] = {"round": 0, "rounds": planned.experiment.rounds, "accuracy": None}
        self.sweeps.save(self.state)
        self.ui.progress(f"starting run {key} ({run_id})")
        self.inflight[key] = (store, None)
        journal.attach()
        try:
            with store.lock():
                report = start(store, st, planned.experiment, progress=self.ui.progress)
        except FedctlError as exc:
            self._finish(key, "failed", str(exc))
            return
        finally:
            journal.detach()
        if not report.ok:
            self._finish(key, "failed", store.load().error or "start failed")
            return
        self.inflight[key] = (store, StatusObserver(store.load()))

    def _probe(self, key: str) -> None:
        from fedctl.ops.follow import GuardInputs, guard_tripped

        store, observer = self.inflight[key]
        st = store.load()
        try:
            status = observer.observe(store, st)
        except FedctlError as exc:  # a host gone: the run cannot be followed
            self._finish(key, "failed", f"lost the run: {exc}")
            return
        self.state.progress[key] = {"round": status.round, "rounds": status.rounds, "accuracy": status.accuracy}
        if status.phase not in LIVE_PHASES:
            ok = status.phase == Phase.FINISHED
            why = None if ok else (store.load().error or (status.summary or {}).get("reason") or str(status.phase))
            self._finish(key, "finished" if ok else "failed", why)
            return
        trip = guard_tripped(store, st, GuardInputs.of_status(status))
        if trip is not None and trip.reason in ("max_cost", "max_hours"):
            # the campaign's budget (the runs carry it): not the run's fault, it runs again later
            self._finish(key, "interrupted", f"stopped by the campaign's budget: {trip.message}")
        elif trip is not None:
            self._finish(key, "failed", f"stopped by a guard: {trip.message}")

    def _finish(self, key: str, status: str, error: str | None = None) -> None:
        """Stop the run's processes, collect its results into its folder, record its status."""
        from fedctl.ops.collect import collect_raw
        from fedctl.ops.stop import stop

        store, _ = self.inflight.pop(key)
        dest = self.sweeps.run_results(key)
        st = store.load()
        stopped = False
        try:
            with store.lock():
                st = store.load()
                stopped = stop(store, st, grace_s=self.grace_s, progress=self.ui.progress).ok
                if dest.exists() and self.sweeps.results in dest.parents:  # an earlier attempt's
                    shutil.rmtree(dest)
                collect_raw(store, st, dest=dest, progress=self.ui.progress)
                store.save(st)
        except FedctlError as exc:
            error = error or f"could not stop and collect: {exc}"
            self.ui.notice(f"run {key}: {exc}", "error")
        self._report(dest, st)
        merge_owned(self.fleet, st)
        if stopped:  # verified stopped: the fleet's teardown need not look for it any more
            fstate = self.fleet.load()
            fstate.previous_runs = [r for r in fstate.previous_runs if r != st.run_id]
            self.fleet.save(fstate)
        self.state.progress.pop(key, None)
        self.state.set(key, self.clock, status=status, error=error, finished_at=self.clock(),
                       results_dir=str(dest) if dest.exists() else None)
        self.sweeps.save(self.state)
        if status == "failed":
            self.ui.notice(f"run {key} failed: {error}", "error")
        self._frame([key])

    def _report(self, dest: Any, st: Any) -> None:
        """summary.md and plots of one run (as a teardown makes them); a failure is said, not fatal."""
        if not (dest / "metrics.jsonl").exists():
            return
        try:
            from fedctl import results

            results.build_report(dest, st)
        except ImportError:
            return
        except Exception as exc:  # noqa: BLE001 - a plot failure must not stop the campaign
            self.ui.notice(f"results report of {dest.name} incomplete: {type(exc).__name__}: {exc}", "warning")

    def _stop_inflight(self, status: str) -> None:
        for key in list(self.inflight):
            self._finish(key, status, "stopped with the campaign" if status == "interrupted" else "fedctl failed")

    # -- the fleet -----------------------------------------------------------------------------
    def _clean_leftover_fleet(self) -> None:
        """A fleet a killed fedctl left (not torn down): tear it down first, so nothing of the
        earlier invocation keeps running or billing (its runs are ``interrupted`` already)."""
        try:
            fstate = self.fleet.load_or_none()
        except StateError:
            return
        if fstate is not None and fstate.phase != Phase.TORN_DOWN:
            self.ui.notice(f"campaign {self.state.name}: tearing down the fleet a stopped fedctl left", "warning")
            self._teardown()

    def _teardown(self) -> None:
        from fedctl.ops.run import teardown_step

        if not self.fleet.exists():
            return
        try:
            teardown_step(self.fleet, self.ui, grace_s=self.grace_s)
        finally:
            self.state.fleet = str(self.fleet.load().phase)
            self.sweeps.save(self.state)

    # -- outputs -------------------------------------------------------------------------------
    def _frame(self, changed: Sequence[str] = ()) -> None:
        from fedctl.sweep.view import campaign_view

        self.sweeps.save(self.state)
        self.ui.frame(campaign_view(self.state, self.fleet.load_or_none(), self.clock()), changed)

    def write_outputs(self) -> Any:
        """The paper's tables and curves (W2's ``fedctl.sweep.tables``) over this sweep file's runs."""
        from fedctl.sweep.tables import write_sweep_outputs

        spec = self.plan.spec
        runs = [self.state.runs[k] for k in self.planned]
        return write_sweep_outputs(self.sweeps.results, spec.name, spec.grid_keys, runs, spec.target_accuracy,
                                   mlflow=self.mlflow)


def _counts_text(state: CampaignState) -> str:
    return ", ".join(f"{n} {s}" for s, n in state.counts().items() if n)


def run_campaign(sweeps: SweepStore, plan: CampaignPlan, ui: SweepUI, only: Sequence[str] = (),
                 rerun_failed: bool = False, interval: float = 2.0, mlflow: str | None = None) -> CampaignOutcome:
    """The library call behind ``fedctl sweep``: see ``Campaign``. ``mlflow``: log the runs to that
    MLflow tracking URI or folder ("" for ./mlruns) with the tables."""
    if mlflow is not None:  # a missing MLflow is said before the runs, not after them
        from fedctl.sweep.trackers import check_mlflow

        check_mlflow()
    return Campaign(sweeps, plan, ui, interval, mlflow=mlflow).run(parse_only(only), rerun_failed)


__all__ = ["Campaign", "CampaignOutcome", "QuietSweepUI", "SweepUI", "capacity", "reconcile", "run_campaign", "select"]
