"""ClientApp: trains and evaluates on the partition named by the SuperNode's node config."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_numpy.task import evaluate, load_partition, train

app = ClientApp()


def _data(context: Context):
    pid = int(context.node_config["partition-id"])
    parts = int(context.node_config["num-partitions"])
    cfg = context.run_config
    return load_partition(pid, parts, int(cfg["features"]), int(cfg["examples-per-client"]))


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    x, y, _, _ = _data(context)
    params = msg.content["arrays"].to_numpy_ndarrays()
    new = train(params, x, y, int(context.run_config["local-epochs"]), float(context.run_config["learning-rate"]))
    loss, acc = evaluate(new, x, y)
    content = RecordDict({
        "arrays": ArrayRecord(new),
        "metrics": MetricRecord({"train_loss": loss, "train_accuracy": acc, "num-examples": len(y)}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    _, _, x, y = _data(context)
    loss, acc = evaluate(msg.content["arrays"].to_numpy_ndarrays(), x, y)
    content = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_accuracy": acc, "num-examples": len(y)})})
    return Message(content=content, reply_to=msg)
