"""fedctl (fedavg_tf) against Flower's simulation engine with a PyTorch client, and against its own
training loop alone (the limit), on McMahan et al.'s MNIST 2NN workload: 100 clients x 600 examples
(IID), C=0.1 (10 clients a round), E=1, B=10, plain SGD lr 0.1, 20 rounds, the global model
evaluated on the whole test set after every round. Prints one markdown table with ratios.

    python bench/flower_torch.py [--npz mnist.npz] [--rounds 20] [--repeats 2]
    python bench/flower_torch.py --rounds 3 --repeats 1          # a quick check

Both frameworks read the same arrays: --npz (x_train, y_train, x_test, y_test; images are scaled
and flattened as fedavg_tf does), else a synthetic MNIST-shaped set (784 features, 10 classes,
fedavg_tf's generator, --noise) written once to a temporary folder. Flower's clients get the very
shards fedavg_tf computes for the run's seed. Runs alternate in one invocation: fedctl, flower,
limit, fedctl, flower, limit, ... (--repeats of each), so a change in the machine's load hits all.

- fedctl: `python -m fedctl run --clients 100` in a temporary project with a fedctl.yaml (local
  provider: the server and one client process per CPU core); rounds from its metrics.jsonl.
- flower: bench/flower_torch_app.py (Flower's quickstart-pytorch ClientApp/ServerApp pattern,
  FedAvg, centralized evaluation each round) under `flwr.simulation.run_simulation` with the Ray
  backend, in --flower-python; rounds from the app's own timestamps. One Ray actor per core with
  one torch thread each (--flower-client-cpus 1), the set-up Flower's docs advise tuning
  `client_resources` for; Flower's default (2 CPUs an actor) is a flag away.
- limit: bench/flower_torch_limit.py, fedavg_tf's training + aggregation + evaluation in one process
  (the vectorised client training when fedtf/vectorised.py provides it), on the run's own sampled
  clients and client streams (fedtf/streams.py): its accuracy curve is fedctl's, and the table's
  last line says by how much they differ.

Measured per run: seconds per round (start to start, the last round start to end; median over
rounds 2..R, round 1 being each framework's warm-up), the whole command's wall time, peak memory of
its whole process tree (PSS and RSS summed over every descendant, sampled by a thread; this process
is made a child subreaper so fedctl's detached server and clients stay in the tree), and accuracy
after R rounds.

The Flower side lives in a bench-only environment outside the repository (not part of the tests):

    python -m venv /work/benchenv
    /work/benchenv/bin/pip install "flwr[simulation]==1.42.*" "torch==2.13.0+cpu" numpy

`torch==2.13.0+cpu` is the CPU-only wheel (190 MB, no nvidia-* packages) that pip finds in this
machine's local wheel folder (pip's config here adds it; its constraints cap torch at 2.14.1). Where
that wheel is not at hand, PyPI's plain `torch` wheel works the same on a CPU but pulls the CUDA
runtime wheels (several GB) as dependencies. The env takes 1.4 GB and about 40 s to make.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "fedctl" / "payloads" / "fedavg_tf"))

import numpy as np  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36


# -- memory of a process tree -----------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone between listdir and open
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(root: int) -> list[int]:
    """Every process below `root` (not root itself)."""
    kids, out, todo = _children(), [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB; (0, 0) when it is gone or a zombie."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


class TreeMemory(threading.Thread):
    """Peak PSS and RSS (MB) of all of this process's descendants, sampled every `interval` s."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_pss = self.peak_rss = 0.0
        self.peak_procs = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            pids = descendants(os.getpid())
            pss = rss = 0
            for p in pids:
                a, b = _rollup(p)
                pss, rss = pss + a, rss + b
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss / 1024), max(self.peak_rss, rss / 1024)
            self.peak_procs = max(self.peak_procs, len(pids))

    def stop(self) -> None:
        self._done.set()
        self.join()


