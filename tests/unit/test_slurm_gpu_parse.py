"""The Slurm GPU allocation as fedctl reads and gives it out: ``scontrol show job -d``'s per-node GRES,
the hosts' shares, each process's CUDA_VISIBLE_DEVICES, squeue's heterogeneous jobs and the het sbatch line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedctl.providers.base import ProviderError
from fedctl.providers.slurm_config import SlurmHostSettings
from fedctl.providers.slurm_gpus import (
    GPUS_KEY,
    HET_GROUP_KEY,
    host_gpus,
    parse_indices,
    parse_job_gpus,
    place_hosts,
    share_gpus,
    cuda_devices_sh,
    visible_devices,
)
from fedctl.providers.slurm_jobs import _SEP, _merge_components, sbatch_argv
from tests.gpu.fake_nvidia_smi import install


def expand(nodes: str) -> list[str]:
    """``fl[1-2]`` -> fl1, fl2 (what ``scontrol show hostnames`` does, for the shapes used here)."""
    if "[" not in nodes:
        return nodes.split(",")
    head, rng = nodes[:-1].split("[")
    lo, hi = rng.split("-")
    return [f"{head}{i}" for i in range(int(lo), int(hi) + 1)]


# what scontrol show job -d printed on the test cluster (Slurm 22.05), a het job's two components
HET = """JobId=2 HetJobId=2 HetJobOffset=0 JobName=fedctl-r1
   JOB_GRES=(null)
     Nodes=fl1 CPU_IDs=1 Mem=0 GRES=
   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0
JobId=3 HetJobId=2 HetJobOffset=1 JobName=fedctl-r1
   JOB_GRES=gpu:4
     Nodes=fl2 CPU_IDs=1 Mem=0 GRES=gpu:2(IDX:2-3)
     Nodes=fl3 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0,3)
   TresPerNode=gres:gpu:2
