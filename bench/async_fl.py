"""Sync FedAvg vs FedBuff vs FedAsync on a heterogeneous workload: time and client updates to a
target accuracy.

Runs the fedavg_tf payload's real server.py and client.py processes on loopback (no fedctl in the
way), once per strategy, with the same data, model, seed and realism: a share of the clients are
slow devices (`realism.slow_factor` x their training time) and every transfer has latency.

    python bench/async_fl.py [--clients 20] [--procs 2] [--target 0.8] [--slow-factor 10]
                             [--updates 200] [--strategies fedavg,fedbuff,fedasync]

Every strategy gets about the same budget of client updates (`--updates`): sync rounds of
`clients * fraction` updates, FedBuff server steps of K, FedAsync steps of 1. Prints one row per
strategy: seconds and client updates until the global model first reached the target accuracy
(from the first server update's start), the best accuracy, and the ratios to sync FedAvg.
A benchmark, not a test: it asserts nothing; timings depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PAYLOAD = Path(__file__).resolve().parent.parent / "fedctl" / "payloads" / "fedavg_tf"
ENV = {**os.environ, "FEDTF_INTRA_THREADS": "1", "FEDTF_UNREACHABLE_S": "120"}


def config(a: argparse.Namespace, name: str) -> dict:
    per_round = max(1, int(round(a.fraction * a.clients)))
    k = max(1, per_round // 2)
    rounds = {"fedbuff": a.updates // k, "fedasync": a.updates}.get(name, a.updates // per_round)
    return {"clients": a.clients, "rounds": max(1, rounds), "seed": a.seed, "model": "mlp",
            "data": {"dataset": "synthetic", "partition": "iid",
                     "synthetic": {"train": a.train, "test": 1000, "features": 32, "classes": 10,
                                   "noise": 1.0}},
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
            "strategy": {"name": name, "concurrency": per_round, "buffer_size": k},
            "sampling": {"fraction": a.fraction, "min_clients": 1, "round_timeout_s": 300},
            "realism": {"latency_ms": a.latency_ms, "slow_fraction": a.slow_fraction,
                        "slow_factor": a.slow_factor}}


def run_one(a: argparse.Namespace, name: str, d: Path) -> list[dict]:
    """One run's round lines."""
    cfg = config(a, name)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "token").write_text("bench-token-0123456789abcdef")
    os.chmod(d / "token", 0o600)
    args = ["--config", str(d / "config.yaml"), "--run-dir", str(d), "--token-file", str(d / "token")]
    procs = []
    try:
        with open(d / "server.log", "wb") as log:
            server = subprocess.Popen([sys.executable, str(PAYLOAD / "server.py"), *args, "--host", "127.0.0.1"],
                                      stdout=log, stderr=subprocess.STDOUT, env=ENV)
        procs.append(server)
        end = time.time() + 120
        while not (d / "server.ready").exists():  # a benchmark's own pacing, not a test
            if time.time() > end or server.poll() is not None:
                raise SystemExit(f"{name}: the server did not start; see {d / 'server.log'}")
            time.sleep(0.2)
        port = json.loads((d / "server.ready").read_text())["port"]
        ids = list(range(a.clients))
        for p in range(a.procs):
            mine = ",".join(map(str, ids[p::a.procs]))
            with open(d / f"client-{p}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, str(PAYLOAD / "client.py"), *args, "--server",
                                               f"127.0.0.1:{port}", "--client-ids", mine],
                                              stdout=log, stderr=subprocess.STDOUT, env=ENV))
        if server.wait(a.timeout) != 0:
            raise SystemExit(f"{name}: the server failed; see {d / 'server.log'}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x.get("type") == "round"]


def to_target(rounds: list[dict], target: float) -> tuple[float | None, int | None, float]:
    """(seconds, client updates) until accuracy first >= target (None: never), best accuracy."""
    t0, updates, best = rounds[0]["start"], 0, 0.0
    for r in rounds:
        updates += r.get("aggregated", len(r["reported"]))
        acc = r.get("accuracy")
        if acc is None:
            continue
        best = max(best, acc)
        if acc >= target:
            return r["end"] - t0, updates, best
    return None, None, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--slow-fraction", type=float, default=0.3)
    p.add_argument("--slow-factor", type=float, default=10.0)
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--strategies", default="fedavg,fedbuff,fedasync")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedctl-bench-async-") as tmp:
        for name in a.strategies.split(","):
            d = Path(tmp) / name
            d.mkdir()
            secs, ups, best = to_target(run_one(a, name, d), a.target)
            rows.append((name, secs, ups, best))
            print(f"  {name}: done", file=sys.stderr, flush=True)
    base = next(((s, u) for n, s, u, _ in rows if n == "fedavg"), (None, None))
    print(f"target accuracy {a.target}; {a.clients} clients in {a.procs} processes, {a.slow_fraction:.0%} "
          f"{a.slow_factor:g}x slower, {a.latency_ms:g} ms latency; about {a.updates} client updates each")
    print(f"{'strategy':10s} {'s to target':>12s} {'updates':>8s} {'best acc':>9s} {'time / sync':>12s} "
          f"{'updates / sync':>15s}")
    for name, secs, ups, best in rows:
        f = lambda v: "never" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
        ratio_t = f"{secs / base[0]:.2f}" if secs and base[0] else "-"
        ratio_u = f"{ups / base[1]:.2f}" if ups and base[1] else "-"
        print(f"{name:10s} {f(secs):>12s} {f(ups):>8s} {best:9.3f} {ratio_t:>12s} {ratio_u:>15s}")


if __name__ == "__main__":
    main()
