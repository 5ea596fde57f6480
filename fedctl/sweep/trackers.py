"""A sweep's runs in experiment trackers, from the same outcomes as its table.

TensorBoard: one log dir (``results/sweeps/<name>/tensorboard/``), a sub-run per run holding every
metric of its round lines as a scalar (step = round) and its grid values + seed as hyperparameters
(the HParams plugin), so ``tensorboard --logdir results/sweeps/<name>/tensorboard`` compares the runs
in its HParams tab. Written with tensorboard's own event writer (no TensorFlow import).

MLflow (``--mlflow [URI]``): an experiment named after the sweep, a run per run (params = grid values +
seed, metrics per round with step = round, final and best accuracy), to a local ``./mlruns`` store or
the tracking URI given. A run already logged (same run key and run id) is not logged twice, so the
command can be run again after a resumed campaign.

Both are optional packages, imported only here and only when used.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from fedctl.sweep.outcomes import FINISHED, MISSING, ConfigRow, RunOutcome, fmt_param

TB_INSTALL = "pip install tensorboard (or pip install 'fedctl-fl[trackers]')"
MLFLOW_INSTALL = "pip install mlflow-skinny (or pip install 'fedctl-fl[trackers]')"
EVENTS_PREFIX = "events.out.tfevents."


def run_dir_name(key: str) -> str:
    """A run's sub-run folder: its key with the characters a path should not hold replaced."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", key) or "run"


def _hparam_value(v: Any) -> bool | int | float | str:
    """The HParams plugin takes bool, number or text: anything else is written as the sweep file does."""
    return v if isinstance(v, (bool, int, float, str)) else fmt_param(v)


def run_hparams(grid_keys: Sequence[str], o: RunOutcome) -> dict[str, Any]:
    """A run's hyperparameters: its grid values, its seed and its outcome (to filter on)."""
    params = dict(o.run.params)
    hp = {k: _hparam_value(params.get(k)) for k in grid_keys}
    hp["seed"] = o.run.seed if o.run.seed is not None else "none"
    hp["outcome"] = o.outcome
    return hp


def logged(rows: Sequence[ConfigRow]) -> Iterator[RunOutcome]:
    """The runs with metrics to log (finished ones, and a failed run's rounds up to its failure)."""
    for r in rows:
        for o in r.outcomes:
            if o.log is not None and o.outcome != MISSING:
                yield o


def _clear_events(folder: Path) -> None:
    # only tensorboard's own event files, in a folder of our log dir: a rewrite must not add a
    # second copy of every scalar
    for f in folder.glob(EVENTS_PREFIX + "*"):
        if f.is_file() and not f.is_symlink():
            f.unlink()


def write_tensorboard(log_dir: Path, grid_keys: Sequence[str], rows: Sequence[ConfigRow]) -> list[str]:
    """Write the TensorBoard log dir; returns notes (tensorboard not installed) instead of raising."""
    try:
        import tensorboard  # noqa: F401 - the package itself: its parts may linger in sys.modules
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return [f"TensorBoard log not written: tensorboard is not installed ({TB_INSTALL})"]
    runs = list(logged(rows))
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    metrics = sorted({k for o in runs for k in o.log.metric_names()}) if runs else []  # type: ignore[union-attr]
    hparams = []
    for key in [*grid_keys, "seed", "outcome"]:
        vals = sorted({run_hparams(grid_keys, o)[key] for o in runs}, key=str)
        try:
            hparams.append(hp.HParam(key, hp.Discrete(vals)))
        except (ValueError, TypeError):  # values of mixed types: the key without a domain
            hparams.append(hp.HParam(key))
    _clear_events(log_dir)
    config = hp.hparams_config_pb(hparams=hparams, metrics=[hp.Metric(m, display_name=m) for m in metrics])
    now = time.time()
    _write_events(RecordWriter, event_pb2, log_dir, [event_pb2.Event(step=0, wall_time=now, summary=config)], 0)
    for n, o in enumerate(runs, start=1):
        sub = log_dir / run_dir_name(o.run.key)
        sub.mkdir(parents=True, exist_ok=True)
        _clear_events(sub)
        rounds = o.log.ordered  # type: ignore[union-attr]
        t0 = next((r.start for r in rounds if r.start is not None), None)
        events = [event_pb2.Event(step=0, wall_time=t0 or now,
                                  summary=hp.hparams_pb(run_hparams(grid_keys, o), trial_id=o.run.key,
                                                        start_time_secs=t0))]
        for r in rounds:
            values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in sorted(r.values.items())]
            if values:
                events.append(event_pb2.Event(step=r.round, wall_time=r.end or r.start or now,
                                              summary=summary_pb2.Summary(value=values)))
        _write_events(RecordWriter, event_pb2, sub, events, n)
    return []


