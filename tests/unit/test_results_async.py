"""Results of an asynchronous run (FedBuff/FedAsync): client updates and stale drops in summary.md,
accuracy against time and against client updates, a staleness histogram; a sync run is unchanged.

The metrics.jsonl lines are made by hand, as docs/contracts.md describes an asynchronous round line.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.contract import read_metrics
from fedctl.results import PLOT_SIZE_PX, build_report, compare
from fedctl.results.plots import accuracy_by, update_staleness
from fedctl.state import HostRecord, RunState

T0 = 1_764_000_000.0
#: staleness of the two updates of each server update (K = 2): 12 updates, mean 0.75, max 3
STALENESS = [(0, 0), (0, 1), (1, 0), (2, 1), (0, 1), (3, 0)]


def async_lines(updates: int = 6, speed: float = 0.08) -> list[dict]:
    """Round lines of a FedBuff run with buffer 2 (one update dropped as stale at version 4), a summary."""
    lines: list[dict] = []
    total = dropped_stale = 0
    for v in range(1, updates + 1):
        pair = STALENESS[v - 1]
        ups = [{"client": (2 * v + i) % 5, "version": v - 1 - s, "staleness": s, "examples": 100}
               for i, s in enumerate(pair)]
        total += len(ups)
        dropped = [{"id": 4, "reason": "stale: 3 versions old"}] if v == 4 else []
        dropped_stale += len(dropped)
        start = T0 + 3.0 * (v - 1)
        lines.append({
            "type": "round", "round": v, "rounds": updates, "start": start, "end": start + 2.5,
            "sampled": [u["client"] for u in ups], "reported": [u["client"] for u in ups], "dropped": dropped,
            "rejected": 0,
            "clients": {str(u["client"]): {"examples": 100, "response_s": 0.4, "version": u["version"],
                                           "staleness": u["staleness"]} for u in ups},
            "loss": 1.0 / v, "accuracy": round(0.5 + speed * v, 4), "bytes_in": 1000, "bytes_out": 2000,
            "strategy": "fedbuff", "aggregated": len(ups), "updates": ups,
            "staleness_min": min(pair), "staleness_mean": sum(pair) / 2, "staleness_max": max(pair),
            "in_flight": 3, "client_updates": total, "dropped_stale": dropped_stale,
        })
    lines.append({"type": "summary", "rounds_completed": updates, "final_accuracy": lines[-1]["accuracy"],
                  "final_loss": 1.0 / updates, "best_accuracy": lines[-1]["accuracy"], "wall_s": 3.0 * updates,
                  "status": "finished", "reason": None, "client_updates": total, "dropped_stale": dropped_stale})
    return lines


def sync_lines(rounds: int = 4) -> list[dict]:
    """A synchronous FedAvg run's round lines (no client_updates) and its summary."""
    lines = [{"type": "round", "round": r, "rounds": rounds, "start": T0 + 10 * r, "end": T0 + 10 * r + 8,
              "sampled": [0, 1, 2], "reported": [0, 1, 2], "dropped": [],
              "clients": {str(c): {"examples": 100, "response_s": 0.5} for c in range(3)},
              "loss": 1.0 / r, "accuracy": 0.5 + 0.1 * r, "strategy": "fedavg"} for r in range(1, rounds + 1)]
    lines.append({"type": "summary", "rounds_completed": rounds, "final_accuracy": 0.9, "wall_s": 38.0,
                  "status": "finished", "reason": None})
    return lines


