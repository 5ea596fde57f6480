"""GPUs and the server's own node on a real Slurm cluster with fake GPUs (``slurm_cluster.py``).

Each node declares 4 fake GPUs (``Gres=gpu:4``, character devices made with mknod); a blocking job
holds GPUs 0-1 of every node, so the run's allocation gets GPUs 2-3: the indices fedctl must read
from ``scontrol show job -d`` and place its client processes on, while the node's (fake)
nvidia-smi shows all 4. The fake nvidia-smi (``tests/gpu/fake_nvidia_smi.py``) reaches the steps
through PATH (srun passes fedctl's environment on).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.gpu.fake_nvidia_smi import install
from tests.integration.slurm_cluster import SlurmCluster, mknod_permitted, running_cluster, slurm_available
from tests.waiting import wait_until

FEDCTL = shutil.which("fedctl")
pytestmark = pytest.mark.skipif(FEDCTL is None, reason="the fedctl console script is not installed")
ECHO = Path(__file__).resolve().parents[1] / "payloads" / "echo"
NODE_GPUS = 4


@pytest.fixture(scope="module")
def gpu_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A cluster whose nodes have 4 fake GPUs each (and a CPU partition), GPUs 0-1 of every node
    held by another job for the module's length."""
    reason = slurm_available() or mknod_permitted(tmp_path_factory.mktemp("mknod"))
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    with running_cluster(root, gpus_per_node=NODE_GPUS, cpu_partition="cpu") as cluster:
        script = root / "hold.sh"
        script.write_text("#!/bin/sh\nexec sleep 3600\n")
        script.chmod(0o755)
        held = cluster.run(["sbatch", "--parsable", "-J", "someone-else", "-N4", "--gpus-per-node=2",
                            f"--output={root / 'hold-%j.out'}", str(script)]).stdout.strip()
        wait_until(lambda: cluster.run(["squeue", "-h", "-j", held, "-o", "%T"]).stdout.strip() == "RUNNING",
                   30, interval=0.1, what="the job holding GPUs 0-1 of every node to run")
        cluster.held = held  # type: ignore[attr-defined]
        yield cluster


def _project(tmp_path: Path, slurm: dict[str, Any], fake: Path, rounds: int = 2000,
             placement: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
    proj = tmp_path / "proj"
    proj.mkdir()
    config = {"payload": str(ECHO), "rounds": rounds, "echo_round_s": 0.2, "placement": placement or {}}
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(config))
    section = {"partition": "debug", "time": "10", **slurm}
    (proj / "slurm.yaml").write_text(yaml.safe_dump({"provider": "slurm", "defaults": {"python": sys.executable},
                                                     "slurm": section}))
    return proj, {"COLUMNS": "200", "FEDCTL_POLL_S": "0.2", "PATH": f"{fake}:{os.environ['PATH']}"}


