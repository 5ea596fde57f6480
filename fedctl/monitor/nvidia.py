"""Pure parsers for ``nvidia-smi --query-gpu`` / ``--query-compute-apps`` CSV output.

The probe runs (``--format=csv,noheader,nounits``)::

    nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory

``[N/A]`` / ``[Not Supported]`` fields become ``None`` (shown as "n/a", never as 0). A failing
nvidia-smi (driver not loaded, ...) gives a report with ``status="error"`` and its message; a host
without nvidia-smi gives ``status="none"``.

Every number is parsed strictly (ASCII digits: ``str.isdigit`` and ``int`` also take "²", "١" or
"1_000"), and a line that is not the queried format is reported, never counted as a GPU: nvidia-smi
prints warnings (a corrupt infoROM) and "No devices were found" on stdout, sometimes with exit 0.
The same rules serve the host facts (``parse_gpu_facts``) and this machine's GPU count
(``parse_gpu_indices``), so placement and ``watch`` agree on what a GPU is.
"""

from __future__ import annotations

import csv
import io
import logging
import re
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

#: this machine's GPU count (``fedctl.plan.local_gpu_count``): one index per line
GPU_INDEX_ARGS = ("--query-gpu=index", "--format=csv,noheader")

#: what nvidia-smi prints when the machine has the tool but no usable GPU
_NO_DEVICE_MARKERS = ("No devices were found",)

_UINT = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# a GPU's facts line: a name (no comma, no control character) and its memory in MiB
_FACT_LINE = re.compile(r"(?P<name>[^,\x00-\x1f\x7f]*[^,\s\x00-\x1f\x7f])[ \t]*,[ \t]*(?P<mem>[0-9]+)")
_BLANKS = " \t\r\n"  # only ASCII blanks are trimmed: str.strip() would also eat Unicode spaces

log = logging.getLogger("fedctl.gpu")


def parse_uint(text: str) -> int | None:
    """``"16384" -> 16384``; anything but ASCII digits (``"²"``, ``"1_000"``, ``"+1"``, ``"-1"``) -> None."""
    t = text.strip(_BLANKS)
    return int(t) if _UINT.fullmatch(t) else None


def _num(text: str) -> float | None:
    """``"62.50" -> 62.5``; ``"[N/A]"``, ``"[Not Supported]"``, ``""`` and every other text -> None.

    Strict on purpose: ``float`` takes ``"nan"``, ``"inf"``, ``"1_0"`` and non-ASCII digits."""
    t = text.strip(_BLANKS)
    return float(t) if _DECIMAL.fullmatch(t) else None


def _shown(line: str) -> str:
    """A line for a message: bounded, control characters escaped."""
    return repr(line[:120])


def parse_gpu_facts(lines: Iterable[object], warn: bool = True, where: str = "") -> tuple[list[str], list[str]]:
    """The lines of ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`` (the
    host facts' query) -> (one ``"NAME, MIB"`` line per GPU, the other non-blank lines). Each other
    line is never a GPU ("No devices were found", an infoROM warning, "Fake GPU, ²"); with ``warn``
    it is logged as a warning naming it and ``where`` (the host)."""
    gpus, other = [], []
    for raw in lines:
        line = raw.strip(_BLANKS) if isinstance(raw, str) else repr(raw)
        if not line:
            continue
        m = _FACT_LINE.fullmatch(line)
        if m:
            gpus.append(f"{m['name']}, {int(m['mem'])}")
            continue
        other.append(line)
        if warn:
            log.warning("%snvidia-smi: ignored a line that is not 'NAME, MEMORY_MIB': %s",
                        f"{where}: " if where else "", _shown(line))
    return gpus, other


def gpu_fact_lines(lines: Iterable[str], where: str = "") -> list[str]:
    """``parse_gpu_facts`` for the host facts: the GPU lines only (the others are logged, naming
    ``where``, the host)."""
    return parse_gpu_facts(lines, where=where)[0]


def gpu_memory_mib(fact: str) -> int | None:
    """The memory of one GPU from its facts line (``"NAME, MEMORY_MIB"``), or None when the line is
    not one (facts saved by an older fedctl may hold any line)."""
    m = _FACT_LINE.fullmatch(fact.strip(_BLANKS))
    return int(m["mem"]) if m else None


def parse_gpu_indices(text: str) -> tuple[list[int], list[str]]:
    """``nvidia-smi --query-gpu=index --format=csv,noheader`` -> (the distinct GPU indices, the other
    non-blank lines, each logged as a warning)."""
    indices: list[int] = []
    other = []
    for raw in text.splitlines():
        line = raw.strip(_BLANKS)
        if not line:
            continue
        i = parse_uint(line)
        if i is None:
            other.append(line)
            log.warning("nvidia-smi: ignored a line that is not a GPU index: %s", _shown(line))
        elif i not in indices:
            indices.append(i)
    return indices, other


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
        pid = parse_uint(row[0])
        if pid is None:
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
        index = parse_uint(row[0]) if len(row) == len(GPU_FIELDS) else None
        if index is None:  # not the queried format: a warning line, not a GPU
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
