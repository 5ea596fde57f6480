"""The sweep's table: means and sample stds equal numpy's over the runs' own summaries, the target
columns, failed and missing runs shown, LaTeX escaped, the payloads' formats, compare on a sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedctl.sweep.outcomes import load_sweep
from fedctl.sweep.records import SweepRun
from fedctl.sweep.tables import tex_escape, write_sweep_outputs
from tests.unit.sweep_fixtures import (
    FAILED_KEY,
    GRID,
    MIN_CLIENTS,
    ROUND_S,
    STRATEGIES,
    TARGET,
    fedavg_tf_lines,
    flower_lines,
    grid_runs,
    write_run,
)


def summaries(runs: list[SweepRun]) -> dict[str, dict]:
    """Each run's summary line and round lines, read with json (not through fedctl)."""
    out = {}
    for r in runs:
        lines = [json.loads(t) for t in (Path(r.results_dir) / "metrics.jsonl").read_text().splitlines()]
        out[r.key] = {"summary": next((l for l in lines if l["type"] == "summary"), None),
                      "rounds": [l for l in lines if l["type"] == "round"]}
    return out


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[Path, list[SweepRun]]:
    runs = grid_runs(tmp_path / "runs")
    out = write_sweep_outputs(tmp_path / "results" / "sweeps" / "skew", "skew", GRID, runs, TARGET)
    return out, runs


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_means_and_stds_equal_numpys_over_the_runs_summaries(sweep):
    out, runs = sweep
    rows = read_csv(out / "table.csv")
    got = summaries(runs)
    reached = []
    assert [(r["strategy.name"], r["sampling.min_clients"]) for r in rows] == [
        (s, str(m)) for s in STRATEGIES for m in MIN_CLIENTS]
    for row in rows:
        mine = [r for r in runs if r.params == (("strategy.name", row["strategy.name"]),
                                                ("sampling.min_clients", int(row["sampling.min_clients"])))
                and r.status == "finished"]
        final = np.array([got[r.key]["summary"]["final_accuracy"] for r in mine])
        best = np.array([got[r.key]["summary"]["best_accuracy"] for r in mine])
        assert int(row["n"]) == len(mine)
        assert float(row["final_accuracy_mean"]) == pytest.approx(final.mean(), abs=1e-12)
        assert float(row["final_accuracy_std"]) == pytest.approx(final.std(ddof=1), abs=1e-12)
        assert float(row["best_accuracy_mean"]) == pytest.approx(best.mean(), abs=1e-12)
        assert float(row["best_accuracy_std"]) == pytest.approx(best.std(ddof=1), abs=1e-12)
        # the target: the first round at or above it, per seed, from the round lines
        hits = [(r, l) for r in mine if (l := next((l for l in got[r.key]["rounds"] if l["accuracy"] >= TARGET),
                                                    None)) is not None]
        reached.append((int(row["reached_target"]), len(mine)))
        assert int(row["reached_target"]) == len(hits)
        if not hits:
            assert row["rounds_to_target_mean"] == row["seconds_to_target_mean"] == ""
            continue
        assert float(row["rounds_to_target_mean"]) == pytest.approx(np.mean([l["round"] for _, l in hits]))
        secs = [l["end"] - got[r.key]["rounds"][0]["start"] for r, l in hits]
        assert float(row["seconds_to_target_mean"]) == pytest.approx(np.mean(secs))
        assert float(row["seconds_to_target_mean"]) >= ROUND_S
    # the configurations really differ, and some seeds never reached the target: both cases are here
    assert len({row["final_accuracy_std"] for row in rows}) == 4
    assert any(0 < r < n for r, n in reached) and any(r == n for r, n in reached)


def test_the_failed_run_is_counted_and_named_never_dropped(sweep):
    out, _ = sweep
    row = next(r for r in read_csv(out / "table.csv") if r["strategy.name"] == "fedprox"
               and r["sampling.min_clients"] == "3")
    assert (row["runs"], row["n"], row["failed"], row["missing"]) == ("3", "2", "1", "0")
    md = (out / "table.md").read_text()
    assert "Runs not in the means (1):" in md
    assert (f"- {FAILED_KEY} (strategy.name=fedprox, sampling.min_clients=3, seed 2): "
            "failed: the server exited with 1") in md
    assert "ddof=1" in md and "ddof=1" in (out / "table.tex").read_text()
    tex = (out / "table.tex").read_text()
    assert FAILED_KEY in tex and "fedprox & 3 & 2 & 1 & 0 &" in tex


def test_queued_and_metricless_runs_are_missing_with_their_reason(tmp_path):
    good = write_run(tmp_path / "a", fedavg_tf_lines([0.5, 0.7]))
    runs = [SweepRun("a", (("x", 1),), 1, "finished", "r1", str(good)),
            SweepRun("b", (("x", 1),), 2, "interrupted", "r2", None, "stopped with the campaign"),
            SweepRun("c", (("x", 1),), 3, "finished", "r3", str(tmp_path / "gone"))]
    out = write_sweep_outputs(tmp_path / "o", "t", ["x"], runs, None)
    row = read_csv(out / "table.csv")[0]
    assert (row["n"], row["failed"], row["missing"]) == ("1", "0", "2")
    assert row["final_accuracy_std"] == ""  # one seed: no sample std
    assert "rounds_to_target_mean" not in row  # no target: no target columns
    md = (out / "table.md").read_text()
    assert "- b (x=1, seed 2): missing: interrupted (stopped with the campaign)" in md
    assert f"- c (x=1, seed 3): missing: no metrics.jsonl in {tmp_path / 'gone'}" in md