def become_subreaper() -> None:
    """Orphans of our children (fedctl's setsid'd server and clients, Ray's daemons) become our
    children instead of init's, so the memory sampler sees the whole tree and leftovers are found."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def reap_and_check(label: str, grace_s: float = 20.0) -> str:
    """After a run: reap orphaned zombies, wait for leftover descendants to exit, and end (SIGTERM,
    then SIGKILL) any still running; they are this benchmark's own descendants. Returns a note."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        left = [p for p in descendants(os.getpid()) if _rollup(p) != (0, 0)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling a condition with a deadline: the processes exit on their own
    if not left:
        return ""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in descendants(os.getpid()):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
    return f"{label}: {len(left)} processes still running {grace_s:.0f}s after it ended (ended by the bench)"


def measured(label: str, cmd: list[str], cwd: Path, env: dict, log: Path, interval: float,
             timeout: float) -> dict:
    """Run `cmd` to completion under the memory sampler; its wall time, peaks and leftovers."""
    sampler = TreeMemory(interval)
    sampler.start()
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    wall = time.monotonic() - t0
    sampler.stop()
    note = reap_and_check(label)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}); the end of {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "pss_mb": sampler.peak_pss, "rss_mb": sampler.peak_rss,
            "procs": sampler.peak_procs, "note": note}


