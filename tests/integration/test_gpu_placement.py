"""GPU placement with a fake nvidia-smi: one client process per GPU, each seeing only its GPU.

The fake answers the queries fedctl sends (tests/gpu/fake_nvidia_smi.py); it reaches an sshd host
through the host's ``environment: {PATH: ...}`` and the local provider through this machine's PATH.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from tests.gpu.fake_nvidia_smi import INFOROM_WARNING, install
from tests.integration.test_lifecycle import fedctl, project, state


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def _gpu_client_host(fleet, tmp_path: Path, gpus: int, per_gpu: int) -> Path:
    """A project whose client host (h2) sees a fake nvidia-smi with ``gpus`` GPUs on its PATH."""
    fake = install(tmp_path / f"gpu{gpus}", gpus).parent
    proj = project(tmp_path, fleet, rounds=300, round_s=0.2, placement={"processes_per_gpu": per_gpu})
    _put_on_path(proj, {1: fake})
    return proj


def _put_on_path(proj: Path, fakes: dict[int, Path]) -> None:
    """Host i of the inventory finds the fake nvidia-smi in ``fakes[i]`` first on its PATH."""
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    for i, fake in fakes.items():
        inv["hosts"][i]["environment"] = {"PATH": f"{fake}:$PATH"}
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))


def test_four_gpus_get_one_client_process_each(sshd_fleet, tmp_path):
    proj = _gpu_client_host(sshd_fleet(2), tmp_path, gpus=4, per_gpu=1)
    res = fedctl(proj, "provision", "--clients", "8", "-i", "inventory.yaml", "--yes", check=True)
    assert "GPU" in res.stdout or "gpu" in res.stdout
    fedctl(proj, "start", check=True)
    try:
        st = state(proj)
        client_host = st["hosts"][1]
        procs = [p for p in client_host["processes"] if p["role"] == "client"]
        assert [p["gpu"] for p in procs] == [0, 1, 2, 3]
        assert [len(p["client_ids"]) for p in procs] == [2, 2, 2, 2]
        for p in procs:
            env = _environ(p["pid"])
            assert env["CUDA_VISIBLE_DEVICES"] == str(p["gpu"])
            assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
            assert "FEDCTL_GPU_MEMORY_MB" not in env  # one process per GPU: memory growth is enough
        # the server's host has no GPU: nothing GPU-related is set there
        server = st["hosts"][0]["processes"][0]
        assert "CUDA_VISIBLE_DEVICES" not in _environ(server["pid"])
        res = fedctl(proj, "watch", "--once", "--json", check=True)
        snap = json.loads(res.stdout)
        text = json.dumps(snap)
        assert "GPU-fake-3" in text or "Fake GPU" in text
        held = [a for h in snap["hosts"] for g in h["gpu"]["gpus"] for a in g.get("processes", [])]
        assert {a["label"] for a in held} >= {"client-0", "client-1", "client-2", "client-3"}, text[:3000]
    finally:
        fedctl(proj, "teardown", "--yes")


def test_two_processes_per_gpu_share_its_memory(sshd_fleet, tmp_path):
    proj = _gpu_client_host(sshd_fleet(2), tmp_path, gpus=1, per_gpu=2)
    fedctl(proj, "provision", "--clients", "4", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True)
    try:
        procs = [p for p in state(proj)["hosts"][1]["processes"] if p["role"] == "client"]
        assert [p["gpu"] for p in procs] == [0, 0]
        for p in procs:
            env = _environ(p["pid"])
            assert env["CUDA_VISIBLE_DEVICES"] == "0"
            assert env["FEDCTL_GPU_MEMORY_MB"] == str(int(16384 * 0.9 / 2))
    finally:
        fedctl(proj, "teardown", "--yes")


def test_the_local_provider_on_a_two_gpu_machine_starts_one_client_process_per_gpu(tmp_path, monkeypatch):
    fake = install(tmp_path / "gpu2", 2).parent
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = {"payload": str(Path(__file__).resolve().parents[1] / "payloads" / "echo"), "rounds": 300,
           "echo_round_s": 0.2}
    (proj / "fedctl.yaml").write_text(yaml.safe_dump(cfg))
    fedctl(proj, "provision", "--clients", "6", check=True)
    fedctl(proj, "start", check=True)
    try:
        clients = [p for h in state(proj)["hosts"] for p in h["processes"] if p["role"] == "client"]
        assert sorted(p["gpu"] for p in clients) == [0, 1]
        for p in clients:
            assert _environ(p["pid"])["CUDA_VISIBLE_DEVICES"] == str(p["gpu"])
        server = next(p for h in state(proj)["hosts"] for p in h["processes"] if p["role"] == "server")
        # the server's host (this machine) has the GPUs but no clients of its own: it evaluates on GPU 0
        assert _environ(server["pid"])["CUDA_VISIBLE_DEVICES"] == "0"
    finally:
        fedctl(proj, "teardown", "--yes")


def test_nvidia_smi_lines_that_are_not_gpus_are_reported_not_placed_on(sshd_fleet, tmp_path):
    """h2 has one GPU, and nvidia-smi prints an infoROM warning before it (exit 0); h3 has the tool
    but no GPU, and nvidia-smi says "No devices were found" with exit 0; h4's one line has "²" for
    its memory. Each such line used to count as a GPU: h2 got processes on CUDA_VISIBLE_DEVICES=1,
    h3 on 0, and start crashed on h4 (int("²") for the memory two processes share)."""
    warned = install(tmp_path / "warned", 1, warning=INFOROM_WARNING).parent
    none = install(tmp_path / "none", 0, no_devices_exit=0).parent
    odd = install(tmp_path / "odd", 1, memory="²").parent
    proj = project(tmp_path, sshd_fleet(4), rounds=300, round_s=0.2, placement={"processes_per_gpu": 2})
    _put_on_path(proj, {1: warned, 2: none, 3: odd})
    res = fedctl(proj, "provision", "--clients", "6", "-i", "inventory.yaml", "--yes", check=True)
    for line in (INFOROM_WARNING, "No devices were found", "Fake GPU, ²"):
        assert repr(line) in res.stderr, res.stderr  # reported, by line
    fedctl(proj, "start", check=True)
    try:
        h2, h3, h4 = state(proj)["hosts"][1:]
        assert [h["facts"]["gpus"] for h in (h2, h3, h4)] == [["Fake GPU, 16384"], [], []]
        assert [h["client_gpus"] for h in (h2, h3, h4)] == [[0, 0], [None], [None]]
        procs = {h["info"]["name"]: [p for p in h["processes"] if p["role"] == "client"] for h in (h2, h3, h4)}
        assert [(p["gpu"], p["client_ids"]) for p in procs[h2["info"]["name"]]] == [(0, [0]), (0, [1])]
        for p in procs[h2["info"]["name"]]:
            env = _environ(p["pid"])
            assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["FEDCTL_GPU_MEMORY_MB"] == str(int(16384 * 0.9 / 2))
        for h, ids in ((h3, [2, 3]), (h4, [4, 5])):
            (p,) = procs[h["info"]["name"]]
            assert p["gpu"] is None and p["client_ids"] == ids
            assert "CUDA_VISIBLE_DEVICES" not in _environ(p["pid"])
    finally:
        fedctl(proj, "teardown", "--yes")
