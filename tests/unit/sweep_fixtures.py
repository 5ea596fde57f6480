"""Run results folders of a sweep, written line for line in the shapes the payloads write: the fedavg_tf
server's round and summary lines (sync and FedBuff, keys as in a real run's metrics.jsonl) and the flower
payload's (``flower_progress``: ``eval_accuracy`` picked as ``accuracy``; server.py's summary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from fedctl.sweep.records import SweepRun

T0 = 1_796_522_717.0
ROUND_S = 0.5  # each round takes this long, and starts 0.25 s after the previous one ended


def round_times(i: int, t0: float = T0) -> tuple[float, float]:
    start = t0 + (i - 1) * (ROUND_S + 0.25)
    return start, start + ROUND_S


def fedavg_tf_lines(accs: Sequence[float], t0: float = T0, strategy: str = "fedavg", clients: int = 2,
                    asynchronous: bool = False, summary: bool = True) -> list[dict[str, Any]]:
    """The fedavg_tf server's lines for a run whose global accuracy per round is ``accs``."""
    lines: list[dict[str, Any]] = []
    for i, acc in enumerate(accs, start=1):
        start, end = round_times(i, t0)
        ids = list(range(clients))
        line: dict[str, Any] = {
            "type": "round", "round": i, "rounds": len(accs), "start": start, "end": end, "sampled": ids,
            "reported": ids, "dropped": [], "rejected": 0,
            "clients": {str(c): {"examples": 144, "update_norm": 0.1741, "train_s": 0.0086, "simulated_delay_s": 0.0,
                                 "loss": 2.3 - 0.1 * i, "upload_bytes": 221352, "response_s": 0.0307} for c in ids},
            "loss": 2.0 / i, "accuracy": acc, "bytes_in": 221352 * clients, "bytes_out": 44257 * clients,
            "strategy": strategy,
        }
        if asynchronous:
            line["updates"] = [{"client": c, "version": i - 1, "staleness": 0, "examples": 144} for c in ids]
            line.update({"aggregated": clients, "staleness_min": 0, "staleness_mean": 0.0, "staleness_max": 0,
                         "in_flight": 0, "client_updates": clients * i, "dropped_stale": 0})
        lines.append(line)
    if summary:
        s: dict[str, Any] = {"type": "summary", "rounds_completed": len(accs), "final_accuracy": accs[-1],
                             "final_loss": 2.0 / len(accs), "best_accuracy": max(accs),
                             "wall_s": round_times(len(accs), t0)[1] - t0, "status": "finished", "reason": None}
        if asynchronous:
            s.update({"client_updates": clients * len(accs), "dropped_stale": 0})
        lines.append(s)
    return lines


def flower_lines(accs: Sequence[float], t0: float = T0) -> list[dict[str, Any]]:
    """The flower payload's lines (no per-client data; the clients' evaluation as ``accuracy``)."""
    lines: list[dict[str, Any]] = []
    for i, acc in enumerate(accs, start=1):
        start, end = round_times(i, t0)
        lines.append({"type": "round", "round": i, "rounds": len(accs), "start": start, "end": end, "sampled": [],
                      "reported": [], "dropped": [], "clients": {}, "strategy": "flower", "clients_sampled": 2,
                      "clients_available": 2, "clients_reported": 2, "client_failures": 0,
                      "eval_clients_reported": 2, "eval_client_failures": 0, "train_train_loss": 1.0 / i,
                      "eval_eval_loss": 1.1 / i, "eval_eval_accuracy": acc, "accuracy": acc, "loss": 1.1 / i})
    lines.append({"type": "summary", "rounds_completed": len(accs), "final_accuracy": accs[-1],
                  "final_loss": 1.1 / len(accs), "best_accuracy": max(accs), "wall_s": 12.5, "status": "finished",
                  "reason": None, "flower_run_id": 42})
    return lines


def write_run(folder: Path, lines: Sequence[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


GRID = ("strategy.name", "sampling.min_clients")
STRATEGIES = ("fedavg", "fedprox")
MIN_CLIENTS = (2, 3)
SEEDS = (1, 2, 3)
TARGET = 0.6
FAILED_KEY = "fedprox-3-s2"


def accuracies(strategy: str, mc: int, seed: int, rounds: int = 6) -> list[float]:
    """A different, not monotone accuracy curve for every configuration and seed."""
    fedprox = strategy == "fedprox"
    speed = 0.04 + 0.02 * fedprox + 0.01 * (mc == 3) + 0.008 * seed * (1 + 0.5 * (mc == 3) + 0.25 * fedprox)
    return [round(min(0.97, 0.2 + speed * r + (0.03 if r == 4 else 0.0) - 0.004 * seed * (r == rounds)), 6)
            for r in range(1, rounds + 1)]


def grid_runs(root: Path) -> list[SweepRun]:
    """A 2x2 grid x 3 seeds; run ``FAILED_KEY`` failed after 3 rounds (its partial metrics are there)."""
    runs = []
    for strategy in STRATEGIES:
        for mc in MIN_CLIENTS:
            for seed in SEEDS:
                key = f"{strategy}-{mc}-s{seed}"
                accs = accuracies(strategy, mc, seed)
                if key == FAILED_KEY:
                    folder = write_run(root / key, fedavg_tf_lines(accs[:3], strategy=strategy, summary=False))
                    runs.append(SweepRun(key, (("strategy.name", strategy), ("sampling.min_clients", mc)), seed,
                                         "failed", f"run-{key}", str(folder), "the server exited with 1"))
                    continue
                folder = write_run(root / key, fedavg_tf_lines(accs, t0=T0 + 100 * seed, strategy=strategy))
                runs.append(SweepRun(key, (("strategy.name", strategy), ("sampling.min_clients", mc)), seed,
                                     "finished", f"run-{key}", str(folder)))
    return runs
