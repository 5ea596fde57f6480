"""Atomic checkpoints: global weights + strategy state (npz, no pickle) + round and RNG state (JSON).

Writes ckpt-<round>.npz first, then commits by replacing checkpoint.json (which names that npz);
a crash at any point leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None.

    json.dumps writes NaN / Infinity by default, which is not JSON: every strict reader of
    metrics.jsonl or summary.json (fedctl's among them) then loses the line.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (a power loss must not bring the old file back)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as one .npz: temp file, fsync, rename, fsync of the folder.

    A crash at any point leaves either the previous file or the new one, never a torn file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)


def load_arrays(path: str) -> dict[str, np.ndarray] | None:
    """The arrays `save_arrays` wrote (no pickle), or None when there is no file yet.

    Raises ValueError when the file is not an .npz of plain arrays."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.array(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a saved state file ({e})") from None


def atomic_write_json(path: str, obj) -> None:
    """Write `obj` as strict JSON (non-finite floats become null) via a rename."""
    atomic_write_bytes(path, json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False).encode())


def save(ckpt_dir: str, round_no: int, weights: np.ndarray, strategy_state: dict[str, np.ndarray],
         info: dict) -> None:
    """Save the state after `round_no` completed rounds; `info` must be JSON-serialisable."""
    os.makedirs(ckpt_dir, exist_ok=True)
    name = f"ckpt-{round_no:06d}.npz"
    tmp = os.path.join(ckpt_dir, f".{name}.tmp.{os.getpid()}")
    arrays = {"weights": weights, **{f"strategy__{k}": v for k, v in strategy_state.items()}}
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(ckpt_dir, name))
    atomic_write_json(os.path.join(ckpt_dir, "checkpoint.json"),
                      {"round": round_no, "file": name, "info": info})
    for old in os.listdir(ckpt_dir):  # keep only the committed one
        if old.startswith("ckpt-") and old.endswith(".npz") and old != name:
            os.remove(os.path.join(ckpt_dir, old))


def load(ckpt_dir: str) -> tuple[int, np.ndarray, dict[str, np.ndarray], dict] | None:
    """(round, weights, strategy_state, info) of the last committed checkpoint, or None."""
    meta_path = os.path.join(ckpt_dir, "checkpoint.json")
    if not os.path.exists(meta_path):
        return None
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    with np.load(os.path.join(ckpt_dir, meta["file"]), allow_pickle=False) as z:
        weights = np.array(z["weights"], np.float32)
        state = {k[len("strategy__"):]: np.array(z[k]) for k in z.files if k.startswith("strategy__")}
    return int(meta["round"]), weights, state, meta["info"]