def _fedctl(proj: Path, cluster: SlurmCluster, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([FEDCTL or "fedctl", *args], cwd=proj, env=cluster.env({**os.environ, **env}),
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"fedctl {' '.join(args)}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def _state(proj: Path) -> dict[str, Any]:
    return json.loads((proj / ".fedctl" / "state.json").read_text())


def _our_jobs(cluster: SlurmCluster) -> list[str]:
    held = cluster.held  # type: ignore[attr-defined]
    return [j for j in cluster.job_ids() if j != held]


def test_clients_run_on_the_allocated_gpus_one_each_and_the_server_on_none(gpu_slurm: SlurmCluster,
                                                                           tmp_path: Path) -> None:
    fake = install(tmp_path / "gpu", NODE_GPUS).parent  # the node's nvidia-smi lists all 4
    proj, env = _project(tmp_path, {"nodes": 2, "gpus_per_node": 2}, fake)
    _fedctl(proj, gpu_slurm, env, "provision", "--clients", "4", "-i", "slurm.yaml", "--yes")
    try:
        _fedctl(proj, gpu_slurm, env, "start")
        st = _state(proj)
        job = st["hosts"][0]["info"]["machine"]["id"]
        hosts = {h["info"]["name"]: h for h in st["hosts"]}
        # the allocation got GPUs 2-3 of each node (0-1 are held): recorded per client host, none for the server
        assert {n: h["info"]["extra"].get("slurm_gpus") for n, h in hosts.items()} == {
            "slurm-server": "", "slurm-node-01": "2,3", "slurm-node-02": "2,3"}
        # the host check saw the allocation's 2 GPUs, not the node's 4 (nvidia-smi through a step)
        assert [len(hosts[n]["facts"]["gpus"]) for n in ("slurm-node-01", "slurm-node-02")] == [2, 2]
        assert hosts["slurm-server"]["facts"]["gpus"] == []
        seen: dict[str, list[str]] = {}
        for name in ("slurm-node-01", "slurm-node-02"):
            procs = [p for p in hosts[name]["processes"] if p["role"] == "client"]
            assert [(p["gpu"], len(p["client_ids"])) for p in procs] == [(0, 1), (1, 1)]
            seen[hosts[name]["info"]["address"]] = [_environ(p["pid"])["CUDA_VISIBLE_DEVICES"] for p in procs]
        # each client process sees exactly one GPU of the allocation; none shares one on its node
        assert sorted(seen) == sorted({hosts[n]["info"]["address"] for n in ("slurm-node-01", "slurm-node-02")})
        assert all(devices == ["2", "3"] for devices in seen.values()), seen
        server = next(p for p in hosts["slurm-server"]["processes"] if p["role"] == "server")
        assert _environ(server["pid"])["CUDA_VISIBLE_DEVICES"] == ""
        # watch's GPU view (nvidia-smi through a step on each node) shows the job's GPUs only
        snap = json.loads(_fedctl(proj, gpu_slurm, env, "watch", "--once", "--json").stdout)
        shown = {h["name"]: sorted(g["index"] for g in (h.get("gpu") or {}).get("gpus", [])) for h in snap["hosts"]}
        assert shown["slurm-node-01"] == shown["slurm-node-02"] == [2, 3], json.dumps(snap)[:3000]
        assert shown["slurm-server"] == []
        assert job in _our_jobs(gpu_slurm)
    finally:
        _fedctl(proj, gpu_slurm, env, "teardown", "--yes")
    assert _our_jobs(gpu_slurm) == []


def test_the_server_on_a_node_of_its_own_a_heterogeneous_job(gpu_slurm: SlurmCluster, tmp_path: Path) -> None:
    """server: own: the server's step runs on component 0's node (the cpu partition), which no
    client uses; with processes_per_gpu 2 a client host's two processes share its one GPU (and its
    memory); the run finishes, and teardown leaves no job."""
    fake = install(tmp_path / "gpu", NODE_GPUS).parent
    proj, env = _project(tmp_path, {"nodes": 2, "gpus_per_node": 1, "server": "own", "server_partition": "cpu"},
                         fake, rounds=100, placement={"processes_per_gpu": 2})
    _fedctl(proj, gpu_slurm, env, "provision", "--clients", "4", "-i", "slurm.yaml", "--yes")
    try:
        _fedctl(proj, gpu_slurm, env, "start")
        st = _state(proj)
        job = st["hosts"][0]["info"]["machine"]["id"]
        nodes = {h["info"]["name"]: h["info"]["address"] for h in st["hosts"]}
        server_node = nodes.pop("slurm-server")
        assert server_node not in set(nodes.values()) and len(set(nodes.values())) == 2, nodes
        # squeue: component 0 on the cpu partition, component 1 the clients' (on debug)
        comps = gpu_slurm.run(["squeue", "-h", "-j", job, "-o", "%i %P"]).stdout.splitlines()
        assert sorted(comps) == [f"{job}+0 cpu", f"{job}+1 debug"]
        # every step of the job, either component's (a step's id is its component's own job id .N)
        ids = set(gpu_slurm.run(["squeue", "-h", "-j", job, "-o", "%A"]).stdout.split())
        assert len(ids) == 2, ids
        steps = [ln.split() for ln in gpu_slurm.run(["squeue", "-h", "-s", "-o", "%i %j %N"]).stdout.splitlines()]
        step_nodes = {s[1].rsplit(".pid", 1)[0]: s[2] for s in steps if len(s) == 3 and s[0].split(".")[0] in ids}
        assert step_nodes["slurm-server-server"] == server_node, step_nodes
        assert {step_nodes[f"{n}-client-{k}"] for n in nodes for k in (0, 1)} == set(nodes.values()), step_nodes
        server = next(p for p in st["hosts"][0]["processes"] if p["role"] == "server")
        assert _environ(server["pid"])["CUDA_VISIBLE_DEVICES"] == ""
        for h in st["hosts"][1:]:
            assert h["info"]["extra"]["slurm_gpus"] == "2"  # the first GPU free on the node
            procs = [_environ(p["pid"]) for p in h["processes"] if p["role"] == "client"]
            assert [e["CUDA_VISIBLE_DEVICES"] for e in procs] == ["2", "2"]  # processes_per_gpu 2 allows it
            assert [e["FEDCTL_GPU_MEMORY_MB"] for e in procs] == [str(int(16384 * 0.9 / 2))] * 2
        wait_until(lambda: _round(proj) >= 100, 180, interval=0.5, what="the run's 100 rounds, server on its node")
    finally:
        _fedctl(proj, gpu_slurm, env, "teardown", "--yes")
    assert _our_jobs(gpu_slurm) == []
    summary = [p for p in (proj / "results").rglob("summary.json")]
    assert len(summary) == 1, list((proj / "results").rglob("*"))


def _round(proj: Path) -> int:
    metrics = [p for p in (proj / ".fedctl" / "local" / "slurm").rglob("metrics.jsonl")]
    rounds = [json.loads(ln).get("round", 0) for m in metrics for ln in m.read_text().splitlines() if ln.strip()]
    return max(rounds, default=0)
