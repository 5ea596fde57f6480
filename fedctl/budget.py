"""Budget guards: stop a run before it costs more than ``max_cost``, runs longer than ``max_hours`` or
sits idle for ``idle_minutes``.

Two enforcers apply the same rules:
- fedctl's own loop (``run``/``watch``) calls ``check_guards`` every few seconds and, on a trip,
  collects results and tears the run down;
- the watchdog (``fedctl/watchdog.py``), started on every host of the run, applies them there, so the
  budget holds with the researcher's laptop closed. Its inputs are ``watchdog_spec``.

Limits are applied with a safety margin so that a run stops *before* the limit, not after: the watchdog
trips ``poll_s + grace_s`` (+ the power-off window) early, fedctl ``DEFAULT_MARGIN_S`` early, so fedctl,
which can collect results, normally acts first. Margins are clamped to a fraction of the limit so that a
guard of a few seconds (tests) still means something.

Hours are billing hours: measured from the first host acquisition (the cost ledger's clock), not from
``fedctl start``, because that is what the provider charges for.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from fedctl.contract import manifest_of, run_files
from fedctl.cost import allocation_groups, in_allocation, priced_currencies, run_cost
from fedctl.errors import UsageError
# the one Budget type (validated by the config layer, stored in the state); re-exported here
from fedctl.runtypes import Budget
from fedctl.state import RunState

#: fedctl's own loop trips this many seconds before a limit (clamped to FEDCTL_MARGIN_FRACTION of it)
DEFAULT_MARGIN_S = 90.0
FEDCTL_MARGIN_FRACTION = 0.2
#: the watchdog's margin is at most this fraction of the limit (smaller than fedctl's: fedctl goes first)
WATCHDOG_MARGIN_FRACTION = 0.1
#: idle means GPU utilisation under this many percent (where there is a GPU) ...
IDLE_GPU_PERCENT = 5.0
#: ... and no round completed for ``idle_minutes``
WATCHDOG_POLL_S = 5.0
WATCHDOG_GRACE_S = 10.0  # TERM -> KILL
#: with on_finish: poweroff, the watchdog waits this long after stopping the processes before powering
#: off, so a running fedctl can still copy the results (it is part of the margin: billing still stops
#: before the limit)
POWEROFF_DELAY_S = 60.0
#: with on_finish: poweroff and a run that finished on its own, the watchdog powers the host off after
#: this long unless fedctl's teardown stopped it first (laptop closed: billing must still stop)
FINISH_WAIT_S = 900.0
DEFAULT_POWEROFF_COMMAND = "sudo -n poweroff || poweroff"
#: tests (and cautious users) replace the power-off command for every watchdog fedctl starts
POWEROFF_ENV = "FEDCTL_POWEROFF_COMMAND"

GUARD_FILE = "guard.json"
WATCHDOG_SPEC_FILE = "watchdog.json"
WATCHDOG_PID_FILE = "watchdog.pid"
WATCHDOG_LOG_FILE = "watchdog.log"


@dataclass(frozen=True)
class GuardTrip:
    """Why a run must stop now. ``reason`` is max_cost | max_hours | idle."""

    reason: str
    message: str
    time: float
    value: float  # the measured quantity (cost, hours, idle minutes)
    limit: float
    by: str = "fedctl"  # fedctl | watchdog

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        """What goes into ``<run_dir>/guard.json``."""
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GuardTrip":
        return cls(
            reason=str(d.get("reason", "?")),
            message=str(d.get("message", "")),
            time=float(d.get("time") or 0.0),
            value=float(d.get("value") or 0.0),
            limit=float(d.get("limit") or 0.0),
            by=str(d.get("by", "watchdog")),
        )


def clamp_margin(margin_s: float, limit_s: float, fraction: float) -> float:
    """The margin, but never more than ``fraction`` of the limit (both in seconds)."""
    return max(0.0, min(margin_s, fraction * limit_s))


def billing_start(state: RunState) -> float | None:
    """When the first host was acquired (the ledger's start); falls back to started/created time."""
    starts = [h.acquired_at for h in state.hosts if h.acquired_at is not None]
    if starts:
        return min(starts)
    return state.started_at if state.started_at is not None else state.created_at


def budget_currency(state: RunState) -> str:
    """The one currency a ``max_cost`` is in; mixed currencies cannot be compared with one number."""
    cur = priced_currencies(state)
    if len(cur) > 1:
        raise UsageError(
            f"budget.max_cost cannot be checked: hosts are priced in {', '.join(cur)}",
            hint="price every host of the inventory in one currency, or use budget.max_hours",
        )
    return cur[0] if cur else "USD"


def budget_notes(plan_or_state: Any, budget: Budget) -> list[str]:
    """What the budget cannot guard on these hosts, to say once before the run (provision, start):
    ``max_cost`` counts money only where there is a price, so a batch allocation without one (its
    node-hours are still counted) or a host without ``price_per_hour`` is not held to it."""
    if budget.max_cost is None:
        return []
    notes = []
    for g in allocation_groups(plan_or_state.hosts):
        if g.price_per_hour is None:
            notes.append(f"budget.max_cost is not applied to {g.name} ({g.nodes} node(s)): the inventory gives no "
                         "slurm.price_per_node_hour or slurm.price_per_gpu_hour, so fedctl counts its node-hours "
                         "but no money (budget.max_hours and the job's time limit still end it)")
    plain = [info for info in (getattr(h, "info", None) or h.host for h in plan_or_state.hosts if not in_allocation(h))
             if info.price_per_hour is None]
    if plain:
        names = ", ".join(info.name for info in plain)
        notes.append(f"budget.max_cost does not count {names}: no price_per_hour in the inventory")
    return notes


def check_guards(
    budget: Budget,
    state: RunState,
    now: float,
    last_round_end: float | None,
    gpu_util: float | None,
    margin_s: float = DEFAULT_MARGIN_S,
    last_status: float | None = None,
) -> GuardTrip | None:
    """The first guard that trips at ``now``, or None. Pure: no I/O, no clock of its own.

    ``last_round_end``: ``end`` of the latest completed round (``contract.MetricsLog.last_round_end``),
    None before the first; idle is then measured from ``state.started_at``. ``gpu_util``: the highest
    GPU utilisation (percent) across the run's hosts, None where there is no GPU. ``margin_s``: trip
    this many seconds early (clamped to 20% of the limit; for max_cost converted with the fleet's rate
    per hour). ``last_status``: the ``time`` of the server's status.json (``contract.ServerStatus``),
    which the server rewrites at a round's start and when a client reports progress: the watchdog on
    the server host cannot see the clients' GPUs and counts that instead, so fedctl counts it too.

    Idle: for ``idle_minutes`` no round ended, status.json was not rewritten, and no GPU was busy.
    """
    start = billing_start(state)
    if budget.max_hours is not None and start is not None:
        limit_s = budget.max_hours * 3600.0
        elapsed = max(0.0, now - start)
        if elapsed + clamp_margin(margin_s, limit_s, FEDCTL_MARGIN_FRACTION) >= limit_s:
            return GuardTrip(
                "max_hours",
                f"the run has held its hosts for {elapsed / 3600:.3f} h; budget.max_hours is {budget.max_hours:g}",
                now, elapsed / 3600.0, budget.max_hours,
            )
    if budget.max_cost is not None:
        currency = budget_currency(state)
        rc = run_cost(state, now)
        spent = rc.total.get(currency, 0.0)
        rate = rc.per_hour.get(currency, 0.0)
        limit_s = budget.max_cost / rate * 3600.0 if rate > 0 else 0.0
        ahead = rate * clamp_margin(margin_s, limit_s, FEDCTL_MARGIN_FRACTION) / 3600.0
        if spent + ahead >= budget.max_cost:
            return GuardTrip(
                "max_cost",
                f"the run has cost {spent:.4f} {currency}; budget.max_cost is {budget.max_cost:g} {currency}",
                now, spent, budget.max_cost,
            )
    if budget.idle_minutes is not None:
        since = last_round_end if last_round_end is not None else (state.started_at or start)
        if last_status is not None:
            since = last_status if since is None else max(since, last_status)
        if since is not None:
            idle_s = max(0.0, now - since)
            gpu_idle = gpu_util is None or gpu_util < IDLE_GPU_PERCENT
            if idle_s >= budget.idle_minutes * 60.0 and gpu_idle:
                gpu = "" if gpu_util is None else f", GPU utilisation {gpu_util:.0f}%"
                return GuardTrip(
                    "idle",
                    f"no round completed and no client progress for {idle_s / 60:.1f} min{gpu}; "
                    f"budget.idle_minutes is {budget.idle_minutes:g}",
                    now, idle_s / 60.0, budget.idle_minutes,
                )
    return None


# -- the watchdog's inputs -------------------------------------------------------------------------------
def fleet_rate(state: RunState, now: float) -> tuple[float, str]:
    """What the hosts still held cost per hour together, in the budget's currency."""
    currency = budget_currency(state)
    return run_cost(state, now).per_hour.get(currency, 0.0), currency


def watchdog_spec(
    state: RunState,
    host_record: Any,
    now: float,
    budget: Budget | None = None,
    run_dir: str | None = None,
    poweroff_command: str | None = None,
    poll_s: float = WATCHDOG_POLL_S,
    grace_s: float = WATCHDOG_GRACE_S,
) -> dict[str, Any]:
    """The JSON the watchdog on ``host_record`` reads (write it to ``<run_dir>/watchdog.json``).

    Times in the spec are *relative* (seconds already billed at ``now``), so the host's clock need not
    agree with this machine's: the watchdog counts from its own start with a monotonic clock.
    ``budget`` None: ``state.experiment.budget``. ``run_dir`` None: ``deploy.remote_run_dir``.
    ``poweroff_command`` None: ``$FEDCTL_POWEROFF_COMMAND`` if set, else ``sudo -n poweroff || poweroff``
    (it only ever runs with ``on_finish: poweroff``).
    Only the server host gets the metrics and status paths (the idle guard needs them).
    """
    if budget is None:
        budget = state.experiment.budget
    if run_dir is None:
        from fedctl.deploy import remote_run_dir

        run_dir = remote_run_dir(host_record, state.run_id)
    run_dir = run_dir.rstrip("/")
    start = billing_start(state)
    rate, currency = fleet_rate(state, now) if budget.max_cost is not None else (0.0, "USD")
    spent = run_cost(state, now).total.get(currency, 0.0) if budget.max_cost is not None else 0.0
    server_host = state.server.host
    is_server = host_record.name == server_host if server_host else "server" in tuple(host_record.info.roles)
    pidfiles = sorted({p.pidfile for p in host_record.processes if p.pidfile})
    if not pidfiles:  # the processes may not be recorded yet: the contract's names
        pidfiles = [f"{run_dir}/server.pid"] if is_server else []
        pidfiles += [f"{run_dir}/client-*.pid"]
    on_finish = state.experiment.on_finish  # validated by the config layer (ON_FINISH)
    # where the payload's manifest puts metrics.jsonl (the idle guard reads it)
    files = run_files(run_dir, manifest_of(state), host_record.workdir, state.run_id) if is_server else None
    return {
        "version": 1,
        "run_id": state.run_id,
        "host": host_record.name,
        "run_dir": run_dir,
        "pidfiles": pidfiles,  # absolute; a "*" matches like a shell glob
        # a pid counts only when its command line names the run (guards against a reused pid)
        "match": f"runs/{state.run_id}",
        "elapsed_s": max(0.0, now - start) if start is not None else 0.0,
        "spent": spent,
        "rate_per_hour": rate,
        "currency": currency,
        "max_hours": budget.max_hours,
        "max_cost": budget.max_cost,
        "idle_minutes": budget.idle_minutes if is_server else None,
        "idle_gpu_percent": IDLE_GPU_PERCENT,
        "metrics": files.metrics if files else None,
        "status": files.status if files else None,  # its time: the clients' progress (see watchdog.py)
        "on_finish": on_finish,
        "poweroff_command": poweroff_command or os.environ.get(POWEROFF_ENV) or DEFAULT_POWEROFF_COMMAND,
        "poweroff_delay_s": POWEROFF_DELAY_S if on_finish == "poweroff" else 0.0,
        "finish_wait_s": FINISH_WAIT_S,
        "poll_s": poll_s,
        "grace_s": grace_s,
        "margin_fraction": WATCHDOG_MARGIN_FRACTION,
        "startup_s": 120.0,  # no process ever seen after this long: nothing to guard, exit
        "guard_file": f"{run_dir}/{GUARD_FILE}",
    }


def watchdog_command(python: str, script_path: str, spec_path: str) -> str:
    """The shell command that runs the watchdog (give it to ``deploy.spawn_detached``)."""
    from fedctl.shell import join

    return join([python, script_path, "--spec", spec_path])


#: the lines of watchdog.py from the first mark to the second are replaced by the contract's readers
WATCHDOG_INLINE_BEGIN = "# fedctl-watchdog: begin inline fedctl/contract/metrics.py"
WATCHDOG_INLINE_END = "# fedctl-watchdog: end inline"


def watchdog_script() -> bytes:
    """The watchdog to ``put_bytes`` onto a host: ``fedctl/watchdog.py`` with the source of
    ``fedctl/contract/metrics.py`` and ``status.py`` in place of the lines that import them, so it
    reads metrics.jsonl and status.json with the contract's readers and still needs no fedctl there
    (stdlib only; any python >= 3.6). status.py's own imports from metrics.py are dropped: those
    names are defined just above it."""
    from pathlib import Path

    from fedctl.contract import metrics, status

    lines = (Path(__file__).parent / "watchdog.py").read_text().splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() in (WATCHDOG_INLINE_BEGIN, WATCHDOG_INLINE_END)]
    if len(marks) != 2 or lines[marks[0]].strip() != WATCHDOG_INLINE_BEGIN:
        raise RuntimeError(f"fedctl/watchdog.py must hold the lines {WATCHDOG_INLINE_BEGIN!r} and "
                           f"{WATCHDOG_INLINE_END!r}, in that order")
    status_lines = Path(status.__file__).read_text().splitlines(keepends=True)
    own = [line for line in status_lines if line.startswith(("from fedctl.", "import fedctl"))]
    if any(not line.startswith("from fedctl.contract.metrics import ") or "(" in line for line in own):
        raise RuntimeError("fedctl/contract/status.py may import from fedctl only names of metrics.py, "
                           "one 'from fedctl.contract.metrics import ...' line at a time (the watchdog inlines it)")
    inlined = ("# -- fedctl/contract/metrics.py, inlined by fedctl.budget.watchdog_script --\n"
               + Path(metrics.__file__).read_text() + "# -- end of fedctl/contract/metrics.py --\n"
               + "# -- fedctl/contract/status.py, inlined (its import from metrics.py dropped) --\n"
               + "".join(line for line in status_lines if line not in own)
               + "# -- end of fedctl/contract/status.py --\n")
    return "".join(lines[: marks[0]] + [inlined] + lines[marks[1] + 1:]).encode()


def parse_guard(text: str | bytes | None) -> GuardTrip | None:
    """A ``guard.json`` read back from a host (None when absent or unreadable)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return GuardTrip.from_dict(data) if isinstance(data, dict) else None
