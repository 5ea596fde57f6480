"""A campaign's plan: every run's experiment resolved and validated, the fleet's inputs, the cost.

Everything here happens before any host is touched: a grid value the payload does not know (or
refuses) is a ConfigError naming the sweep file and ``grid.<key>``, exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from fedctl.errors import ConfigError
from fedctl.sweep.records import SweepRun
from fedctl.sweep.spec import SweepSpec, value_override


@dataclass(frozen=True)
class PlannedRun:
    """One run with its resolved experiment and the fingerprint of what it means (its resolved
    config, budget aside): a sweep file changed under a finished run is told by it."""

    run: SweepRun
    experiment: Any  # fedctl.config.experiment.Experiment
    fingerprint: str


@dataclass(frozen=True)
class CampaignPlan:
    spec: SweepSpec
    runs: tuple[PlannedRun, ...]
    inputs: Any  # fedctl.ops.common.Inputs: the fleet's inventory, experiment and plan
    overrides: tuple[str, ...]  # the fleet's --set (the user's and the campaign's budget)


def campaign_sets(spec: SweepSpec) -> list[str]:
    """What the campaign sets on every run: its budget (measured from the fleet's provision: the
    run's hosts carry the fleet's acquisition times) and a teardown at the end (the campaign's)."""
    out = ["on_finish=teardown"]
    for key in ("max_cost", "max_hours"):
        value = getattr(spec.budget, key)
        out.append(f"budget.{key}={'null' if value is None else value}")
    return out


def check_user_sets(spec: SweepSpec, sets: Sequence[str]) -> None:
    """A ``--set`` of a grid key, of ``seed`` (with seeds) or of the budget would make every run
    the same or contradict the campaign: refused (exit 2)."""
    from fedctl.config.overrides import parse_overrides

    for ov in parse_overrides(sets):
        d = ov.dotted
        for key in spec.grid_keys:
            if d == key or d.startswith(key + ".") or key.startswith(d + "."):
                raise ConfigError(ov.source, d, f"sets grid key {key} of {spec.path} for every run",
                                  "keys the grid does not vary")
        if d == "seed" and spec.seeds:
            raise ConfigError(ov.source, d, f"{spec.path} gives the seeds", "keys the grid does not vary")
        if d.split(".")[0] == "budget" and d not in ("budget.idle_minutes",):
            raise ConfigError(ov.source, d, f"the campaign's budget is {spec.path}'s budget key",
                              "budget.idle_minutes (each run's), keys the grid does not vary")


def plan_campaign(spec: SweepSpec, inventory: str | None, sets: Sequence[str], store: Any,
                  cpu_count: int | None = None) -> CampaignPlan:
    """Validate every run and the fleet; ``store`` is the fleet's StateStore (its folder is where
    the local provider's hosts live). Raises ConfigError / PlanError before anything starts."""
    from fedctl.config.experiment import load_experiment
    from fedctl.ops.common import load_inputs

    sets = list(sets)
    check_user_sets(spec, sets)
    fixed = campaign_sets(spec)
    planned = []
    by_config: dict[tuple, Any] = {}
    for run in spec.runs():
        exp = by_config.get(run.params)
        if exp is None:  # one load per configuration: seeds do not change what is valid
            grid_sets = [value_override(k, v) for k, v in run.params]
            exp = by_config[run.params] = _load(spec, run, sets + grid_sets + fixed, load_experiment)
        if run.seed is not None:
            exp = dataclasses.replace(exp, seed=run.seed)
        planned.append(PlannedRun(run, exp, fingerprint(exp)))
    fleet_sets = tuple(sets + fixed)
    inputs = load_inputs(inventory, spec.base, fleet_sets, clients=spec.clients, rounds=spec.rounds,
                         store=store, cpu_count=cpu_count)
    return CampaignPlan(spec, tuple(planned), inputs, fleet_sets)


def _load(spec: SweepSpec, run: SweepRun, overrides: list[str], load_experiment: Any) -> Any:
    """The run's experiment; an error a grid value caused names the sweep file and the grid key."""
    from fedctl.config.overrides import parse_override

    try:
        return load_experiment(spec.base, overrides, clients=spec.clients, rounds=spec.rounds, cwd=spec.folder)
    except ConfigError as exc:
        for key, value in run.params:
            if exc.file == parse_override(value_override(key, value)).source:
                where = exc.key_path if exc.key_path and exc.key_path != key else None
                problem = f"value {json.dumps(value)}" + (f" ({where})" if where else "") + f": {exc.problem}"
                raise ConfigError(spec.path, f"grid.{key}", problem, exc.valid) from None
        raise


def fingerprint(experiment: Any) -> str:
    """What a run means: its resolved config without the campaign's budget and on_finish."""
    cfg = experiment.run_config().rendered()
    for key in ("budget", "on_finish", "name"):
        cfg.pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def estimate_campaign(plan: CampaignPlan, parallel: int | None = None) -> dict[str, Any]:
    """The campaign's cost estimate: each run's (``fedctl.cost.estimate`` on the fleet's plan with
    its rounds) one after the other, and packed ``parallel`` at a time when that is known."""
    import math

    from fedctl.cost import estimate

    ests = [estimate(plan.inputs.plan, p.experiment.rounds) for p in plan.runs]
    serial_h = sum(e.hours for e in ests)
    per_hour = ests[0].per_hour if ests else {}
    out: dict[str, Any] = {"runs": len(ests), "per_hour": per_hour, "serial_hours": serial_h,
                           "serial_total": {c: v * serial_h for c, v in per_hour.items()},
                           "seconds_per_round": ests[0].seconds_per_round if ests else None}
    if parallel and parallel > 1 and ests:
        packed_h = serial_h / len(ests) * math.ceil(len(ests) / parallel)  # mean run x waves
        out.update(parallel=parallel, packed_hours=packed_h,
                   packed_total={c: v * packed_h for c, v in per_hour.items()})
    return out
