"""Benchmark of the fedavg_tf payload; prints one markdown table, all measured in this run.

    python bench/payload.py [--npz mnist.npz] [--rounds 8] [--skip-accuracy]

Rows: wire codec vs JSON lists (2NN, CNN), aggregation vs memcpy, peak RSS of virtual clients,
rounds/time to 90% on digits (fedavg, fedprox, scaffold x iid, dirichlet(0.1)), and the payload's
per-round wall time (server + client processes over HTTP) vs a plain single-process FedAvg loop
in the MNIST-2NN setting (100 clients x 600, C=0.1, E=1, B=10, lr 0.1).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAYLOAD = os.path.join(ROOT, "fedctl", "payloads", "fedavg_tf")
sys.path.insert(0, PAYLOAD)

import numpy as np  # noqa: E402

from fedtf.strategies import weighted_average  # noqa: E402
from fedtf.transport import decode, encode  # noqa: E402

MNIST_CFG = {"clients": 100, "seed": 0, "model": "mlp",
             "data": {"dataset": "synthetic", "partition": "iid",
                      "synthetic": {"train": 60000, "test": 10000, "features": 784, "classes": 10,
                                    "noise": 1.0}},
             "sampling": {"fraction": 0.1, "min_clients": 1, "round_timeout_s": 300},
             "train": {"epochs": 1, "batch_size": 10, "lr": 0.1, "optimizer": "sgd"}}
SHAPES = {"2NN": [(784, 200), (200,), (200, 200), (200,), (200, 10), (10,)],
          "CNN": [(5, 5, 1, 32), (32,), (5, 5, 32, 64), (64,), (3136, 512), (512,), (512, 10), (10,)]}


def best(fn, repeat=5) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def bench_codec(rows: list) -> None:
    rng = np.random.default_rng(0)
    for name, shapes in SHAPES.items():
        ws = [(rng.standard_normal(s) * 0.05).astype(np.float32) for s in shapes]
        meta = {"client": 1, "examples": 600}
        body = encode(meta, {"w": ws})
        t_bin = best(lambda: decode(encode(meta, {"w": ws})).flat("w").sum(), 10)
        js = json.dumps({"meta": meta, "w": [w.tolist() for w in ws]})
        t_json = best(lambda: [np.array(x, np.float32) for x in
                               json.loads(json.dumps({"meta": meta, "w": [w.tolist() for w in ws]}))["w"]], 2)
        n = sum(w.size for w in ws)
        rows.append((f"codec {name} ({n:,} weights): encode+decode", f"{t_bin * 1e3:.2f} ms",
                     f"JSON lists {t_json * 1e3:.0f} ms", f"{t_json / t_bin:.0f}x faster (target >=100x)"))
        rows.append((f"codec {name}: bytes on the wire", f"{len(body):,} B", f"JSON {len(js):,} B",
                     f"{len(js) / len(body):.1f}x smaller (target >=5x)"))


def bench_aggregation(rows: list) -> None:
    rng = np.random.default_rng(1)
    size, k = 1_663_370, 10
    vecs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    counts = rng.integers(100, 700, k)
    out = np.empty(size, np.float32)
    t_agg = best(lambda: weighted_average(vecs, counts, out), 10)
    dst = [np.empty(size, np.float32) for _ in range(k)]
    t_copy = best(lambda: [np.copyto(d, v) for d, v in zip(dst, vecs)], 10)
    gb = k * size * 4 / 1e9
    rows.append((f"aggregation: {k} CNN updates ({gb * 1e3:.0f} MB)", f"{gb / t_agg:.2f} GB/s",
                 f"memcpy {gb / t_copy:.2f} GB/s", f"{t_copy / t_agg:.2f} of memcpy (target >=0.5)"))


# -- peak RSS ----------------------------------------------------------------------------------
def rss_child(ids: str) -> None:
    """Child process: the real client.Client set-up for `ids`, each id trained once; print peak RSS."""
    import client as client_mod  # noqa: PLC0415
    from fedtf import config  # noqa: PLC0415
    cfg = config.resolve(MNIST_CFG)
    with tempfile.TemporaryDirectory() as d:
        tok = os.path.join(d, "token")
        with open(tok, "w") as f:
            f.write("x")
        args = client_mod.parse_args(["--config", "-", "--run-dir", d, "--token-file", tok,
                                      "--server", "127.0.0.1:1", "--client-ids", ids])
        c = client_mod.Client(args, cfg, b"x", client_mod.parse_ids(ids, cfg["clients"]))
        g = c.layout.get()
        for vc in c.clients.values():
            c.layout.set(g)
            c.trainer.train(vc.x, vc.y, vc.n, np.random.default_rng(vc.cid), g)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _rss(ids: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--rss-child", ids], capture_output=True, text=True,
                         check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]


def bench_rss(rows: list) -> None:
    one = _rss(",".join(map(str, range(10))))
    many = 0.0
    for pair in range(0, 10, 2):  # two at a time (2 cores); peak RSS is per process anyway
        procs = [subprocess.Popen([sys.executable, __file__, "--rss-child", str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for i in (pair, pair + 1)]
        for p in procs:
            many += json.loads(p.communicate()[0].strip().splitlines()[-1])["maxrss_mb"]
    hundred = _rss(",".join(map(str, range(100))))
    rows.append(("peak RSS, 10 clients (MNIST-shaped 2NN)", f"1 process: {one:.0f} MB",
                 f"10 processes: {many:.0f} MB", f"{many / one:.1f}x less (target >=5x)"))
    rows.append(("peak RSS, 100 virtual clients in 1 process", f"{hundred:.0f} MB", "", "target <= 2048 MB"))


# -- real payload runs ---------------------------------------------------------------------------
def payload_run(cfg: dict, groups: list[str], timeout: float = 900) -> list[dict]:
    """Run server.py + client.py subprocesses to completion; return the round lines."""
    import yaml  # noqa: PLC0415
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f)
        tok = os.path.join(d, "token")
        with open(tok, "w") as f:
            f.write("bench-token")
        os.chmod(tok, 0o600)
        common = ["--config", os.path.join(d, "config.yaml"), "--run-dir", d, "--token-file", tok]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        slog = open(os.path.join(d, "server.log"), "w")
        server = subprocess.Popen([sys.executable, os.path.join(PAYLOAD, "server.py"), *common,
                                   "--host", "127.0.0.1", "--port", "0"], stdout=slog, stderr=slog, env=env)
        ready = os.path.join(d, "server.ready")
        while not os.path.exists(ready):
            if server.poll() is not None:
                raise RuntimeError(open(os.path.join(d, "server.log")).read())
            time.sleep(0.1)
        port = json.load(open(ready))["port"]
        clients = [subprocess.Popen([sys.executable, os.path.join(PAYLOAD, "client.py"), *common, "--server",
                                     f"127.0.0.1:{port}", "--client-ids", g], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env) for g in groups]
        try:
            rc = server.wait(timeout)
        finally:
            for p in [server, *clients]:
                if p.poll() is None:
                    p.kill()
        for p in clients:
            p.wait()
        if rc != 0:
            raise RuntimeError(open(os.path.join(d, "server.log")).read()[-3000:])
        with open(os.path.join(d, "metrics.jsonl")) as f:
            return [json.loads(x) for x in f if '"type": "round"' in x]


def bench_accuracy(rows: list, max_rounds: int) -> None:
    for part in ("iid", "dirichlet"):
        for strat in ("fedavg", "fedprox", "scaffold"):
            cfg = {"clients": 10, "rounds": max_rounds, "seed": 0, "model": "mlp",
                   "data": {"dataset": "digits", "partition": part, "alpha": 0.1},
                   "strategy": {"name": strat, "mu": 0.01},
                   "sampling": {"fraction": 1.0, "min_clients": 2, "round_timeout_s": 120},
                   "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}}
            lines = payload_run(cfg, ["0,1,2,3,4", "5,6,7,8,9"])
            hit = next((r for r in lines if r["accuracy"] is not None and r["accuracy"] >= 0.9), None)
            label = "iid" if part == "iid" else "dirichlet(0.1)"
            if hit:
                res = (f"{hit['round']} rounds", f"{hit['end'] - lines[0]['start']:.1f} s")
            else:
                res = (f">{max_rounds} rounds", f"best {max(r['accuracy'] for r in lines):.3f}")
            rows.append((f"digits to 90%: {strat}, {label} (10 clients)", *res, ""))


def plain_loop(cfg: dict, rounds: int) -> list[float]:
    """The same training with no server, no HTTP, no checkpoints: per-round wall times."""
    import tensorflow as tf  # noqa: PLC0415
    from fedtf import config, data, models, training  # noqa: PLC0415
    from fedtf.strategies import Update, make_strategy  # noqa: PLC0415
    cfg = config.resolve({**cfg, "rounds": rounds})
    training.configure_threads()
    training.seed_everything(cfg["seed"])
    ds = data.load_dataset(cfg["data"], cfg["seed"])
    shards = data.client_shards(ds, cfg)
    xs = [tf.constant(ds.x_train[s]) for s in shards]
    ys = [tf.constant(ds.y_train[s]) for s in shards]
    model = models.build_model("mlp", ds.x_train.shape[1:], ds.classes)
    tr = training.Trainer(model, ds.x_train.shape[1:], cfg["train"])
    strat = make_strategy(cfg["strategy"], tr.layout.size, cfg["clients"])
    w = tr.layout.get()
    rng = np.random.default_rng(0)
    m = config.samples_per_round(cfg)
    tr.warmup(xs[0], ys[0])
    tr.evaluate(ds.x_test[:2], ds.y_test[:2])
    starts, acc = [], 0.0
    for r in range(1, rounds + 1):
        starts.append(time.perf_counter())
        ups = []
        for k in sorted(rng.choice(cfg["clients"], m, replace=False)):
            tr.layout.set(w)
            tr.train(xs[k], ys[k], len(shards[k]), np.random.default_rng([cfg["seed"], k, r]), w)
            ups.append(Update(int(k), len(shards[k]), tr.layout.get()))
        w = strat.aggregate(w, ups)
        tr.layout.set(w)
        _, acc = tr.evaluate(ds.x_test, ds.y_test)
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts, starts[1:])]


def bench_round_time(rows: list, rounds: int, npz: str | None) -> None:
    cfg = json.loads(json.dumps(MNIST_CFG))
    if npz:
        cfg["data"] = {"dataset": "npz", "path": os.path.abspath(npz), "partition": "iid"}
    lines = payload_run({**cfg, "rounds": rounds}, [",".join(map(str, range(100)))])
    starts = [r["start"] for r in lines] + [lines[-1]["end"]]
    payload = statistics.median([b - a for a, b in zip(starts[1:], starts[2:])])  # round 1 = warm-up
    plain = statistics.median(plain_loop(cfg, rounds)[1:])
    src = "mnist npz" if npz else "synthetic 784-dim"
    rows.append((f"MNIST-2NN round ({src}; 100x600, C=0.1, E=1, B=10)", f"payload {payload:.3f} s",
                 f"plain loop {plain:.3f} s", f"{payload / plain:.2f}x (target <=1.5x)"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", help="a real mnist.npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds for the per-round timing")
    ap.add_argument("--accuracy-rounds", type=int, default=40)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child is not None:
        rss_child(a.rss_child)
        return
    rows: list = []
    bench_codec(rows)
    bench_aggregation(rows)
    bench_rss(rows)
    bench_round_time(rows, a.rounds, a.npz)
    if not a.skip_accuracy:
        bench_accuracy(rows, a.accuracy_rounds)
    print(f"machine: {os.cpu_count()} CPU cores; FEDTF_INTRA_THREADS="
          f"{os.environ.get('FEDTF_INTRA_THREADS', 'default')}\n")
    print("| measure | result | baseline | ratio / target |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
