"""Helpers shared by the echo server and client (stdlib only)."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time


def log(role: str, message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{role}] {message}", flush=True)


def read_config(path: str) -> dict:
    """Read the resolved config.yaml: PyYAML when present, else JSON, else top-level scalars only."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # noqa: PLC0415 - optional on hosts

        return yaml.safe_load(text) or {}
    except ImportError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        pass
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(\S.*?)\s*$", line)
        if not m:
            continue
        value = m.group(2)
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                continue
        if value in ("null", "~"):
            value = None
        out[m.group(1)] = value
    return out


def write_json_atomic(path: str, data: object) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_token(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()