def test_latex_escapes_every_special_character(tmp_path):
    assert tex_escape(r"a_b%c&d$e#f{g}h~i^j\k") == (
        r"a\_b\%c\&d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")
    folder = write_run(tmp_path / "r", fedavg_tf_lines([0.4, 0.6]))
    runs = [SweepRun("r", (("data.path", "data/x_100%&y.npz"),), 1, "finished", "r", str(folder))]
    tex = (write_sweep_outputs(tmp_path / "o", "skew_100%", ["data.path"], runs, 0.5) / "table.tex").read_text()
    assert r"data/x\_100\%\&y.npz & 1 &" in tex
    assert r"\caption{Sweep skew\_100\%." in tex and r"\label{tab:sweep-skew-100-}" in tex
    assert "x_100%" not in tex and "reached\\_target" in tex
    # every data row has as many cells as the header
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    head = tex.split("\\toprule\n")[1].splitlines()[0]
    assert all(line.count(" & ") == head.count(" & ") for line in body)


def test_flower_and_fedbuff_runs_are_read_through_the_contract(tmp_path):
    accs = [0.3, 0.55, 0.52, 0.71]
    fl = write_run(tmp_path / "fl", flower_lines(accs))
    fb1 = write_run(tmp_path / "fb1", fedavg_tf_lines(accs, strategy="fedbuff", asynchronous=True, clients=3))
    fb2 = write_run(tmp_path / "fb2", fedavg_tf_lines([0.2, 0.5, 0.6, 0.65], strategy="fedbuff", asynchronous=True,
                                                      clients=3))
    runs = [SweepRun("fl", (("payload", "flower"),), 1, "finished", "a", str(fl)),
            SweepRun("fb1", (("payload", "fedbuff"),), 1, "finished", "b", str(fb1)),
            SweepRun("fb2", (("payload", "fedbuff"),), 2, "finished", "c", str(fb2))]
    rows = read_csv(write_sweep_outputs(tmp_path / "o", "p", ["payload"], runs, 0.5) / "table.csv")
    assert float(rows[0]["final_accuracy_mean"]) == 0.71 and float(rows[0]["best_accuracy_mean"]) == 0.71
    assert rows[0]["rounds_to_target_mean"] == "2.0" and rows[0]["updates_to_target_mean"] == ""
    # fedbuff: 3 client updates per server update; the target reached at server update 2 both times
    assert rows[1]["updates_to_target_mean"] == "6.0" and rows[1]["reached_target"] == "2"
    assert float(rows[1]["final_accuracy_mean"]) == pytest.approx(np.mean([0.71, 0.65]))


def test_a_run_without_summary_line_reads_its_last_and_best_round(tmp_path):
    folder = write_run(tmp_path / "r", fedavg_tf_lines([0.4, 0.8, 0.7], summary=False))
    runs = [SweepRun("r", (("x", "y"),), 1, "finished", "r", str(folder))]
    row = read_csv(write_sweep_outputs(tmp_path / "o", "t", ["x"], runs, None) / "table.csv")[0]
    assert (float(row["final_accuracy_mean"]), float(row["best_accuracy_mean"])) == (0.7, 0.8)


def test_table_json_lets_the_folder_be_compared_later(sweep, tmp_path, capsys):
    out, runs = sweep
    name, keys, loaded, target = load_sweep(out)
    assert (name, keys, target) == ("skew", list(GRID), TARGET)
    assert [(r.key, r.params, r.seed, r.status, r.results_dir) for r in loaded] == [
        (r.key, r.params, r.seed, r.status, r.results_dir) for r in runs]
    from fedctl.cli.app import app
    from fedctl.cli.common import CliEnv, env, set_env

    old = env()
    set_env(CliEnv(state_dir=tmp_path / ".fedctl", interactive=False))
    try:  # by name, under results/sweeps/ next to .fedctl
        app(args=["results", "compare", "skew", "--json"], standalone_mode=False)
    finally:
        set_env(old)
    comp = json.loads(capsys.readouterr().out)
    table = read_csv(out / "table.csv")
    assert comp["target"] == TARGET and Path(comp["plot"]) == out / "compare.png" and (out / "compare.png").is_file()
    assert [r["configuration"] for r in comp["rows"]] == [f"strategy.name={s}, sampling.min_clients={m}"
                                                          for s in STRATEGIES for m in MIN_CLIENTS]
    for r, want in zip(comp["rows"], table, strict=True):
        assert r["final_accuracy_mean"] == pytest.approx(float(want["final_accuracy_mean"]))
        assert r["rounds_to_target_mean"] == (pytest.approx(float(want["rounds_to_target_mean"]))
                                              if want["rounds_to_target_mean"] else None)
        assert (r["n"], r["failed"]) == (int(want["n"]), int(want["failed"]))


def test_compare_refuses_a_sweep_mixed_with_a_run(sweep, tmp_path):
    from fedctl.cli.app import app
    from fedctl.cli.common import CliEnv, env, set_env
    from fedctl.errors import UsageError

    out, runs = sweep
    old = env()
    set_env(CliEnv(state_dir=tmp_path / ".fedctl", interactive=False))
    try:
        with pytest.raises(UsageError, match="not a sweep"):
            app(args=["results", "compare", str(out), runs[0].results_dir], standalone_mode=False)
        with pytest.raises(UsageError, match="not a sweep .*; compare needs at least two runs or one sweep"):
            app(args=["results", "compare", runs[0].results_dir], standalone_mode=False)
    finally:
        set_env(old)
