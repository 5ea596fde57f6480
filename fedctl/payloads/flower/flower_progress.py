"""Translate a ServerApp's log stream (``flwr log RUN_ID``) into fedctl round lines (stdlib only).

Flower's built-in strategies (``Strategy.start``: FedAvg, FedProx, FedAdam, ...) log each round as

    [ROUND 2/3]
    configure_train: Sampled 4 nodes (out of 4)
    aggregate_train: Received 4 results and 0 failures
        └──> Aggregated MetricRecord: {'train_loss': 0.47, 'train_accuracy': 0.91}
    configure_evaluate: Sampled 4 nodes (out of 4)
    aggregate_evaluate: Received 4 results and 0 failures
        └──> Aggregated MetricRecord: {'eval_loss': 0.52, 'eval_accuracy': 0.88}
    Global evaluation
        └──> MetricRecord: {'accuracy': 0.9}
    ...
    Strategy execution finished in 21.06s

and that is what a round line is made of. What is NOT in the stream: which SuperNodes (partition
ids) were sampled or answered (only how many), per-client timings and bytes, the reason of a failure
beyond Flower's "Received error in reply from node N" line. A ServerApp with its own loop (not
``Strategy.start``) logs none of this: its run still starts, finishes and is collected, with no
round lines.
"""

from __future__ import annotations

import ast
import math
import re
import time
from typing import Callable, Optional

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_SAMPLED = re.compile(r"(configure_train|configure_evaluate): Sampled (\d+) nodes \(out of (\d+)\)")
_RECEIVED = re.compile(r"(aggregate_train|aggregate_evaluate): Received (\d+) results and (\d+) failures")
_AGG = re.compile(r"└──> Aggregated MetricRecord: (\{.*\})")
_GLOBAL = re.compile(r"└──> MetricRecord: (\{.*\})")
_FINISHED = re.compile(r"Strategy execution finished in ([0-9.]+)s")
_NODE_ERROR = re.compile(r"Received error in reply from node (\d+): (.*)")


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line).rstrip("\r\n")


def _metrics(text: str) -> dict:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    if not isinstance(value, dict):
        return {}
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[str(k)] = float(v) if math.isfinite(float(v)) else None
    return out


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {(k if k.startswith(prefix) else prefix + k): v for k, v in metrics.items()}


def _pick(metrics: dict, word: str) -> Optional[float]:
    for k, v in metrics.items():
        if word in k.lower() and v is not None:
            return v
    return None


class RoundTracker:
    """Feed it log lines; it calls ``emit(round_line)`` when a round closes (at the next round's
    header or at the end of the strategy)."""

    def __init__(self, emit: Callable[[dict], None], clock: Callable[[], float] = time.time) -> None:
        self.emit = emit
        self.clock = clock
        self.current: Optional[dict] = None
        self.phase = ""  # "train" | "evaluate" | "global"
        self.rounds_total: Optional[int] = None
        self.last: Optional[dict] = None
        self.finished = False
        self.errors: list = []

    def feed(self, raw: str) -> None:
        line = strip_ansi(raw)
        m = _ROUND.search(line)
        if m:
            self.close()
            self.rounds_total = int(m.group(2))
            self.current = {"round": int(m.group(1)), "rounds": int(m.group(2)), "start": self.clock(),
                            "train": {}, "evaluate": {}, "server": {}, "errors": []}
            self.phase = ""
            return
        m = _FINISHED.search(line)
        if m:
            self.close()
            self.finished = True
            return
        cur = self.current
        if cur is None:
            return
        m = _SAMPLED.search(line)
        if m:
            self.phase = "train" if m.group(1).endswith("train") else "evaluate"
            cur[self.phase].update(sampled=int(m.group(2)), available=int(m.group(3)))
            return
        m = _RECEIVED.search(line)
        if m:
            self.phase = "train" if m.group(1).endswith("train") else "evaluate"
            cur[self.phase].update(results=int(m.group(2)), failures=int(m.group(3)))
            return
        m = _NODE_ERROR.search(line)
        if m:
            cur["errors"].append({"node": m.group(1), "reason": m.group(2)[:200]})
            return
        if "Global evaluation" in line:
            self.phase = "global"
            return
        m = _AGG.search(line)
        if m and self.phase in ("train", "evaluate"):
            cur[self.phase]["metrics"] = _metrics(m.group(1))
            return
        m = _GLOBAL.search(line)
        if m and self.phase == "global":
            cur["server"] = _metrics(m.group(1))

    def close(self) -> None:
        cur, self.current = self.current, None
        if cur is None:
            return
        train, ev, server = cur["train"], cur["evaluate"], cur["server"]
        line: dict = {"type": "round", "round": cur["round"], "rounds": cur["rounds"], "start": cur["start"],
                      "end": self.clock(), "sampled": [], "reported": [], "dropped": [], "clients": {},
                      "strategy": "flower"}
        line["clients_sampled"] = train.get("sampled")
        line["clients_available"] = train.get("available")
        line["clients_reported"] = train.get("results")
        line["client_failures"] = train.get("failures")
        line["eval_clients_reported"] = ev.get("results")
        line["eval_client_failures"] = ev.get("failures")
        tm = _prefixed("train_", train.get("metrics") or {})
        em = _prefixed("eval_", ev.get("metrics") or {})
        sm = _prefixed("server_", server or {})
        line.update(tm)
        line.update(em)
        line.update(sm)
        # what watch/status/results show: the server's evaluation, else the clients', else training
        for key in ("accuracy", "loss"):
            for source in (server or {}, ev.get("metrics") or {}, train.get("metrics") or {}):
                v = _pick(source, key)
                if v is not None:
                    line[key] = v
                    break
        if cur["errors"]:
            line["errors"] = cur["errors"][:20]
        line = {k: v for k, v in line.items() if v is not None}
        self.last = line
        self.emit(line)
