"""A fake ``nvidia-smi`` for tests: answers the queries fedctl sends, for a chosen number of GPUs.

``install(folder, gpus)`` writes an executable ``nvidia-smi`` there; put the folder first on PATH
(this machine's for the local provider, a host's ``environment: {PATH: ...}`` for sshd hosts).
Compute apps are the processes of this machine whose environment has CUDA_VISIBLE_DEVICES=<index>
(what fedctl sets), each shown holding 100 MiB of that GPU, so ``watch`` can map GPU memory to a
run's processes as on a real GPU host.

Hostile output seen on real hosts, on request: ``warning`` is printed on stdout before the rows of
every GPU query (a corrupt infoROM does that, with exit 0); ``memory`` replaces memory.total
(e.g. "²", which passes ``str.isdigit``); with 0 GPUs ``no_devices_exit`` is the exit status of
"No devices were found" (6 as nvidia-smi does, or 0 as some driver versions do).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

_SCRIPT = r'''
import os, sys
GPUS = {gpus}
MEM = {memory!r}
WARNING = {warning!r}
NO_DEVICES_EXIT = {no_devices_exit}
def gpu(i):
    return {{"index": str(i), "uuid": "GPU-fake-%d" % i, "name": "Fake GPU", "utilization.gpu": "%d" % (10 * i),
            "memory.used": str(100 * len(apps(i))), "memory.total": MEM, "temperature.gpu": "40",
            "power.draw": "50.0", "driver_version": "550.0"}}
def apps(i):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = open("/proc/%s/environ" % name, "rb").read().split(b"\0")
        except OSError:
            continue
        if b"CUDA_VISIBLE_DEVICES=%d" % i in env:
            out.append(name)
    return out
args = sys.argv[1:]
if not args:
    print("fake nvidia-smi: %d GPU(s)" % GPUS)
    sys.exit(0)
if GPUS == 0:
    print("No devices were found")
    sys.exit(NO_DEVICES_EXIT)
q = next((a for a in args if a.startswith("--query-gpu=")), None)
if q:
    if WARNING:
        print(WARNING)
    fields = q.split("=", 1)[1].split(",")
    for i in range(GPUS):
        g = gpu(i)
        print(", ".join(g.get(f, "[N/A]") for f in fields))
    sys.exit(0)
q = next((a for a in args if a.startswith("--query-compute-apps=")), None)
if q:
    fields = q.split("=", 1)[1].split(",")
    for i in range(GPUS):
        for pid in apps(i):
            row = {{"pid": pid, "gpu_uuid": "GPU-fake-%d" % i, "used_memory": "100", "process_name": "python"}}
            print(", ".join(row.get(f, "[N/A]") for f in fields))
    sys.exit(0)
print("fake nvidia-smi: unsupported arguments " + " ".join(args), file=sys.stderr)
sys.exit(2)
'''


#: what nvidia-smi prints on stdout, with exit 0, on a GPU whose infoROM is corrupt
INFOROM_WARNING = "WARNING: infoROM is corrupted at gpu 0000:01:00.0"


def install(folder: str | os.PathLike[str], gpus: int, *, warning: str = "", memory: str = "16384",
            no_devices_exit: int = 6) -> Path:
    """Write ``folder/nvidia-smi`` reporting ``gpus`` GPUs; return its path. ``warning``, ``memory``
    and ``no_devices_exit`` make its output hostile (see the module's docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!{sys.executable}\n" + _SCRIPT.format(gpus=int(gpus), memory=str(memory), warning=warning,
                                                            no_devices_exit=int(no_devices_exit)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe
