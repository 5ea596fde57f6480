"""The flower payload end to end: a Flower app (examples/flower-numpy) through Flower's deployment
engine, on the local provider and on real sshd hosts on loopback; fedctl runs as a subprocess.

Flower's SuperNodes poll every 3 s, so a round takes several seconds whatever the model: these
tests keep rounds and clients few. They are skipped where flwr is not installed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fedctl.results.fmt import fmt_bytes
from tests.integration.test_lifecycle import fedctl, run_pids, state
from tests.waiting import wait_until

pytest.importorskip("flwr", reason="the flower payload needs flwr (pip install -e '.[flower]')")

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "flower-numpy"


def _project(tmp_path: Path, **cfg) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir(exist_ok=True)
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": "flower", "app": str(APP), **cfg}))
    return proj


def _metrics(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _no_flower_left(run_id: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "flower-super|flwr-serverapp|flwr-clientapp"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if run_id in line] + [str(p) for p in run_pids(run_id)]


def test_flower_app_on_the_local_provider(tmp_path):
    # no rounds given: the app's own num-server-rounds (3 in examples/flower-numpy), not fedctl's 20
    proj = _project(tmp_path, flower={"run_config": {"learning-rate": 0.3}})
    res = fedctl(proj, "run", "--clients", "2", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = state(proj)["run_id"]
    results = proj / "results" / run_id
    lines = _metrics(results)
    rounds = [ln for ln in lines if ln["type"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["rounds"] == 3 for r in rounds)  # what the ServerApp ran ([ROUND k/3])
    assert json.loads((results / "status.json").read_text())["rounds"] == 3  # what status/watch show
    assert json.loads((results / "report.json").read_text())["summary"]["rounds_planned"] == 3
    assert "finished: 3 rounds" in res.stdout
    assert all(r["clients_reported"] == 2 and r["client_failures"] == 0 for r in rounds)
    assert 0.0 < rounds[-1]["accuracy"] <= 1.0
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["status"] == "finished" and summary["flower_status"] == "finished:completed"
    logs = {p.name for p in (results / "logs").rglob("*.log")}
    assert {"superlink.log", "serverapp.log", "supernode-0.log", "supernode-1.log"} <= logs
    coloured = [p.name for p in (results / "logs").rglob("*.log") if "\x1b" in p.read_text(errors="replace")]
    assert coloured == []  # Flower's coloured level names are taken out: the logs are plain text
    # the run's traffic (Flower knows only its total): summary.md says what summary.json says
    payload_summary = json.loads((results / "summary.json").read_text())
    assert payload_summary["bytes_in"] > 0 and payload_summary["bytes_out"] > 0
    md = (results / "summary.md").read_text()
    assert (f"Traffic: {fmt_bytes(payload_summary['bytes_in'])} in, "
            f"{fmt_bytes(payload_summary['bytes_out'])} out.") in md
    assert (results / "app-output.tar.gz").is_file()  # what the app wrote to $FEDCTL_OUTPUT_DIR
    assert _no_flower_left(run_id) == []


def test_flower_app_over_three_sshd_hosts(sshd_fleet, tmp_path):
    fleet = sshd_fleet(3)
    proj = _project(tmp_path, rounds=3, server={"bind": fleet.hosts[0].address})
    fleet.write_inventory(proj / "inventory.yaml")
    fedctl(proj, "provision", "--clients", "6", "-i", "inventory.yaml", "--yes", check=True)
    fedctl(proj, "start", check=True, timeout=120)
    run_id = state(proj)["run_id"]
    # the app folder was shipped to every host, content-addressed
    for h in fleet.hosts:
        assert list(Path(h.workdir).glob("data/*/flower-numpy/pyproject.toml")), h.name

    def over() -> bool:
        snap = json.loads(fedctl(proj, "watch", "--once", "--json", timeout=60).stdout)
        return snap.get("phase") in ("finished", "failed") or bool((snap.get("summary") or {}).get("status"))

    wait_until(over, 150, interval=2, what="the run to end")
    fedctl(proj, "teardown", "--yes", check=True, timeout=120)
    results = proj / "results" / run_id
    lines = _metrics(results)
    rounds = [ln for ln in lines if ln["type"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3], lines
    assert all(r["clients_reported"] == 6 for r in rounds)
    assert lines[-1]["status"] == "finished"
    supernode_logs = sorted(p.name for p in (results / "logs").rglob("supernode-*.log"))
    assert supernode_logs == [f"supernode-{k}.log" for k in range(6)]
    assert _no_flower_left(run_id) == []
    assert [p for h in fleet.hosts for p in Path(h.workdir).rglob("*") if p.is_file()] == []


def test_a_wrong_server_address_fails_start_naming_host_and_reason(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    # what the clients dial: nothing listens there
    out = _start_dialing(tmp_path, fleet, "127.0.0.250", server={"bind": fleet.hosts[0].address})
    assert "h2" in out and "127.0.0.250" in out and "refused" in out, out


def _start_dialing(tmp_path: Path, fleet, address: str, start_timeout: float = 120, **cfg) -> str:
    """Provision a 2-client run whose clients dial ``address`` for the server, start it, check that
    start fails within 60 s, tear down (nothing of Flower left); return what start printed."""
    proj = _project(tmp_path, rounds=1, **cfg)
    inv = yaml.safe_load(fleet.write_inventory(proj / "inventory.yaml").read_text())
    inv["hosts"][0]["private_address"] = address
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    fedctl(proj, "provision", "--clients", "2", "-i", "inventory.yaml", "--yes", check=True)
    t0 = time.monotonic()
    res = fedctl(proj, "start", timeout=start_timeout)
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert took < 60, took
    run_id = state(proj)["run_id"]
    fedctl(proj, "teardown", "--yes", timeout=120)
    assert _no_flower_left(run_id) == []
    return out


def test_a_server_address_that_never_answers_fails_start_not_watch(sshd_fleet, tmp_path):
    """Clients dial an address that accepts connections and then says nothing (a black hole, not a
    refusal): start waits for the server to hear from its clients and fails with what they logged."""
    import socket
    import threading

    from tests.integration.sshd import _free_port

    hole_addr = "127.0.0.251"
    port = _free_port(hole_addr)
    hole = socket.create_server((hole_addr, port))
    held: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:
        hole.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(hole.accept()[0])  # accept and never answer
            except OSError:
                continue

    threading.Thread(target=swallow, daemon=True).start()
    try:
        fleet = sshd_fleet(2)
        out = _start_dialing(tmp_path, fleet, hole_addr, start_timeout=180,
                             server={"bind": fleet.hosts[0].address, "port": port}, flower={"connect_timeout_s": 15})
        assert "h2" in out and hole_addr in out, out
    finally:
        stop.set()
        hole.close()
        for s in held:
            s.close()


def test_a_killed_server_is_resumed_and_says_what_flower_can_do(tmp_path):
    """SIGKILL of the server side (wrapper and SuperLink) mid-run, then `start --resume`: the
    SuperLink restarts on its database, the payload says plainly that Flower starts the run again
    from round 1, the SuperNodes reconnect on their own, and the run finishes."""
    import os
    import signal

    proj = _project(tmp_path, rounds=2)
    fedctl(proj, "provision", "--clients", "2", check=True)
    fedctl(proj, "start", check=True, timeout=180)
    st = state(proj)
    run_id = st["run_id"]
    server = next(p for h in st["hosts"] for p in h["processes"] if p["role"] == "server")
    run_dir = Path(server["pidfile"]).parent
    metrics = run_dir / "metrics.jsonl"
    # kill it mid-run: after the first round line
    wait_until(lambda: metrics.exists() and '"type": "round"' in metrics.read_text(errors="replace"), 120,
               interval=0.5, what="round 1")
    os.killpg(server["pid"], signal.SIGKILL)

    def superlinks() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"flower-superlink.*{run_dir}"], capture_output=True,
                              text=True).stdout.split()

    for pid in superlinks():
        os.kill(int(pid), signal.SIGKILL)
    wait_until(lambda: not superlinks(), 10, what="the killed SuperLink to be gone")
    res = fedctl(proj, "start", "--resume", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: '"phase": "finished"' in fedctl(proj, "status", "--json").stdout, 240, interval=2,
               what="the resumed run to finish")
    log = (run_dir / "server.log").read_text(errors="replace")
    assert "cannot resume" in log or "already finished" in log, log[-2000:]
    fedctl(proj, "teardown", "--yes", check=True, timeout=180)
    lines = _metrics(proj / "results" / run_id)
    assert lines[-1]["type"] == "summary" and lines[-1]["status"] == "finished", lines[-3:]
    assert _no_flower_left(run_id) == []
