"""Per-round overhead of a Flower app under fedctl (the flower payload: SuperLink, SuperNodes,
`flwr run`) against fedctl's own fedavg_tf payload, on the same small workload: logistic regression
on synthetic data, the same clients and rounds, one local epoch, on this machine (local provider).

Both models are tiny on purpose: a round's time is then almost all overhead (process start-up,
polling, serialization, transport), which is what is compared. Reads each run's metrics.jsonl
(round start/end as the payload recorded them) and fedctl's own wall time.

    python bench/flower.py [--clients 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "examples" / "flower-numpy"


def run(name: str, cfg: dict, clients: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-flower-{name}-") as d:
        proj = Path(d)
        import yaml

        (proj / "fedctl.yaml").write_text(yaml.safe_dump(cfg))
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "fedctl", "run", "--clients", str(clients)], cwd=proj,
                             capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.monotonic() - t0
        if res.returncode != 0:
            raise SystemExit(f"{name}: fedctl run failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        metrics = next((proj / "results").glob("*/metrics.jsonl"))
        lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rounds = [x for x in lines if x.get("type") == "round"]
    durations = [x["end"] - x["start"] for x in rounds]
    summary = next(x for x in lines if x.get("type") == "summary")
    return {"name": name, "rounds": len(rounds), "round_s": statistics.median(durations),
            "round_min": min(durations), "round_max": max(durations), "accuracy": summary.get("final_accuracy"),
            "fedctl_wall_s": wall, "payload_wall_s": summary.get("wall_s")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    common = {"rounds": a.rounds}
    tf = run("fedavg_tf", {**common, "payload": "fedavg_tf", "model": "logreg", "data": {"dataset": "synthetic"},
                           "train": {"epochs": 1}}, a.clients)
    fl = run("flower", {**common, "payload": "flower", "app": str(APP),
                        "flower": {"run_config": {"local-epochs": 1}}}, a.clients)
    print(f"{a.clients} clients, {a.rounds} rounds, logistic regression on synthetic data, local provider, "
          f"{os.cpu_count()} CPUs\n")
    print("| payload | median round (s) | min / max (s) | fedctl run wall (s) | payload wall (s) | final accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (tf, fl):
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"| {r['name']} | {r['round_s']:.2f} | {r['round_min']:.2f} / {r['round_max']:.2f} | "
              f"{r['fedctl_wall_s']:.1f} | {r['payload_wall_s']:.1f} | {acc} |")
    print(f"\nper-round time, flower / fedavg_tf: {fl['round_s'] / tf['round_s']:.1f}x; "
          f"whole `fedctl run`: {fl['fedctl_wall_s'] / tf['fedctl_wall_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
