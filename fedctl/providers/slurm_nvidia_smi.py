#!/usr/bin/env python3
"""``nvidia-smi`` as a host of a fedctl Slurm run sees it: only the GPUs the allocation gave the host.

Copied into the run folder as ``bin/nvidia-smi`` on the shared filesystem; the node connector puts
that folder first on PATH in every step (only where the node has a real ``nvidia-smi``) and exports
the host's allocated indices as ``FEDCTL_SLURM_GPUS`` ("0,1", "" for none). A node may have more GPUs
than the job holds (other jobs use them), and Slurm's steps see them all without cgroup device
constraints, so fedctl's host check and watch would count and show GPUs that are not the run's.

- ``--query-gpu=F``: the real query with ``index`` prepended; rows of the allocated GPUs only, in
  the allocated order, the added column removed (so ``fedctl``'s facts list the allocation and its
  placement numbers them 0..n-1 in that order);
- ``--query-compute-apps=F``: the rows whose ``gpu_uuid`` is an allocated GPU's;
- anything else: the real nvidia-smi as it is.
A line that is not a row (a warning on stdout) is passed on unchanged: fedctl's parsers report it.
Standard library only (the compute nodes' Python may have nothing else).
"""

from __future__ import annotations

import os
import subprocess
import sys

ENV = "FEDCTL_SLURM_GPUS"


def real_nvidia_smi() -> str | None:
    """The first ``nvidia-smi`` on PATH that is not this file."""
    me = os.path.realpath(__file__)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        cand = os.path.join(folder or ".", "nvidia-smi")
        if os.path.realpath(cand) != me and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _query(real: str, args: list, i: int, extra_field: str) -> tuple:
    """Run ``args`` with ``extra_field`` prepended to the query at ``args[i]``."""
    key, fields = args[i].split("=", 1)
    changed = [*args[:i], f"{key}={extra_field},{fields}", *args[i + 1:]]
    res = subprocess.run([real, *changed], capture_output=True, text=True)
    return res.returncode, res.stdout, res.stderr


def _split(line: str) -> tuple:
    head, sep, rest = line.partition(",")
    return head.strip(), rest.lstrip() if sep else None


def main(args: list) -> int:
    """Answer as nvidia-smi would, restricted to ``$FEDCTL_SLURM_GPUS``."""
    real = real_nvidia_smi()
    if real is None:
        print("nvidia-smi: command not found", file=sys.stderr)
        return 127
    text = os.environ.get(ENV)
    if text is None:  # not a step of a GPU allocation: nothing to restrict
        os.execv(real, [real, *args])
    allowed = [x for x in text.split(",") if x]
    gpu_q = next((i for i, a in enumerate(args) if a.startswith("--query-gpu=")), None)
    app_q = next((i for i, a in enumerate(args) if a.startswith("--query-compute-apps=")), None)
    if gpu_q is not None:
        code, out, err = _query(real, args, gpu_q, "index")
        rows: dict = {}
        for line in out.splitlines():
            index, rest = _split(line)
            if rest is None or not index.isdigit():
                print(line)  # a warning: fedctl's parsers name it
            elif index in allowed:
                rows[index] = rest
        for index in allowed:
            if index in rows:
                print(rows[index])
        sys.stderr.write(err)
        return code
    if app_q is not None:
        code, out, err = _query(real, ["--query-gpu=uuid", "--format=csv,noheader"], 0, "index")
        uuids = {u for i, u in (_split(ln) for ln in out.splitlines()) if u is not None and i in allowed}
        code, out, err = _query(real, args, app_q, "gpu_uuid")
        for line in out.splitlines():
            uuid, rest = _split(line)
            if rest is None:
                print(line)
            elif uuid in uuids:
                print(rest)
        sys.stderr.write(err)
        return code
    if not allowed:
        print("No devices were found")
        return 6
    os.execv(real, [real, *args])
    return 0  # not reached: execv replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
