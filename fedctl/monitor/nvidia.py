"""Pure parsers for ``nvidia-smi --query-gpu`` / ``--query-compute-apps`` CSV output.

The probe runs (``--format=csv,noheader,nounits``)::

    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory

``[N/A]`` / ``[Not Supported]`` fields become ``None`` (shown as "n/a", never as 0). A failing
nvidia-smi (driver not loaded, ...) gives a report with ``status="error"`` and its message; a host
without nvidia-smi gives ``status="none"``.
"""

from __future__ import annotations

import csv
import io
from typing import AbstractSet, Iterable, Mapping

from fedctl.monitor.snapshot import GpuHolder, GpuInfo, GpuReport

GPU_FIELDS = (
    "index",
    "uuid",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
)
APP_FIELDS = ("pid", "gpu_uuid", "used_memory")

QUERY_GPU_ARGS = f"--query-gpu={','.join(GPU_FIELDS)} --format=csv,noheader,nounits"
QUERY_APPS_ARGS = f"--query-compute-apps={','.join(APP_FIELDS)} --format=csv,noheader,nounits"

#: what nvidia-smi prints when the machine has the tool but no usable GPU
_NO_DEVICE_MARKERS = ("No devices were found",)


def _num(text: str) -> float | None:
    """``"62.50" -> 62.5``; ``"[N/A]"``, ``"[Not Supported]"``, ``""`` -> None."""
    t = text.strip()
    if not t or t.startswith("[") or t.upper() in {"N/A", "NA"}:
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _rows(text: str) -> list[list[str]]:
    rows = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if row and any(c.strip() for c in row):
            rows.append([c.strip() for c in row])
    return rows


def parse_compute_apps(text: str) -> list[tuple[int, str, float | None]]:
    """``--query-compute-apps`` CSV -> ``[(pid, gpu_uuid, used_mib), ...]`` (bad lines skipped)."""
    apps = []
    for row in _rows(text):
        if len(row) < 3:
            continue
        try:
            pid = int(row[0])
        except ValueError:
            continue
        apps.append((pid, row[1], _num(row[2])))
    return apps


def parse_gpus(
    query_text: str,
    exit_code: int = 0,
    apps_text: str = "",
    run_pids: AbstractSet[int] | Iterable[int] = frozenset(),
    labels: Mapping[int, str] | None = None,
) -> GpuReport:
    """Turn the two nvidia-smi outputs into a GpuReport.

    ``exit_code`` is nvidia-smi's exit status for the GPU query. ``run_pids`` are the pids that
    belong to this run (the process groups of its payload processes); their GPU memory is summed
    per GPU into ``run_mem_mib``; ``labels`` (pid -> server / client-k, for every pid of a payload
    process's group) says whose memory it is (``GpuInfo.processes``).
    """
    text = query_text.strip()
    if any(m in text for m in _NO_DEVICE_MARKERS):
        return GpuReport("none", error="nvidia-smi: no devices were found")
    rows = _rows(text) if exit_code == 0 else []
    gpus: list[GpuInfo] = []
    bad_lines: list[str] = []
    for row in rows:
        if len(row) < len(GPU_FIELDS):
            bad_lines.append(", ".join(row))
            continue
        try:
            index = int(row[0])
        except ValueError:
            bad_lines.append(", ".join(row))
            continue
        gpus.append(
            GpuInfo(
                index=index,
                uuid=row[1],
                name=row[2],
                util_pct=_num(row[3]),
                mem_used_mib=_num(row[4]),
                mem_total_mib=_num(row[5]),
                temp_c=_num(row[6]),
                power_w=_num(row[7]),
            )
        )
    if exit_code != 0 or (not gpus and text):
        message = _first_line(text) or f"nvidia-smi exited with {exit_code}"
        return GpuReport("error", error=message)
    if not gpus:
        return GpuReport("none")
    pids = set(run_pids)
    labels = labels or {}
    per_gpu: dict[str, tuple[float, list[int]]] = {}
    holders: dict[str, dict[str, tuple[int, float]]] = {}
    for pid, uuid, used in parse_compute_apps(apps_text):
        if pid in pids:
            total, plist = per_gpu.get(uuid, (0.0, []))
            per_gpu[uuid] = (total + (used or 0.0), plist + [pid])
            label = labels.get(pid)
            if label:
                first, mem = holders.setdefault(uuid, {}).get(label, (pid, 0.0))
                holders[uuid][label] = (first, mem + (used or 0.0))
    if per_gpu:
        gpus = [
            _with_run(g, *per_gpu[g.uuid], holders.get(g.uuid, {})) if g.uuid in per_gpu else g
            for g in gpus
        ]
    return GpuReport("ok", gpus=tuple(gpus), error=("unparsed: " + bad_lines[0]) if bad_lines else None)


def _with_run(g: GpuInfo, mem: float, pids: list[int], holders: Mapping[str, tuple[int, float]]) -> GpuInfo:
    import dataclasses

    procs = tuple(GpuHolder(label, pid, m) for label, (pid, m) in sorted(holders.items()))
    return dataclasses.replace(g, run_mem_mib=mem, run_pids=tuple(sorted(pids)), processes=procs)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""