def write(path: Path, lines: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def state() -> RunState:
    return RunState(run_id="r-async", clients=5, rounds=6,
                    hosts=[HostRecord(info=HostInfo(name="h", address="x"), acquired_at=T0)])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_async_report_counts_client_updates_and_stale_drops_and_plots_them(tmp_path):
    out = tmp_path / "r-async"
    write(out / "metrics.jsonl", async_lines())
    report = build_report(out, state(), now=T0 + 30)
    for name in ("accuracy_vs_time.png", "accuracy_vs_updates.png", "staleness.png"):
        assert name in report.plots, report.plots
        assert png_size(out / name) == PLOT_SIZE_PX, name
    s = report.summary
    assert (s["client_updates"], s["dropped_stale"]) == (12, 1)
    assert s["staleness_mean"] == pytest.approx(0.75) and s["staleness_max"] == 3
    md = (out / "summary.md").read_text()
    assert "6 server updates took **12 client updates**; **1 dropped as stale**" in md
    assert "mean 0.75, max 3" in md
    assert "![staleness.png](staleness.png)" in md and "![accuracy_vs_updates.png](accuracy_vs_updates.png)" in md


def test_running_totals_stand_in_when_the_summary_line_is_missing(tmp_path):
    out = tmp_path / "r-async"
    write(out / "metrics.jsonl", async_lines()[:4])  # stopped after server update 4: no summary line
    s = build_report(out, state(), now=T0 + 30).summary
    assert (s["client_updates"], s["dropped_stale"]) == (8, 1)


def test_axes_and_staleness_come_from_the_round_lines(tmp_path):
    log = read_metrics(str(write(tmp_path / "metrics.jsonl", async_lines())))
    assert accuracy_by(log, "updates") == ([2.0, 4.0, 6.0, 8.0, 10.0, 12.0], [0.58, 0.66, 0.74, 0.82, 0.9, 0.98])
    assert accuracy_by(log, "time")[0] == pytest.approx([2.5, 5.5, 8.5, 11.5, 14.5, 17.5])
    assert sorted(update_staleness(log)) == sorted(s for pair in STALENESS for s in pair)


def test_sync_report_is_unchanged(tmp_path):
    out = tmp_path / "r-sync"
    write(out / "metrics.jsonl", sync_lines())
    report = build_report(out, state(), now=T0 + 30)
    assert report.plots == ["accuracy.png", "loss.png", "response_heatmap.png", "participation.png", "cost.png"]
    assert not (out / "staleness.png").exists() and "client_updates" not in report.summary
    assert "client updates" not in (out / "summary.md").read_text()


def test_compare_gives_client_updates_to_the_target(tmp_path):
    a = tmp_path / "results" / "fedbuff"
    write(a / "metrics.jsonl", async_lines())
    b = tmp_path / "results" / "fedavg"
    write(b / "metrics.jsonl", sync_lines())
    comp = compare([a, b], tmp_path / "cmp" / "compare.png", target=0.7)
    rows = {r.run: r for r in comp.rows}
    assert (rows["fedbuff"].client_updates, rows["fedbuff"].updates_to_target) == (12, 6)  # 0.74 at update 3
    assert (rows["fedavg"].client_updates, rows["fedavg"].updates_to_target) == (None, None)
    table = comp.table.read_text()
    assert "Client updates | Updates to target |" in table
    assert table.splitlines()[4].endswith("| 12 | 6 |") and table.splitlines()[5].endswith("| - | - |")


def test_staleness_counts_every_update_even_two_of_one_client(tmp_path):
    """A client that sent two updates into one server update: the round line's ``updates[]`` has
    both, its ``clients`` map only one; the histogram takes ``updates[]`` (the contract parses it)."""
    lines = async_lines(2)
    rnd = lines[1]
    rnd["updates"] = [dict(rnd["updates"][0], staleness=0), dict(rnd["updates"][0], staleness=2)]
    rnd["clients"] = {str(rnd["updates"][0]["client"]): {"examples": 100, "staleness": 2}}
    rnd["reported"] = [rnd["updates"][0]["client"]]
    log = read_metrics(str(write(tmp_path / "metrics.jsonl", lines)))
    assert log.rounds[2].updates[1]["staleness"] == 2
    assert sorted(update_staleness(log)) == sorted([*STALENESS[0], 0, 2])
