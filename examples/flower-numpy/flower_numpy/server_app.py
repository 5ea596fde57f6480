"""ServerApp: FedAvg over every connected SuperNode for num-server-rounds rounds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_numpy.task import init_params

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=1.0,
                      min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(init_params(int(cfg["features"]))),
                            num_rounds=int(cfg["num-server-rounds"]))
    # Under fedctl, $FEDCTL_OUTPUT_DIR is a folder that `fedctl results` collects.
    out = os.environ.get("FEDCTL_OUTPUT_DIR")
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        final = {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()}
        (path / "final_metrics.json").write_text(json.dumps(final, indent=1))
