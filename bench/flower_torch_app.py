"""The Flower side of bench/flower_torch.py: Flower's quickstart-pytorch app on McMahan's MNIST 2NN.

Runs only in the bench environment (flwr[simulation] + torch, see bench/flower_torch.py), never in
fedctl's: bench/flower_torch.py starts it as

    /work/benchenv/bin/python bench/flower_torch_app.py --data DIR --rounds R --out result.json

The app follows examples/quickstart-pytorch of Flower 1.42 (a ClientApp with @app.train(), a
ServerApp with @app.main() that runs FedAvg.start with a centralized evaluate_fn), with the
workload's model and data instead of the quickstart's CIFAR CNN: a 784-200-200-10 ReLU net, plain
SGD (no momentum), the shards fedctl's fedavg_tf computes (DIR/shards.npz), the test set fedctl
evaluates on. Where the quickstart reads its settings from `context.run_config` (pyproject.toml),
this one sends them in the train ConfigRecord, because `run_simulation` takes no run config.

It runs the Simulation Runtime in this process with `flwr.simulation.run_simulation` (Flower's
Ray backend; `flwr run` on a local-simulation federation reaches the same `_run_simulation` through
a detached SuperLink and a flwr-simulation process, which only adds start-up). Each round's start
(configure_train) and end (the centralized evaluation after aggregation) go to --out as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """McMahan et al. 2017 '2NN': two hidden layers of 200 ReLU units (softmax in the loss)."""

    def __init__(self, features: int = 784, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 200), nn.ReLU(),
                                  nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# -- data: one cache per process (a Ray actor serves many virtual clients) --------------------------
_ARRAYS: dict[str, dict[str, np.ndarray]] = {}


def _arrays(folder: str) -> dict[str, np.ndarray]:
    """The prepared arrays, memory-mapped (as flwr_datasets' Arrow files are): an actor copies only
    the rows of the partition it trains, and the page cache is shared between actors."""
    if folder not in _ARRAYS:
        out = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r")
               for k in ("x_train", "y_train", "x_test", "y_test")}
        with np.load(os.path.join(folder, "shards.npz")) as f:
            out["shard_idx"], out["shard_off"] = f["idx"], f["off"]
        _ARRAYS[folder] = out
    return _ARRAYS[folder]


def load_data(folder: str, partition_id: int, batch_size: int) -> DataLoader:
    """The training loader of one client: its fedctl shard, shuffled each epoch."""
    a = _arrays(folder)
    idx = a["shard_idx"][a["shard_off"][partition_id]:a["shard_off"][partition_id + 1]]
    x = torch.from_numpy(np.ascontiguousarray(a["x_train"][idx], np.float32))
    y = torch.from_numpy(np.ascontiguousarray(a["y_train"][idx], np.int64))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def train_fn(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    """Plain SGD on cross-entropy, as fedavg_tf trains; returns the mean loss of the last epoch."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        total, seen = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(net(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
            seen += len(yb)
    return total / max(seen, 1)


def test_fn(net: Net, x: np.ndarray, y: np.ndarray, batch: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy on (x, y), in batches of 4096 as fedavg_tf's server evaluates."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch], np.float32))
            yb = torch.from_numpy(np.ascontiguousarray(y[s:s + batch], np.int64))
            out = net(xb)
            loss += float(criterion(out, yb))
            correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


# -- ClientApp --------------------------------------------------------------------------------------
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's partition (quickstart-pytorch's client_app.train)."""
    cfg = msg.content["config"]
    model = Net(int(cfg["features"]), int(cfg["classes"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = load_data(str(cfg["data"]), int(context.node_config["partition-id"]), int(cfg["batch-size"]))
    loss = train_fn(model, loader, int(cfg["local-epochs"]), float(cfg["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset),
                            "torch-threads": torch.get_num_threads(), "pid": os.getpid()})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


# -- ServerApp --------------------------------------------------------------------------------------
SETTINGS: dict = {}  # set by run() before the simulation starts; the ServerApp runs in this process
ROUNDS: dict[int, dict] = {}
CLIENT_PIDS: set[int] = set()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round starts (the round's end is its centralized evaluation)."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid):
        ROUNDS[server_round] = {"round": server_round, "start": time.time()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        for r in replies:
            if r.has_content():
                CLIENT_PIDS.add(int(r.content["metrics"]["pid"]))
        ROUNDS[server_round]["replies"] = len(replies)
        return super().aggregate_train(server_round, replies)


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralized evaluation on the whole test set, each round, as fedavg_tf's server does."""
    a = _arrays(SETTINGS["data"])
    model = Net(SETTINGS["features"], SETTINGS["classes"])
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, acc = test_fn(model, a["x_test"], a["y_test"])
    if server_round > 0:
        ROUNDS[server_round].update(end=time.time(), loss=loss, accuracy=acc)
    return MetricRecord({"accuracy": acc, "loss": loss})


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg over C*K sampled nodes a round, no federated evaluation, a centralized one each round."""
    s = SETTINGS
    strategy = TimedFedAvg(fraction_train=s["fraction"], fraction_evaluate=0.0,
                           min_train_nodes=s["per_round"], min_available_nodes=s["clients"])
    torch.manual_seed(s["seed"])
    train_config = ConfigRecord({"lr": s["lr"], "batch-size": s["batch_size"],
                                 "local-epochs": s["epochs"], "data": s["data"],
                                 "features": s["features"], "classes": s["classes"]})
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net(s["features"], s["classes"]).state_dict()),
                   train_config=train_config, num_rounds=s["rounds"], evaluate_fn=global_evaluate)


def run(args: argparse.Namespace) -> dict:
    """Run the simulation; return the round lines and the set-up it ran with."""
    from flwr.simulation import run_simulation  # noqa: PLC0415

    a = _arrays(args.data)
    SETTINGS.update(data=os.path.abspath(args.data), rounds=args.rounds, clients=args.clients,
                    fraction=args.fraction, per_round=max(1, round(args.fraction * args.clients)),
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    features=int(np.prod(a["x_train"].shape[1:])), classes=int(a["y_train"].max()) + 1)
    backend = {"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0}}
    t0 = time.time()
    run_simulation(server_app=server_app, client_app=app, num_supernodes=args.clients,
                   backend_config=backend)
    rounds = [ROUNDS[r] for r in sorted(ROUNDS)]
    if len(rounds) != args.rounds or any("end" not in r for r in rounds):
        raise SystemExit(f"the simulation finished {sum('end' in r for r in rounds)} of {args.rounds} rounds")
    import flwr  # noqa: PLC0415
    return {"rounds": rounds, "simulation_s": time.time() - t0, "flwr": flwr.__version__,
            "torch": torch.__version__, "server_torch_threads": torch.get_num_threads(),
            "client_cpus": args.client_cpus, "actors": len(CLIENT_PIDS)}


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with x_train.npy ... and shards.npz")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client-cpus", type=float, default=2.0,
                   help="Ray CPUs per ClientApp actor (Flower's default: 2)")
    p.add_argument("--out", required=True, help="JSON file for the round lines")
    args = p.parse_args(argv)
    res = run(args)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    # Ray's workers unpickle the ClientApp by module name: run it from the importable module, not
    # from __main__ (whose functions would be pickled by value, each with its own data cache).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import flower_torch_app  # noqa: PLC0415

    sys.exit(flower_torch_app.cli())
