"""The sweep file: a campaign of runs, every combination of ``grid`` values once per seed.

    name: strategies-vs-skew
    base: fedctl.yaml            # optional: the experiment every run starts from (relative to this file;
                                 # omitted: the fedctl.yaml beside this file if there is one, else defaults)
    clients: 10                  # optional: every run's --clients (else the base's)
    rounds: 100                  # optional: every run's --rounds (else the base's)
    grid:                        # dotted --set keys -> the values to try
      strategy.name: [fedavg, fedprox, scaffold]
      data.alpha: [0.1, 0.5, 1.0]
    seeds: [1, 2, 3]             # optional: each combination once per seed (else once, with the base's seed)
    target_accuracy: 0.8         # optional: rounds and time to reach it, in the table
    parallel: auto               # auto (as many as the fleet holds) or N (at most N, never more than fit)
    budget: {max_cost: 20, max_hours: 6}   # the whole campaign's

Validated like every fedctl file: unknown keys are refused, each error names the file, the key path
and what is valid. What the grid's values mean to the payload is checked by loading every run's
experiment (``fedctl.sweep.plan``), before anything starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedctl.config.loader import (
    check_int,
    check_keys,
    check_number,
    check_str,
    load_yaml,
    preview,
    require_mapping,
)
from fedctl.config.overrides import KEY_PART
from fedctl.errors import ConfigError
from fedctl.model import name_problem
from fedctl.runtypes import Budget  # the campaign's: the fleet's cost and hours, provision to teardown
from fedctl.sweep.records import SweepRun

SWEEP_KEYS = ("name", "base", "clients", "rounds", "grid", "seeds", "target_accuracy", "parallel", "budget")
BUDGET_KEYS = ("max_cost", "max_hours")
#: A campaign is bounded: 1000 runs of even one minute each is most of a day of a fleet.
MAX_RUNS = 1000
#: What one fleet fixes for all its runs (the plan, the placement, the server) and what the
#: campaign owns (seed, budget, on_finish, payload): a grid over them cannot share one fleet.
FIXED_KEYS = ("clients", "placement", "server", "payload", "seed", "budget", "on_finish", "name")
MAX_KEY_CHARS = 100


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. ``grid`` keeps the file's order; ``base`` is resolved (absolute)."""

    path: str
    name: str
    base: str | None
    clients: int | None
    rounds: int | None
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...] | None
    target_accuracy: float | None
    parallel: int | str
    budget: Budget

    @property
    def folder(self) -> Path:
        """The sweep file's folder: relative paths (base, data files) are read from there."""
        return Path(self.path).absolute().parent

    @property
    def grid_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)

    def runs(self) -> list[SweepRun]:
        """Every run of the campaign, configuration-major, seeds innermost, each with a stable key."""
        combos = itertools.product(*(values for _, values in self.grid)) if self.grid else [()]
        out = []
        for combo in combos:
            params = tuple(zip(self.grid_keys, combo))
            for seed in self.seeds or (None,):
                out.append(SweepRun(key=run_key(params, seed), params=params, seed=seed))
        return out


def run_key(params: tuple[tuple[str, Any], ...], seed: int | None) -> str:
    """A run's stable name (its state and results folder): the grid's values and the seed, e.g.
    ``strategy.name-fedavg_data.alpha-0.1_seed-1``. Characters a folder name cannot hold become
    ``-`` and a short hash of the exact values is added then (or when the name is too long), so two
    runs never share a key."""
    parts = [f"{k}-{_value_text(v)}" for k, v in params]
    if seed is not None:
        parts.append(f"seed-{seed}")
    raw = "_".join(parts) or "run"
    key = re.sub(r"[^A-Za-z0-9._-]", "-", raw).replace("..", "-.")
    if key != raw or len(key) > MAX_KEY_CHARS or not key[0].isalnum():
        digest = hashlib.sha256(json.dumps([params, seed], default=str).encode()).hexdigest()[:8]
        key = f"r{key[:MAX_KEY_CHARS - 10]}-{digest}" if not key[0].isalnum() else f"{key[:MAX_KEY_CHARS - 9]}-{digest}"
    return key


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def value_override(key: str, value: Any) -> str:
    """``key=value`` in the form ``--set`` parses back to ``value`` (JSON is YAML flow)."""
    return f"{key}={json.dumps(value)}"


