"""A sweep's table, curves and TensorBoard log from real runs: ``fedctl run`` twice on the local provider
(fedavg_tf, digits, 2 clients, 2 rounds, two seeds), their results folders fed to ``write_sweep_outputs``
as the campaign does, and ``fedctl results compare`` on the sweep's folder."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedctl.sweep.records import SweepRun
from fedctl.sweep.tables import write_sweep_outputs

REPO = Path(__file__).resolve().parents[2]


def fedctl(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fedctl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_two_real_runs_make_the_table_curves_and_tensorboard_log(tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # (not imported here: seconds)
        pytest.skip("the fedavg_tf payload needs TensorFlow")
    pytest.importorskip("tensorboard")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": "fedavg_tf", "data": {"dataset": "digits"},
                                                      "model": "logreg"}))
    runs = []
    for seed in (1, 2):
        before = set((proj / "results").glob("*")) if (proj / "results").is_dir() else set()
        res = fedctl(proj, "run", "--clients", "2", "--rounds", "2", "--yes", "--set", f"seed={seed}",
                     "--interval", "0.3")
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        (folder,) = set((proj / "results").glob("*")) - before
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
        runs.append(SweepRun(f"model=logreg,seed={seed}", (("model", "logreg"),), seed, "finished",
                             folder.name, str(folder)))
    out = write_sweep_outputs(proj / "results" / "sweeps" / "real", "real", ["model"], runs, 0.3)
    with open(out / "table.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    # the numbers of each run's own summary (fedctl results' summary.json)
    summ = [json.loads((Path(r.results_dir) / "summary.json").read_text()) for r in runs]
    final = np.array([s["final_accuracy"] for s in summ])
    best = np.array([s["best_accuracy"] for s in summ])
    assert row["n"] == "2" and row["failed"] == row["missing"] == "0"
    assert float(row["final_accuracy_mean"]) == pytest.approx(final.mean(), abs=1e-12)
    assert float(row["final_accuracy_std"]) == pytest.approx(final.std(ddof=1), abs=1e-12)
    assert float(row["best_accuracy_mean"]) == pytest.approx(best.mean(), abs=1e-12)
    assert float(row["best_accuracy_std"]) == pytest.approx(best.std(ddof=1), abs=1e-12)
    assert int(row["reached_target"]) == int((best >= 0.3).sum())
    import matplotlib.image

    for name in ("curves.png", "curves_by_model.png"):
        assert matplotlib.image.imread(out / name).shape[1] == 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "model=logreg,seed=2"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("accuracy")] == [1, 2]
    assert acc.Scalars("accuracy")[-1].value == pytest.approx(summ[1]["final_accuracy"], abs=1e-6)
    # the sweep's folder compared later, by path
    res = fedctl(proj, "results", "compare", str(out), "--json", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    comp = json.loads(res.stdout)
    assert comp["rows"][0]["configuration"] == "model=logreg" and comp["rows"][0]["n"] == 2
    assert comp["rows"][0]["final_accuracy_mean"] == pytest.approx(final.mean())