"""


def test_each_nodes_allocated_gpus_are_read_from_scontrol() -> None:
    assert parse_job_gpus(HET, expand) == {"fl1": (), "fl2": (2, 3), "fl3": (0, 3)}
    # one line for several nodes (fl[1-2]), a typed GPU, another GRES beside it
    text = ("     Nodes=fl[1-2] CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)\n"
            "     Nodes=fl3 CPU_IDs=0-3 Mem=4000 GRES=gpu:a100:3(IDX:0-1,5),nic:1\n")
    assert parse_job_gpus(text, expand) == {"fl1": (0,), "fl2": (0,), "fl3": (0, 1, 5)}
    assert parse_indices("0-1,3") == (0, 1, 3)


@pytest.mark.parametrize("gres, words", [
    ("gpu:2(IDX:0)", "1 index(es) for 2 GPU(s)"),  # the count and the indices disagree
    ("gpu:2(IDX:N/A)", "not a GPU index"),
    ("gpu:2(IDX:1-0)", "not a GPU range"),
    ("gpu:2(IDX:0-99999)", "not a GPU index"),
    ("gpu:2(IDX:0,0)", "names a GPU twice"),
    ("gpu:2", "cannot read the GPUs"),  # no indices at all: placement must not guess
    ("gpu:2(IDX:0-1),gpu:x", "cannot read the GPUs"),
])
def test_a_gres_entry_that_is_not_understood_is_an_error_not_a_guess(gres: str, words: str) -> None:
    with pytest.raises(ProviderError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_job_gpus(f"     Nodes=fl1 CPU_IDs=0 Mem=0 GRES={gres}\n", expand)


def test_a_node_given_gpus_twice_and_an_endless_output_are_refused() -> None:
    twice = "     Nodes=fl1 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)\n" * 2
    with pytest.raises(ProviderError, match="twice"):
        parse_job_gpus(twice, expand)
    with pytest.raises(ProviderError, match="lines"):
        parse_job_gpus("x\n" * 100_001, expand)


def test_hosts_get_nodes_and_disjoint_gpu_shares_and_the_server_none() -> None:
    hosts = [("srv", True), ("c1", False), ("c2", False), ("c3", False)]
    got = place_hosts(hosts, ["fl1"], ["fl1", "fl2"], {"fl1": (2, 3), "fl2": (0, 1)}, het=False)
    # c1 and c3 share node fl1: each gets one of its two GPUs, never the same
    assert got == {"srv": ("fl1", {GPUS_KEY: ""}), "c1": ("fl1", {GPUS_KEY: "2"}),
                   "c2": ("fl2", {GPUS_KEY: "0,1"}), "c3": ("fl1", {GPUS_KEY: "3"})}
    own = place_hosts(hosts[:3], ["fl4"], ["fl2", "fl3"], None, het=True)
    assert own == {"srv": ("fl4", {HET_GROUP_KEY: "0"}), "c1": ("fl2", {HET_GROUP_KEY: "1"}),
                   "c2": ("fl3", {HET_GROUP_KEY: "1"})}
    assert share_gpus((0, 1, 2), 2) == [(0, 1), (2,)]


def test_a_process_sees_the_allocated_gpu_it_was_placed_on_and_the_server_none() -> None:
    assert visible_devices((2, 3), "0") == "2" and visible_devices((2, 3), "1") == "3"
    assert visible_devices((2, 3), "") == "" and visible_devices((2, 3), None) == ""
    with pytest.raises(ProviderError, match="placed on GPU 2"):
        visible_devices((2, 3), "2")
    assert host_gpus({}) is None and host_gpus({GPUS_KEY: ""}) == () and host_gpus({GPUS_KEY: "2,3"}) == (2, 3)


@pytest.mark.parametrize("step_env, index, expect", [
    ({}, "3", "3"),  # no GPUs given to the step by Slurm: the absolute index
    ({"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}, "3", "3"),  # unconstrained: absolute
    ({"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, "3", "1"),  # cgroup-constrained: from 0
    ({"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, "", ""),  # placed on none: sees none
])
def test_the_step_sets_the_gpu_in_its_own_numbering(step_env: dict, index: str, expect: str) -> None:
    env = {"PATH": os.environ["PATH"], **step_env}
    out = subprocess.run(["sh", "-c", cuda_devices_sh(index) + 'printf %s "$CUDA_VISIBLE_DEVICES"'], env=env,
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == expect


def test_squeue_rows_of_a_heterogeneous_job_are_one_job() -> None:
    row = lambda i, st, nodes: _SEP.join((i, "fedctl-r1", "fedctl-origin=o", st, "None", nodes))  # noqa: E731
    jobs = _merge_components("\n".join([row("7", "RUNNING", "fl1"), row("8+0", "RUNNING", "fl1"),
                                        row("8+1", "RUNNING", "fl[2-3]")]))
    assert [(j.id, j.state, j.nodes, j.components) for j in jobs] == [
        ("7", "RUNNING", "fl1", ()), ("8", "RUNNING", "fl1,fl[2-3]", ("fl1", "fl[2-3]"))]
    # one component still pending: the job is not running yet (no node list to use)
    pending = _merge_components("\n".join([row("8+0", "RUNNING", "fl1"), row("8+1", "PENDING", "")]))
    assert [(j.state, j.nodes) for j in pending] == [("PENDING", "")]


def test_server_own_submits_a_heterogeneous_job_server_first(tmp_path: Path) -> None:
    s = SlurmHostSettings(nodes=2, partition="gpu", server="own", server_partition="cpu", gpus_per_node=2,
                          constraint="a100", sbatch_args=("--exclusive",), account="proj")
    argv = sbatch_argv(s, "r1", "o", 2, tmp_path, None)
    server, clients = argv[:argv.index(":")], argv[argv.index(":") + 1:]
    assert "--partition=cpu" in server and "--nodes=1" in server and "--job-name=fedctl-r1" in server
    assert not any(a.startswith(("--gpus", "--constraint")) or a == "--exclusive" for a in server)
    assert {"--partition=gpu", "--nodes=2", "--gpus-per-node=2", "--constraint=a100", "--exclusive",
            "--job-name=fedctl-r1", "--comment=fedctl-origin=o", "--account=proj"} <= set(clients)
    assert clients[-1] == str(tmp_path / "alloc.sh")
    assert ":" not in sbatch_argv(SlurmHostSettings(nodes=2), "r1", "o", 2, tmp_path, None)


def test_the_nvidia_smi_a_step_sees_lists_only_the_hosts_gpus(tmp_path: Path) -> None:
    fake = install(tmp_path / "fake", 4).parent
    shim = Path(__file__).resolve().parents[2] / "fedctl" / "providers" / "slurm_nvidia_smi.py"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FEDCTL_SLURM_GPUS": "3,1"}

    def smi(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(shim), *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=30)

    facts = smi("--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    assert (facts.returncode, facts.stdout.splitlines()) == (0, ["Fake GPU, 16384"] * 2)
    rows = smi("--query-gpu=index,uuid", "--format=csv,noheader").stdout.splitlines()
    assert rows == ["3, GPU-fake-3", "1, GPU-fake-1"]  # in the allocated order: placement's 0 is GPU 3
    assert smi("--query-gpu=index", "--format=csv,noheader", FEDCTL_SLURM_GPUS="").stdout == ""
    # a process on GPU 2 (not the host's) is not listed; one on GPU 3 is
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": "3"})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": "2"})
    try:
        apps = smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader").stdout.splitlines()
        assert apps == [f"{holder.pid}, 100"]
    finally:
        for p in (holder, other):
            p.kill()
            p.wait()