def _write_events(record_writer: Any, event_pb2: Any, folder: Path, events: list[Any], n: int) -> Path:
    """One event file of ``events`` (after the file-version record TensorBoard expects), in TensorFlow's
    record framing. tensorboard's RecordWriter on a plain file: its EventFileWriter goes through
    ``tf.io.gfile`` and so imports TensorFlow (seconds) wherever it is installed."""
    path = folder / f"{EVENTS_PREFIX}{int(time.time())}.fedctl.{os.getpid()}.{n}"
    with open(path, "wb") as f:
        w = record_writer(f)
        w.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for e in events:
            w.write(e.SerializeToString())
        w.flush()
    return path


# -- MLflow ---------------------------------------------------------------------------------------------------
def mlflow_uri(value: str) -> str:
    """A tracking URI: one with a scheme as given; a folder (``""``: ./mlruns) as a local file store."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        return value
    return Path(value or "mlruns").resolve().as_uri()


def check_mlflow() -> None:
    """Raise UsageError naming the install command when MLflow is not installed (call it before a
    campaign starts, so the user learns it before the runs, not after them)."""
    from fedctl.errors import UsageError

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError("--mlflow: MLflow is not installed", hint=MLFLOW_INSTALL) from None


def _already_logged(client: Any, exp_id: str) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        seen.update((r.data.tags.get("fedctl.run_key", ""), r.data.tags.get("fedctl.run_id", "")) for r in page)
        token = page.token
        if not token:
            return seen


def log_mlflow(uri: str, name: str, grid_keys: Sequence[str], rows: Sequence[ConfigRow]) -> int:
    """Log the sweep's runs to MLflow (experiment = the sweep's name); returns how many were logged now."""
    from fedctl.errors import FedctlError

    check_mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    target = mlflow_uri(uri)
    if target.startswith("file:"):
        # MLflow 3 refuses its file store unless asked; a local ./mlruns is what --mlflow promises
        # (mlflow-skinny has no database backend). Set for this process only.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = MlflowClient(tracking_uri=target)
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        seen = _already_logged(client, exp_id)
        count = 0
        for o in logged(rows):
            if (o.run.key, o.run.run_id or "") in seen:
                continue
            rounds = o.log.ordered  # type: ignore[union-attr]
            start = next((r.start for r in rounds if r.start is not None), None)
            end = next((r.end for r in reversed(rounds) if r.end is not None), None)
            tags = {"fedctl.sweep": name, "fedctl.run_key": o.run.key, "fedctl.run_id": o.run.run_id or "",
                    "fedctl.results_dir": o.run.results_dir or ""}
            run = client.create_run(exp_id, start_time=int(start * 1000) if start else None, run_name=o.run.key,
                                    tags=tags)
            rid = run.info.run_id
            params = [Param(k, fmt_param(dict(o.run.params).get(k))) for k in grid_keys]
            params.append(Param("seed", fmt_param(o.run.seed)))
            metrics = [Metric(k, float(v), int((r.end or r.start or 0) * 1000), r.round)
                       for r in rounds for k, v in sorted(r.values.items())]
            last = int((end or 0) * 1000)
            metrics += [Metric(k, float(v), last, 0) for k, v in
                        (("final_accuracy", o.final_accuracy), ("best_accuracy", o.best_accuracy)) if v is not None]
            client.log_batch(rid, params=params, tags=[RunTag("fedctl.outcome", o.outcome)])
            for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
                client.log_batch(rid, metrics=metrics[i:i + 1000])
            client.set_terminated(rid, status="FINISHED" if o.outcome == FINISHED else "FAILED",
                                  end_time=int(end * 1000) if end else None)
            count += 1
        return count
    except MlflowException as exc:
        raise FedctlError(f"MLflow ({target}): {exc.message}") from None
