"""Sequential vs vectorised local training of one round's clients, side by side in one run.

    python bench/vectorised.py [--clients 10] [--samples 600] [--model mlp] [--repeat 5]
                               [--payload-rounds 10]

The MNIST-2NN round of McMahan et al. (10 sampled clients x 600 examples, B=10, E=1, lr 0.1) on
MNIST-shaped synthetic data (784 features, 10 classes): the sequential Trainer (one client after
another, as client.py does with train.vectorize: off) against fedtf.vectorised (all clients as one
computation). Both start from the same weights with the same batch orders; the table also prints
the largest difference of their results. Timings alternate (seq, vec, seq, vec, ...): best of
--repeat each. Rows: sequential, vectorised without XLA
(FEDTF_VECTORIZE_XLA=0) and with (=1: the whole loop jit_compile'd).
--payload-rounds N adds whole payload runs (server.py + one client.py process holding all 100
clients, McMahan's MNIST-2NN round: 100 x 600, C=0.1, E=1, B=10, bench/payload.py's config) with
train.vectorize off and on, alternately, twice each: the median seconds per round (round 1, the
warm-up, left out) and the final accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "fedctl", "payloads", "fedavg_tf"))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--model", default="mlp")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--payload-rounds", type=int, default=0, help="also whole payload runs, off vs on")
    a = p.parse_args(argv)

    from fedtf import data, models, training, vectorised  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    training.configure_threads()
    n_all = a.clients * a.samples
    xtr, ytr, _, _ = data.synthetic(n_all, 10, 784, 10, 1.0, 0)
    shape = (784,) if a.model != "cnn" else (28, 28, 1)
    xtr = xtr.reshape(n_all, *shape)
    tc = {"epochs": a.epochs, "batch_size": a.batch, "lr": 0.1, "optimizer": "sgd"}
    training.seed_everything(0)
    model = models.build_model(a.model, shape, 10)
    seq = training.Trainer(model, shape, tc)
    start = seq.layout.get()
    xs = [tf.constant(xtr[k * a.samples:(k + 1) * a.samples]) for k in range(a.clients)]
    ys = [tf.constant(ytr[k * a.samples:(k + 1) * a.samples]) for k in range(a.clients)]
    x_all, y_all = tf.constant(xtr), tf.constant(ytr)

    def run_seq():
        out = []
        for k in range(a.clients):
            seq.layout.set(start)
            seq.train(xs[k], ys[k], a.samples, np.random.default_rng([0, k]), start)
            out.append(seq.layout.get())
        return out

    def run_vec(vt):
        jobs = [vectorised.Job(k * a.samples, a.samples, np.random.default_rng([0, k]), start)
                for k in range(a.clients)]
        return [r.weights for r in vt.train(x_all, y_all, jobs)]

    def trainer(xla: str):
        os.environ["FEDTF_VECTORIZE_XLA"] = xla
        return vectorised.VectorTrainer(model, shape, tc)

    plain, xla = trainer("0"), trainer("1")
    os.environ["FEDTF_VECTORIZE_XLA"] = "auto"  # what bench measured as the XLA default (opt-in now)
    default = "vectorised + XLA" if trainer("auto").xla else "vectorised"
    runs = {"sequential": run_seq, "vectorised": lambda: run_vec(plain),
            "vectorised + XLA": lambda: run_vec(xla)}
    for fn in runs.values():  # warm-up: traces, and XLA's compile (from a shape's 2nd call)
        fn()
    results = {name: fn() for name, fn in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(a.repeat):
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    base = min(times["sequential"])
    print(f"{a.clients} clients x {a.samples} examples, model {a.model}, B={a.batch}, E={a.epochs}; "
          f"best of {a.repeat}, device {'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}; "
          f"the default (FEDTF_VECTORIZE_XLA=auto) here: {default}")
    # CPU seconds of this process too: on a shared machine the wall time moves with the neighbours
    print("| training | seconds | vs sequential | CPU seconds | vs sequential | max |w - w_seq| |")
    print("|---|---|---|---|---|---|")
    cbase = min(cpu["sequential"])
    for name, ts in times.items():
        diff = max(float(np.abs(u - v).max()) for u, v in zip(results[name], results["sequential"]))
        print(f"| {name} | {min(ts):.3f} | {base / min(ts):.2f}x | {min(cpu[name]):.3f} | "
              f"{cbase / min(cpu[name]):.2f}x | {diff:.1e} |")
    if a.payload_rounds:
        payload_rounds(a.payload_rounds)
    return 0


def payload_rounds(rounds: int) -> None:
    """Whole payload runs, vectorize off and on alternately: seconds per round and accuracy."""
    import statistics  # noqa: PLC0415
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import payload as bench_payload  # noqa: PLC0415 - bench/payload.py: its config and runner

    per: dict[str, list[float]] = {"off": [], "on": []}
    acc: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(2):
        for mode in per:
            cfg = json.loads(json.dumps(bench_payload.MNIST_CFG))
            cfg["train"]["vectorize"] = mode
            lines = bench_payload.payload_run({**cfg, "rounds": rounds}, [",".join(map(str, range(100)))])
            starts = [r["start"] for r in lines] + [lines[-1]["end"]]
            per[mode].append(statistics.median([b - q for q, b in zip(starts[1:], starts[2:])]))
            acc[mode].append(lines[-1]["accuracy"])
    print(f"\nwhole payload runs ({rounds} rounds, MNIST-2NN workload, one client process of 100 clients)")
    print("| train.vectorize | s/round (median of rounds 2..) per run | accuracy after the last round |")
    print("|---|---|---|")
    for mode in per:
        print(f"| {mode} | {', '.join(f'{v:.3f}' for v in per[mode])} | "
              f"{', '.join(f'{v:.4f}' for v in acc[mode])} |")


if __name__ == "__main__":
    sys.exit(main())
