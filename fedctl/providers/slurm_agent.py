"""The agent inside a fedctl Slurm allocation: starts FL processes as job steps when fedctl asks.

This file is copied into the run's folder on the shared filesystem and run by the allocation's batch
script (``python3 slurm_agent.py RUN_DIR``), on the allocation's first node, so nothing long-running
is left on the login node and Slurm accounts, limits and kills every process. It uses the standard
library only (the compute nodes' Python may have nothing else).

The protocol is files in ``RUN_DIR`` (fedctl writes each file whole, then renames it into place):

- ``steps/NAME.json`` = ``{"node": "fl2", "argv": [...], "env": {...}, "het_group": "1"}``: start
  one job step, ``srun [--het-group=N] --overlap -N1 -n1 -w NODE --job-name NAME`` running ``argv``
  (``het_group``: the node's component of a heterogeneous allocation; absent or null otherwise);
  its output goes to ``logs/NAME.out``.
- ``status/NAME.json`` (written by the agent): ``{"state": "running" | "exited", "code": N}``.
- ``stop``: end every step (SIGTERM to each srun, which Slurm forwards to the step) and exit; the
  allocation ends with the batch script.
- ``agent.json`` (written by the agent at start): the job id and node list it sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: how often the agent looks for new requests (seconds): its own loop, inside the allocation
POLL_S = 0.2


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def step_argv(name: str, node: str, argv: list, het_group: object = None) -> list:
    """The srun command line of one step on ``node`` (of het group ``het_group`` in a heterogeneous
    allocation: srun's default is group 0, the server's node)."""
    het = [] if het_group is None else ["--het-group=%d" % int(str(het_group))]
    return ["srun", *het, "--overlap", "-N1", "-n1", "-w", node, f"--job-name={name}", "--kill-on-bad-exit=1", *argv]


def main(run_dir: str) -> int:
    """Serve requests in ``run_dir`` until ``stop`` appears; 0 when stopped cleanly."""
    root = Path(run_dir)
    for sub in ("steps", "status", "logs"):
        (root / sub).mkdir(exist_ok=True)
    _write(root / "agent.json", {"job": os.environ.get("SLURM_JOB_ID"), "nodes": os.environ.get("SLURM_JOB_NODELIST"),
                                 "pid": os.getpid()})
    running: dict = {}
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_a: stopping.__setitem__(0, True))
    while not stopping[0] and not (root / "stop").exists():
        for req in sorted((root / "steps").glob("*.json")):
            name = req.stem
            if name in running:
                continue
            spec = json.loads(req.read_text())
            env = {**os.environ, **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}}
            with open(root / "logs" / f"{name}.out", "ab") as log:
                argv = step_argv(name, spec["node"], list(spec["argv"]), spec.get("het_group"))
                running[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL)
            _write(root / "status" / f"{name}.json", {"state": "running"})
        for name, proc in running.items():
            code = proc.poll()
            status = root / "status" / f"{name}.json"
            if code is not None and json.loads(status.read_text()).get("state") != "exited":
                _write(status, {"state": "exited", "code": code})
        time.sleep(POLL_S)
    for proc in running.values():
        if proc.poll() is None:
            proc.terminate()
    for name, proc in running.items():
        code = proc.wait()
        _write(root / "status" / f"{name}.json", {"state": "exited", "code": code})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
