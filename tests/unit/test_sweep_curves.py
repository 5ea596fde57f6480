"""The sweep's curves: the mean line and min-max band equal numpy's over the seeds, one PNG per grid key
plus one of everything (valid images, read back), the x axis for async runs, a bounded legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedctl.sweep.curves import MAX_LEGEND, config_curve, curve_axis, file_for, legend_label, write_curves
from fedctl.sweep.outcomes import group
from fedctl.sweep.records import SweepRun
from fedctl.sweep.tables import write_sweep_outputs
from tests.unit.sweep_fixtures import GRID, TARGET, accuracies, fedavg_tf_lines, grid_runs, write_run


def test_the_mean_line_and_band_are_numpys_over_the_seeds(tmp_path):
    rows = group(grid_runs(tmp_path), TARGET)
    row = next(r for r in rows if r.params == (("strategy.name", "fedavg"), ("sampling.min_clients", 3)))
    xs, mean, lo, hi = config_curve(row, "round")
    seeds = np.array([accuracies("fedavg", 3, s) for s in (1, 2, 3)])
    assert xs == [1, 2, 3, 4, 5, 6]
    assert mean == pytest.approx(seeds.mean(axis=0).tolist())
    assert lo == pytest.approx(seeds.min(axis=0).tolist()) and hi == pytest.approx(seeds.max(axis=0).tolist())
    # the failed seed's 3 rounds are not in its configuration's mean
    failed = next(r for r in rows if r.params == (("strategy.name", "fedprox"), ("sampling.min_clients", 3)))
    assert config_curve(failed, "round")[1] == pytest.approx(
        np.mean([accuracies("fedprox", 3, s) for s in (1, 3)], axis=0).tolist())


def test_seeds_of_different_lengths_average_over_the_rounds_all_have(tmp_path):
    a = write_run(tmp_path / "a", fedavg_tf_lines([0.1, 0.2, 0.3, 0.4]))
    b = write_run(tmp_path / "b", fedavg_tf_lines([0.3, 0.4]))
    rows = group([SweepRun("a", (), 1, "finished", "a", str(a)), SweepRun("b", (), 2, "finished", "b", str(b))], None)
    assert config_curve(rows[0], "round")[:2] == ([1, 2], pytest.approx([0.2, 0.3]))


def test_one_png_per_grid_key_and_one_of_everything_read_back(tmp_path):
    import matplotlib.image

    out = write_sweep_outputs(tmp_path / "o", "skew", GRID, grid_runs(tmp_path / "runs"), TARGET)
    names = ["curves.png"] + [file_for(k) for k in GRID]
    assert names == ["curves.png", "curves_by_strategy.name.png", "curves_by_sampling.min_clients.png"]
    for name in names:
        img = matplotlib.image.imread(out / name)
        assert img.shape[1] == 1000 and img.shape[0] >= 600
        assert img[..., :3].std() > 0.05  # something is drawn, not a blank page
    assert "note:" not in (out / "table.md").read_text()


def test_the_x_axis_is_client_updates_for_async_runs_and_time_for_a_mix(tmp_path):
    sync = write_run(tmp_path / "s", fedavg_tf_lines([0.2, 0.5, 0.7]))
    fb = write_run(tmp_path / "f", fedavg_tf_lines([0.3, 0.6, 0.8], strategy="fedbuff", asynchronous=True, clients=4))
    r_sync = SweepRun("s", (("strategy.name", "fedavg"),), 1, "finished", "s", str(sync))
    r_fb = SweepRun("f", (("strategy.name", "fedbuff"),), 1, "finished", "f", str(fb))
    only_async = group([r_fb], None)
    assert curve_axis(only_async) == "updates"
    assert config_curve(only_async[0], "updates")[0] == pytest.approx(np.linspace(4, 12, 100).tolist())
    assert curve_axis(group([r_sync, r_fb], None)) == "time"
    assert curve_axis(group([r_sync], None)) == "round"
    assert write_curves(tmp_path / "o", ["strategy.name"], group([r_sync, r_fb], None), 0.6) == []
    assert (tmp_path / "o" / "curves_by_strategy.name.png").is_file()


def test_many_configurations_keep_the_legend_bounded(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from fedctl.sweep import curves

    runs = [SweepRun(f"r{i}", (("train.lr", i / 100),), 1, "finished", f"r{i}",
                     str(write_run(tmp_path / f"r{i}", fedavg_tf_lines([0.1 + i / 100, 0.5 + i / 100]))))
            for i in range(MAX_LEGEND + 5)]
    seen = []
    real = curves._legend
    monkey = pytest.MonkeyPatch()
    monkey.setattr(curves, "_legend", lambda fig, h, l, t: (real(fig, h, l, t), seen.append(fig.legends[-1]))[0])
    try:
        write_curves(tmp_path / "o", ["train.lr"], group(runs, None), 0.55)
    finally:
        monkey.undo()
    texts = [t.get_text() for t in seen[0].get_texts()]
    assert len(texts) == MAX_LEGEND + 2 and texts[-2:] == ["... 5 more (table.csv)", "target 0.55"]
    assert legend_label([("data.path", "a" * 60)], n=3) == "data.path=" + "a" * 17 + "... (n=3)"
    plt.close("all")


def test_no_matplotlib_is_a_note_not_a_traceback(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    notes = write_curves(tmp_path, GRID, group(grid_runs(tmp_path / "runs"), None), None)
    assert notes == ["curves not drawn: matplotlib is not installed (pip install 'fedctl-fl[results]')"]
    assert not list(tmp_path.glob("*.png"))

