"""Slurm: a real test cluster (``slurm_cluster.py``: munged, slurmctld, four slurmd virtual nodes)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.slurm_cluster import SlurmCluster, slurm_available
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One cluster for this module's tests (started in well under a second); stopped at the end
    with no process left."""
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        assert cluster.leftover_pids() == []


def test_cluster_runs_cancels_and_leaves_no_job(slurm: SlurmCluster) -> None:
    """sbatch a job with a step on another node: squeue shows job and step; scancel ends both and
    their processes."""
    assert slurm.idle_nodes() == {"fl1", "fl2", "fl3", "fl4"}
    out = slurm.run(["sbatch", "--parsable", "-J", "smoke", "-N", "2",
                     "--wrap", "srun --overlap -N1 -n1 -w fl2 sleep 300 & sleep 300"]).stdout
    job = out.strip().split(";")[0]
    wait_until(lambda: slurm.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING",
               20, what=f"job {job} running")
    wait_until(lambda: f"{job}.0 fl2" in slurm.run(["squeue", "-h", "-s", "-j", job, "-o", "%i %N"]).stdout,
               20, what="its step on fl2")
    assert slurm.job_ids() == [job]
    job_procs = set(slurm.job_pids())
    assert job_procs, "the job's processes carry the cluster's name in their environment"
    slurm.run(["scancel", job])
    wait_until(lambda: not slurm.job_ids(), 20, what="squeue to show no job")
    wait_until(lambda: not (set(slurm.leftover_pids()) & job_procs), 20, what="the job's processes to end")