# -- the workload ----------------------------------------------------------------------------------
def prepare(a: argparse.Namespace, folder: Path) -> tuple[dict, dict]:
    """Write the data both frameworks read and the fedctl config; return (config, data facts)."""
    from fedtf import config, data  # noqa: PLC0415 - numpy only

    if a.npz:
        ds = data.load_dataset({"dataset": "npz", "path": a.npz}, a.seed)
        xtr, ytr, xte, yte = ds.x_train, ds.y_train, ds.x_test, ds.y_test
        src = f"{a.npz}"
    else:
        xtr, ytr, xte, yte = data.synthetic(a.clients * a.per_client, a.test, 784, 10, a.noise, a.seed)
        src = f"synthetic 784-dim, 10 classes, noise {a.noise:g}"
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)  # the 2NN flattens anyway
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    np.savez(folder / "data.npz", **arrays)  # fedctl's data.path
    for k, v in arrays.items():  # Flower's actors memory-map these
        np.save(folder / f"{k}.npy", v)
    cfg = {"name": "bench-flower-torch", "payload": "fedavg_tf", "clients": a.clients, "rounds": a.rounds,
           "seed": a.seed, "model": "mlp",
           "data": {"dataset": "npz", "path": str(folder / "data.npz"), "partition": "iid"},
           "strategy": {"name": "fedavg"},
           "sampling": {"fraction": a.fraction, "min_clients": max(1, round(a.fraction * a.clients)),
                        "round_timeout_s": 300},
           "train": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "optimizer": "sgd"},
           "evaluate_every": 1}
    if a.fedctl_processes:  # clients per client process: ceil(clients / processes)
        cfg["placement"] = {"clients_per_host": -(-a.clients // a.fedctl_processes)}
    # The workload, checked through the payload's own code: sample size, shards, data.
    res = config.resolve(cfg)
    ds = data.load_dataset(res["data"], res["seed"])
    shards = data.client_shards(ds, res)
    m = config.samples_per_round(res)
    assert m == round(a.fraction * a.clients), (m, a.fraction, a.clients)
    assert res["evaluate_every"] == 1 and res["strategy"]["name"] == "fedavg" and res["model"] == "mlp"
    assert {k: res["train"][k] for k in ("epochs", "batch_size", "lr", "optimizer")} == \
        {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "optimizer": "sgd"}, res["train"]
    assert res["realism"]["dropout"] == 0.0 and res["realism"]["latency_ms"] == 0.0
    assert np.array_equal(ds.x_train, xtr) and np.array_equal(ds.y_train, ytr)
    sizes = sorted({len(s) for s in shards})
    np.savez(folder / "shards.npz", idx=np.concatenate(shards),
             off=np.concatenate([[0], np.cumsum([len(s) for s in shards])]))
    (folder / "fedctl.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return cfg, {"src": src, "train": len(ytr), "test": len(yte), "per_round": m, "shard_sizes": sizes}


def cadence(rounds: list[dict]) -> list[float]:
    """Seconds per round: start to next start, the last round start to end (so between-round work,
    e.g. fedctl's checkpoint, counts)."""
    starts = [r["start"] for r in rounds]
    return [b - a for a, b in zip(starts, starts[1:] + [rounds[-1]["end"]])]


def per_round(rounds: list[dict]) -> float:
    d = cadence(rounds)
    return statistics.median(d[1:] if len(d) > 1 else d)


def run_fedctl(i: int, a: argparse.Namespace, folder: Path) -> dict:
    proj = folder / f"fedctl-{i}"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text((folder / "fedctl.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    m = measured(f"fedctl #{i}", [sys.executable, "-m", "fedctl", "run", "--clients", str(a.clients)],
                 proj, env, folder / f"fedctl-{i}.log", a.sample_interval, a.timeout)
    metrics = next((proj / "results").glob("*/metrics.jsonl"))
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rounds = [x for x in lines if x.get("type") == "round"]
    if len(rounds) != a.rounds:
        raise SystemExit(f"fedctl #{i}: {len(rounds)} round lines in {metrics}, expected {a.rounds}")
    return {**m, "round_s": per_round(rounds), "cadence": cadence(rounds), "accuracy": rounds[-1]["accuracy"],
            "curve": [x["accuracy"] for x in rounds], "detail": ""}


def run_flower(i: int, a: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"flower-{i}.json"
    # Ray's workers import the app by module name: bench/ on their path (they inherit this env).
    env = {**os.environ, "PYTHONPATH": str(BENCH), "RAY_DEDUP_LOGS": "0"}
    cmd = [a.flower_python, str(BENCH / "flower_torch_app.py"), "--data", str(folder),
           "--rounds", str(a.rounds), "--clients", str(a.clients), "--fraction", str(a.fraction),
           "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
           "--seed", str(a.seed), "--client-cpus", str(a.flower_client_cpus), "--out", str(out)]
    m = measured(f"flower #{i}", cmd, folder, env, folder / f"flower-{i}.log", a.sample_interval, a.timeout)
    res = json.loads(out.read_text())
    rounds = res["rounds"]
    detail = (f"flwr {res['flwr']}, torch {res['torch']}, {res['actors']} Ray actor(s) of "
              f"{res['client_cpus']:g} CPUs")
    return {**m, "round_s": per_round(rounds), "cadence": cadence(rounds), "accuracy": rounds[-1]["accuracy"],
            "detail": detail}


def run_limit(i: int, a: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"limit-{i}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    m = measured(f"limit #{i}", [sys.executable, str(BENCH / "flower_torch_limit.py"), "--config",
                                 str(folder / "fedctl.yaml"), "--out", str(out)],
                 folder, env, folder / f"limit-{i}.log", a.sample_interval, a.timeout)
    res = json.loads(out.read_text())
    return {**m, "round_s": per_round(res["rounds"]), "cadence": cadence(res["rounds"]),
            "accuracy": res["rounds"][-1]["accuracy"], "curve": [x["accuracy"] for x in res["rounds"]],
            "detail": res["mode"]}


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(results: dict[str, list[dict]], a: argparse.Namespace, facts: dict, loads: list) -> str:
    rows = [f"MNIST 2NN: {a.clients} clients x {facts['shard_sizes']} examples (IID), "
            f"{facts['per_round']} a round, E={a.epochs}, B={a.batch_size}, SGD lr {a.lr:g}, {a.rounds} rounds; "
            f"data: {facts['src']} ({facts['train']} train, {facts['test']} test); "
            f"{os.cpu_count()} CPUs, load average {loads[0]:.2f} before, {loads[1]:.2f} after", "",
            "| run | s/round (median, rounds 2..R) | wall (s) | peak PSS tree (MB) | peak RSS tree (MB) "
            "| processes | accuracy after R | notes |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("fedctl", "flower", "limit"):
        for i, r in enumerate(results[name], 1):
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            rows.append(f"| {name} #{i} | {r['round_s']:.3f} | {r['wall_s']:.1f} | {r['pss_mb']:.0f} | "
                        f"{r['rss_mb']:.0f} | {r['procs']} | {acc} | {r['detail']} |")
    fc, fl, li = results["fedctl"], results["flower"], results["limit"]
    if fc and fl:
        rows.append(f"| **flower / fedctl** (medians) | **{_med(fl, 'round_s') / _med(fc, 'round_s'):.2f}x** | "
                    f"{_med(fl, 'wall_s') / _med(fc, 'wall_s'):.2f}x | "
                    f"**{_med(fl, 'pss_mb') / _med(fc, 'pss_mb'):.2f}x** | "
                    f"{_med(fl, 'rss_mb') / _med(fc, 'rss_mb'):.2f}x | | | >1: fedctl faster / smaller |")
    if fc and li:
        rows.append(f"| **fedctl / limit** (medians) | **{_med(fc, 'round_s') / _med(li, 'round_s'):.2f}x** | "
                    f"| {_med(fc, 'pss_mb') / _med(li, 'pss_mb'):.2f}x | | | | 1.0 = fedctl costs "
                    f"nothing over its own loop |")
    notes = [r["note"] for rs in results.values() for r in rs if r["note"]]
    if fc and li:
        notes.append(curve_note(fc, li))
    return "\n".join(rows + ([""] + notes if notes else []))


def curve_note(fedctl: list[dict], limit: list[dict]) -> str:
    """How far fedctl's accuracy curve is from the limit's, round by round. Both sample the same
    clients and draw the same client streams (fedtf/streams.py), so the curves are the same but
    for float rounding: a gap here is a fedctl bug, not noise."""
    gaps = [max((abs(a - b) for a, b in zip(f["curve"], li["curve"])), default=float("nan"))
            for f in fedctl for li in limit]
    lengths = {len(r["curve"]) for r in fedctl + limit}
    return (f"Accuracy curve, fedctl against the limit (same sampled clients and client streams): largest "
            f"per-round difference {max(gaps):.2g} over {'/'.join(map(str, sorted(lengths)))} rounds.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", help="an MNIST npz (x_train, y_train, x_test, y_test); default: synthetic")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="runs of each framework, alternating")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-client", type=int, default=600, help="synthetic: training examples per client")
    p.add_argument("--test", type=int, default=10000, help="synthetic: test examples")
    p.add_argument("--noise", type=float, default=4.0,
                   help="synthetic: class noise (1.0 is learnt perfectly in one round; 4.0 leaves room)")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flower-python", default="/work/benchenv/bin/python",
                   help="python of the bench env with flwr[simulation] and torch")
    p.add_argument("--flower-client-cpus", type=float, default=1.0,
                   help="Ray CPUs per ClientApp actor, which Ray also gives the actor as its OMP (torch) "
                        "threads. Default 1: one single-threaded actor per core, as fedctl runs one client "
                        "process per core; Flower's own default, 2, makes one 2-thread actor here, which "
                        "was 10-50x slower per round on a busy 2-core machine")
    p.add_argument("--fedctl-processes", type=int, default=1,
                   help="fedctl client processes on this machine (0: fedctl's default, one per core). "
                        "Default 1: a round's sampled clients then train as ONE vectorised computation, "
                        "which on a CPU is bound by per-step overhead, not by the number of clients: two "
                        "processes of 5 clients each take as long as one of 10 and contend for the cores")
    p.add_argument("--skip", action="append", default=[], choices=["fedctl", "flower", "limit"])
    p.add_argument("--sample-interval", type=float, default=0.25, help="seconds between memory samples")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for one run")
    p.add_argument("--keep", help="an empty (or new) folder to work in and keep, instead of a temporary one")
    a = p.parse_args()
    if "flower" not in a.skip and not os.access(a.flower_python, os.X_OK):
        raise SystemExit(f"--flower-python {a.flower_python} is not there: make the bench env "
                         "(see this script's docstring) or pass --skip flower")
    become_subreaper()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-flower-torch-") as d:
        folder = Path(a.keep or d)  # --keep: data, configs, logs and metrics stay there to read
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            raise SystemExit(f"--keep {folder}: the folder is not empty")
        _, facts = prepare(a, folder)
        runners = {"fedctl": run_fedctl, "flower": run_flower, "limit": run_limit}
        results: dict[str, list[dict]] = {k: [] for k in runners}
        for i in range(1, a.repeats + 1):
            for name, fn in runners.items():
                if name not in a.skip:
                    results[name].append(fn(i, a, folder))
                    r = results[name][-1]
                    print(f"{name} #{i}: {r['round_s']:.3f} s/round; each round: "
                          + " ".join(f"{x:.2f}" for x in r["cadence"]), file=sys.stderr)
        loads.append(os.getloadavg()[0])
        print(table(results, a, facts, loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