def load_sweep(path: str) -> SweepSpec:
    """Load and validate a sweep file (the grid's meaning to the payload is checked later, by
    loading each run's experiment: ``fedctl.sweep.plan.plan_campaign``)."""
    file = str(path)
    raw = load_yaml(Path(path).expanduser(), name=file)
    check_keys(file, (), raw, SWEEP_KEYS)
    if "name" not in raw:
        raise ConfigError(file, "name", "is required: it names the campaign's state and results folders")
    name = check_str(file, ("name",), raw["name"])
    problem = name_problem(name)
    if problem:
        raise ConfigError(file, "name", problem)
    folder = Path(path).expanduser().absolute().parent
    base = raw.get("base")
    if base is not None:
        base_path = Path(check_str(file, ("base",), base)).expanduser()
        base_path = base_path if base_path.is_absolute() else folder / base_path
        if not base_path.is_file():
            raise ConfigError(file, "base", f"{preview(base)} is not a file (read from {folder})",
                              "an experiment file such as fedctl.yaml, relative to the sweep file")
        base = str(base_path)
    elif (folder / "fedctl.yaml").is_file():  # as `fedctl run` reads ./fedctl.yaml: the one beside the sweep
        base = str(folder / "fedctl.yaml")
    clients = None if raw.get("clients") is None else check_int(file, ("clients",), raw["clients"], 1, 100_000)
    rounds = None if raw.get("rounds") is None else check_int(file, ("rounds",), raw["rounds"], 1, 1_000_000)
    grid = _grid(file, raw.get("grid"))
    seeds = None
    if raw.get("seeds") is not None:
        seeds_raw = raw["seeds"]
        if not isinstance(seeds_raw, list) or not seeds_raw:
            raise ConfigError(file, "seeds", f"must be a non-empty list of integers, not {preview(seeds_raw)}")
        seeds = tuple(check_int(file, ("seeds", i), s, 0, 2**32 - 1) for i, s in enumerate(seeds_raw))
        if len(set(seeds)) != len(seeds):
            raise ConfigError(file, "seeds", f"{preview(seeds_raw)} repeats a seed: each seed once")
    target = raw.get("target_accuracy")
    if target is not None:
        target = check_number(file, ("target_accuracy",), target, 0.0)
        if target > 1.0:
            raise ConfigError(file, "target_accuracy", f"must be a fraction, got {target:g}", "0 < x <= 1")
    parallel = raw.get("parallel", "auto")
    if parallel != "auto":
        if isinstance(parallel, str):
            raise ConfigError(file, "parallel", f"{preview(parallel)} is not valid", ["auto", "an integer >= 1"])
        parallel = check_int(file, ("parallel",), parallel, 1, MAX_RUNS)
    bd = require_mapping(file, ("budget",), raw.get("budget"))
    check_keys(file, ("budget",), bd, BUDGET_KEYS)
    budget = Budget(**{k: None if bd.get(k) is None else check_number(file, ("budget", k), bd[k], 0.0, True)
                       for k in BUDGET_KEYS})
    n = len(seeds or (None,))
    for _, values in grid:
        n *= len(values)
    if n > MAX_RUNS:
        raise ConfigError(file, "grid", f"makes {n} runs; a campaign holds at most {MAX_RUNS}",
                          "fewer values or seeds, or several campaigns")
    return SweepSpec(file, name, base, clients, rounds, grid, seeds, target, parallel, budget)


def _grid(file: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    grid = require_mapping(file, ("grid",), raw)
    out = []
    for key, values in grid.items():
        parts = key.split(".")
        if not all(p and KEY_PART.fullmatch(p) for p in parts):
            raise ConfigError(file, ("grid", key), "is not a key path: dot-separated names of letters, digits, "
                              "'_' or '-', as after --set")
        if parts[0] in FIXED_KEYS:
            why = "seeds" if parts[0] == "seed" else "the campaign's budget" if parts[0] == "budget" else \
                "one fleet's plan (provisioned once for every run)"
            raise ConfigError(file, ("grid", key), f"{parts[0]} cannot vary between runs: it is {why}",
                              "payload keys, rounds")
        if not isinstance(values, list) or not values:
            raise ConfigError(file, ("grid", key), f"must be a non-empty list of values, not {preview(values)}")
        seen: list[str] = []
        for i, v in enumerate(values):
            canon = json.dumps(v, sort_keys=True, default=str)
            if canon in seen:
                raise ConfigError(file, ("grid", key, i), f"{preview(v)} is listed twice")
            seen.append(canon)
        out.append((key, tuple(values)))
    return tuple(out)
