"""Which run and where its results are: the current or an archived state, a results folder.

``fedctl results`` and ``fedctl cost`` both take ``--run ID``; they find the run here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedctl.contract import collected_metrics
from fedctl.state import RunState, StateStore


def load_run_state(store: StateStore, run_id: str | None) -> RunState:
    """The current run's state, or an archived run's (``.fedctl/runs/<id>/state.json``)."""
    from fedctl.errors import StateError

    if not run_id:
        return store.load()
    current = store.load_or_none()
    if current is not None and current.run_id == run_id:
        return current
    path = store.root / "runs" / run_id / "state.json"
    try:
        return RunState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        runs = sorted(p.name for p in (store.root / "runs").glob("*") if p.is_dir())
        raise StateError(f"no run {run_id!r} in {store.root}",
                         hint=f"runs kept there: {', '.join(runs[-10:]) or 'none'}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"{path} is unreadable: {exc}") from None


def results_root(store: StateStore) -> Path:
    """``results/`` next to the ``.fedctl`` folder: one folder per run, ``compare.png``."""
    return store.root.parent / "results"


def find_collected_metrics(state: Any, root: Path) -> Path | None:
    """The run's metrics.jsonl already collected here (its results_dir, else ``root/<run-id>``), if any."""
    folders = [Path(state.results_dir)] if state.results_dir else []
    folders.append(root / state.run_id)
    for folder in folders:
        path = collected_metrics(folder, state)
        if path.is_file():
            return path
    return None


def resolve_run(arg: str, root: Path = Path("results")) -> Path:
    """A run argument: a folder holding metrics.jsonl, or a run id under ``root``."""
    from fedctl.errors import UsageError

    for cand in (Path(arg), root / arg):
        if collected_metrics(cand).is_file():
            return cand
    raise UsageError(f"{arg}: no {collected_metrics(arg).name} there nor in {root / arg}",
                     hint="pass a run id from results/ or a results folder (run `fedctl results` first)")
