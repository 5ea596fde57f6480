"""The limit row of bench/flower_torch.py: fedavg_tf's own training loop alone, in one process.

    python bench/flower_torch_limit.py --config cfg.json --out result.json

Reads the very fedctl.yaml dict the benchmark gives `fedctl run` (as JSON), resolves it with the
payload's own config code, loads the same data and shards, and runs the rounds with no server, no
HTTP, no client processes, no checkpoints: per round, the sampled clients' training, the FedAvg
aggregation and one evaluation of the global model on the test set. The clients train as one
batched computation when fedtf/vectorised.py offers it (see `_vectorised_trainer`), else one after
another with fedtf/training.py's Trainer. Writes the round lines (start, end, accuracy) as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "fedctl", "payloads", "fedavg_tf"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def client_rng(realism, seed: int, k: int, r: int) -> np.random.Generator:
    """Client k's stream in round r, drawn as a fedavg_tf client draws it (fedtf/streams.py):
    the run's drop-out draw first (`realism.drops_out`; the benchmark's rate is 0), the training's
    permutations after; so the limit trains each round's clients exactly as the run does, and its
    curve is the run's."""
    from fedtf import streams  # noqa: PLC0415

    rng = streams.client_stream(seed, int(k), r)
    if realism.drops_out(rng):
        raise SystemExit("the limit runs without simulated drop-outs (realism.dropout: 0)")
    return rng


def _vectorised_trainer(ds, shards, cfg: dict, m: int, w0: np.ndarray, realism):
    """(train(ks, r, w) -> the updated flat weights of each client k, trained as one computation by
    fedtf.vectorised.train_clients, a note); (None, why) when that is not there or refuses the call.

    Warmed up here with two calls on m shards (the first traces the graph, the second compiles
    it with XLA where the module does so), so the timed rounds see its steady state."""
    try:
        from fedtf import vectorised  # noqa: PLC0415
    except ImportError as e:
        return None, f"sequential (fedtf.vectorised not importable: {e})"
    fn = getattr(vectorised, "train_clients", None)
    if fn is None:
        return None, "sequential (fedtf.vectorised has no train_clients)"
    vcfg = {**cfg, "classes": ds.classes}

    def train(ks, r, w):
        return fn(cfg["model"], w, [(ds.x_train[shards[k]], ds.y_train[shards[k]]) for k in ks], vcfg,
                  [client_rng(realism, cfg["seed"], k, r) for k in ks])

    try:
        for r in (10**6, 10**6 + 1):  # round numbers no timed round uses
            train(list(range(m)), r, w0)
    except (TypeError, KeyError, ValueError) as e:  # an API other than the one this was written for
        return None, f"sequential (fedtf.vectorised.train_clients refused the call: {type(e).__name__}: {e})"
    return train, "vectorised (fedtf.vectorised.train_clients)"


def run(cfg_full: dict) -> dict:
    """Run the configured rounds in this process; return the round lines and the mode used."""
    import tensorflow as tf  # noqa: PLC0415
    from fedtf import config, data, models, training  # noqa: PLC0415
    from fedtf.realism import Realism  # noqa: PLC0415
    from fedtf.strategies import Update, make_strategy  # noqa: PLC0415

    cfg = config.resolve(cfg_full)
    training.configure_threads()
    training.seed_everything(cfg["seed"])
    ds = data.load_dataset(cfg["data"], cfg["seed"])
    shards = data.client_shards(ds, cfg)
    xs = [tf.constant(ds.x_train[s]) for s in shards]
    ys = [tf.constant(ds.y_train[s]) for s in shards]
    model = models.build_model(cfg["model"], ds.x_train.shape[1:], ds.classes)
    tr = training.Trainer(model, ds.x_train.shape[1:], cfg["train"])
    strat = make_strategy(cfg["strategy"], tr.layout.size, cfg["clients"])
    w = tr.layout.get()
    from fedtf import streams  # noqa: PLC0415

    rng = streams.sampler(cfg["seed"])  # the server's sampling: the same clients every round
    m = config.samples_per_round(cfg)
    realism = Realism(cfg["realism"], cfg["clients"], cfg["seed"])
    vec, mode = _vectorised_trainer(ds, shards, cfg, m, w, realism)
    tr.warmup(xs[0], ys[0])  # the payload's client and server trace these before round 1 too
    tr.evaluate(ds.x_test[:2], ds.y_test[:2])
    lines = []
    for r in range(1, cfg["rounds"] + 1):
        start = time.time()
        ks = streams.sample(rng, cfg["clients"], m)
        if vec is not None:
            ups = [Update(k, len(shards[k]), u) for k, u in zip(ks, vec(ks, r, w))]
        else:
            ups = []
            for k in ks:
                tr.layout.set(w)
                tr.train(xs[k], ys[k], len(shards[k]), client_rng(realism, cfg["seed"], k, r), w)
                ups.append(Update(k, len(shards[k]), tr.layout.get()))
        w = strat.aggregate(w, ups)
        tr.layout.set(w)
        loss, acc = tr.evaluate(ds.x_test, ds.y_test)
        lines.append({"round": r, "start": start, "end": time.time(), "loss": loss, "accuracy": acc})
    return {"rounds": lines, "mode": f"{mode}, TF {tf.__version__}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the experiment config as JSON (fedctl.yaml's dict)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    with open(a.config, encoding="utf-8") as f:
        res = run(json.load(f))
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
