"""The sweep's tracker logs: TensorBoard event files read back with tensorboard's own EventAccumulator
(scalars per round, hparams for the HParams tab, no duplicates on a rewrite, no TensorFlow import), the
MLflow store read back with MLflow's client (params, metric history, logged once), and the clear errors
when either is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedctl.sweep.outcomes import group
from fedctl.sweep.trackers import mlflow_uri, run_dir_name, write_tensorboard
from tests.unit.sweep_fixtures import FAILED_KEY, GRID, TARGET, accuracies, grid_runs

REPO = Path(__file__).resolve().parents[2]


def accumulate(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_every_runs_scalars_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs = grid_runs(tmp_path / "runs")
    log_dir = tmp_path / "tb"
    assert write_tensorboard(log_dir, GRID, group(runs, TARGET)) == []
    subs = sorted(p.name for p in log_dir.iterdir() if p.is_dir())
    assert subs == sorted(run_dir_name(r.key) for r in runs)  # the failed run's 3 rounds too
    for run in runs:
        acc = accumulate(log_dir / run_dir_name(run.key))
        strategy, mc = dict(run.params)["strategy.name"], dict(run.params)["sampling.min_clients"]
        want = accuracies(strategy, mc, run.seed)[:3 if run.key == FAILED_KEY else 6]
        got = acc.Scalars("accuracy")
        assert [e.step for e in got] == list(range(1, len(want) + 1))
        assert [e.value for e in got] == pytest.approx(want, abs=1e-6)
        assert {"accuracy", "loss", "bytes_in", "bytes_out"} <= set(acc.Tags()["scalars"])
        # the run's hyperparameters, as the HParams plugin stores them
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert info.hparams["strategy.name"].string_value == strategy
        assert info.hparams["sampling.min_clients"].number_value == mc
        assert info.hparams["seed"].number_value == run.seed
        assert info.hparams["outcome"].string_value == ("failed" if run.key == FAILED_KEY else "finished")
        assert info.group_name == run.key
    # the experiment: every grid key with its values, accuracy among the metrics
    content = accumulate(log_dir).PluginTagToContent("hparams")["_hparams_/experiment"]
    exp = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    assert [h.name for h in exp.hparam_infos] == [*GRID, "seed", "outcome"]
    assert [v.string_value for v in exp.hparam_infos[0].domain_discrete.values] == ["fedavg", "fedprox"]
    assert "accuracy" in [m.name.tag for m in exp.metric_infos]


def test_writing_again_replaces_the_events_instead_of_doubling_them(tmp_path):
    pytest.importorskip("tensorboard")
    rows = group(grid_runs(tmp_path / "runs"), None)
    write_tensorboard(tmp_path / "tb", GRID, rows)
    write_tensorboard(tmp_path / "tb", GRID, rows)
    sub = tmp_path / "tb" / run_dir_name("fedavg-2-s1")
    assert len(list(sub.glob("events.out.tfevents.*"))) == 1
    assert len(accumulate(sub).Scalars("accuracy")) == 6


def test_the_tensorboard_log_does_not_import_tensorflow(tmp_path):
    pytest.importorskip("tensorboard")
    code = ("import sys; from pathlib import Path; from tests.unit.sweep_fixtures import grid_runs, GRID\n"
            "from fedctl.sweep.outcomes import group; from fedctl.sweep.trackers import write_tensorboard\n"
            f"write_tensorboard(Path({str(tmp_path / 'tb')!r}), GRID,\n"
            f"                  group(grid_runs(Path({str(tmp_path)!r})), None))\n"
            "print('tensorflow' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_no_tensorboard_is_a_note_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    notes = write_tensorboard(tmp_path / "tb", GRID, group(grid_runs(tmp_path / "runs"), None))
    assert notes == ["TensorBoard log not written: tensorboard is not installed "
                     "(pip install tensorboard (or pip install 'fedctl-fl[trackers]'))"]
    assert not (tmp_path / "tb").exists()


def test_mlflow_logs_each_run_once_with_params_and_metrics_per_round(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from fedctl.sweep.tables import write_sweep_outputs

    monkeypatch.chdir(tmp_path)
    runs = grid_runs(tmp_path / "runs")
    write_sweep_outputs(tmp_path / "out", "skew", GRID, runs, TARGET, mlflow="")  # "": ./mlruns
    assert (tmp_path / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=mlflow_uri(""))
    exp = client.get_experiment_by_name("skew")
    logged = {r.data.tags["fedctl.run_key"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(logged) == sorted(r.key for r in runs)
    one = logged["fedprox-3-s1"]
    assert one.data.params == {"strategy.name": "fedprox", "sampling.min_clients": "3", "seed": "1"}
    assert one.info.status == "FINISHED" and logged[FAILED_KEY].info.status == "FAILED"
    history = client.get_metric_history(one.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (i, pytest.approx(a)) for i, a in enumerate(accuracies("fedprox", 3, 1), start=1)]
    assert one.data.metrics["best_accuracy"] == pytest.approx(max(accuracies("fedprox", 3, 1)))
    # a resumed campaign writes its outputs again: nothing is logged twice
    write_sweep_outputs(tmp_path / "out", "skew", GRID, runs, TARGET, mlflow=str(tmp_path / "mlruns"))
    assert len(client.search_runs([exp.experiment_id])) == len(runs)


def test_mlflow_asked_for_but_not_installed_names_the_install_command(tmp_path, monkeypatch):
    from fedctl.errors import UsageError
    from fedctl.sweep.tables import write_sweep_outputs

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(UsageError) as err:
        write_sweep_outputs(tmp_path / "out", "skew", GRID, grid_runs(tmp_path / "runs"), None, mlflow="")
    assert err.value.hint == "pip install mlflow-skinny (or pip install 'fedctl-fl[trackers]')"
    assert "MLflow is not installed" in str(err.value)
    assert json.loads((tmp_path / "out" / "table.json").read_text())["rows"]  # the table is there regardless


def test_mlflow_uri_keeps_a_scheme_and_makes_a_folder_a_file_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert mlflow_uri("") == (tmp_path / "mlruns").as_uri()
    assert mlflow_uri("store/x") == (tmp_path / "store" / "x").as_uri()


def test_a_campaign_asking_for_mlflow_without_it_stops_before_any_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_campaign(..., mlflow=...)`` checks MLflow first: nothing of the campaign is touched."""
    import sys

    from fedctl.errors import UsageError
    from fedctl.sweep.campaign import run_campaign

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(UsageError, match="MLflow is not installed"):
        run_campaign(None, None, None, mlflow="mlruns")  # type: ignore[arg-type]
