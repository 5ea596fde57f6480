"""metrics.jsonl, status.json and human log lines (formats fixed in docs/contracts.md)."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

from .checkpoint import atomic_write_json, json_safe


def log(role: str, message: str, level: str = "info") -> None:
    """One human-readable line on stderr (fedctl redirects it to server.log / client-k.log)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {level.upper():7s} [{role}] {message}", file=sys.stderr, flush=True)


class MetricsWriter:
    """Appends JSON lines to metrics.jsonl (thread-safe; each line flushed whole)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, obj: dict) -> None:
        """Append one object as a line of strict JSON: a NaN loss is written as null."""
        line = json.dumps(json_safe(obj), separators=(", ", ": "), allow_nan=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def event(self, level: str, message: str, client: int | None = None,
              round_no: int | None = None) -> None:
        self.write({"type": "event", "time": time.time(), "level": level, "message": message,
                    "client": client, "round": round_no})

    def round_lines(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash
                if obj.get("type") == "round":
                    out.append(obj)
        return out


def write_status(run_dir: str, **fields) -> None:
    atomic_write_json(os.path.join(run_dir, "status.json"), {**fields, "time": time.time()})
