"""``fedctl instances`` on a real Slurm cluster (``slurm_cluster.py``): fedctl's jobs of this user,
whose they are, and ``--sweep`` cancelling this folder's orphans and nothing else.

The orphan is a real fedctl allocation whose state was deleted after provision; beside it, a job of
another fedctl folder (another origin comment) and a job named like fedctl's without fedctl's
comment, both submitted with sbatch here. fedctl runs as its console script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.slurm_cluster import SlurmCluster
from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
ECHO = Path(__file__).resolve().parents[2] / "tests" / "payloads" / "echo"



def _fedctl(proj: Path, slurm: SlurmCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**slurm.env(), "COLUMNS": "200", "FEDCTL_POLL_S": "0.2"}
    return subprocess.run([FEDCTL or "fedctl", *args], cwd=proj, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _json(res: subprocess.CompletedProcess[str]) -> Any:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout)


def _whose(proj: Path, slurm: SlurmCluster, *args: str) -> dict[str, str]:
    return {j["id"]: j["whose"] for j in _json(_fedctl(proj, slurm, "instances", "--json", *args))["jobs"]}


def _squeue(slurm: SlurmCluster) -> set[str]:
    return set(slurm.run(["squeue", "-h", "-o", "%i"]).stdout.split())


def _sbatch(slurm: SlurmCluster, *args: str) -> str:
    return slurm.run(["sbatch", "--parsable", "--time=10", *args, "--wrap", "sleep 600"]).stdout.strip()


def test_instances_lists_fedctl_jobs_and_sweep_cancels_only_this_folders_orphans(slurm: SlurmCluster,
                                                                                 tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO), "rounds": 5}))
    (proj / "slurm.yaml").write_text(yaml.safe_dump({"provider": "slurm", "defaults": {"python": sys.executable},
                                                     "slurm": {"partition": "debug", "nodes": 1, "time": "10"}}))
    res = _fedctl(proj, slurm, "provision", "--clients", "1", "-i", "slurm.yaml", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    state = json.loads((proj / ".fedctl" / "state.json").read_text())
    job = {h["info"]["machine"]["id"] for h in state["hosts"]}.pop()
    other = _sbatch(slurm, "-J", "fedctl-20260101-000000-abcd", "--comment=fedctl-origin=0123456789abcdef")
    lookalike = _sbatch(slurm, "-J", "fedctl-20260101-000000-ef01")
    try:
        # without -i: the folder's run says where; its job is this run's
        assert _whose(proj, slurm) == {job: "this run", other: "other folder",
                                       lookalike: "not fedctl's (no origin comment)"}
        (proj / ".fedctl" / "state.json").unlink()  # the run is forgotten; its job goes on
        assert _whose(proj, slurm, "-i", "slurm.yaml")[job] == "orphan"
        listed = _fedctl(proj, slurm, "instances", "-i", "slurm.yaml")
        assert "1 orphan job(s) hold an allocation" in listed.stderr, listed.stdout + listed.stderr
        swept = _json(_fedctl(proj, slurm, "instances", "-i", "slurm.yaml", "--sweep", "--yes", "--json"))
        assert swept == {"cancelled": [job], "left": []}
        assert _squeue(slurm) == {other, lookalike}  # the other folder's and the lookalike are left alone
        # --any-folder takes another folder's job too, never one without fedctl's comment
        swept = _json(_fedctl(proj, slurm, "instances", "-i", "slurm.yaml", "--sweep", "--any-folder", "--yes",
                              "--json"))
        assert swept == {"cancelled": [other], "left": []}
        assert _squeue(slurm) == {lookalike}
        assert _json(_fedctl(proj, slurm, "instances", "-i", "slurm.yaml", "--sweep", "--any-folder", "--yes",
                             "--json")) == {"cancelled": [], "left": []}
    finally:
        slurm.run(["scancel", other, lookalike, job], check=False)
        wait_until(lambda: not _squeue(slurm), 60, what="every job gone")
