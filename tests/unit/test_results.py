"""The results folder: real PNGs of the right size, the paper table, no secrets, compare."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.contract import read_metrics
from fedctl.results import PLOT_SIZE_PX, build_report, compare, participation_matrix, resolve_run, scrub
from fedctl.state import HostRecord, RunState

T0 = 1_764_000_000.0
TOKEN = "tok-3f9a8c1d2e7b4a6f9e0d1c2b3a4f5e6d"
PASSWORD = "hunter2-very-secret"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"


def write_metrics(path: Path, rounds: int = 6, clients: int = 4, strategy: str = "fedavg", speed: float = 0.1,
                  t0: float = T0) -> None:
    lines = []
    for r in range(1, rounds + 1):
        start = t0 + 10 * (r - 1)
        sampled = [c for c in range(clients) if (c + r) % 4 != 0]  # one client not sampled per round
        dropped = [{"id": sampled[0], "reason": "timeout"}] if r % 3 == 0 else []
        reported = [c for c in sampled if c not in {d["id"] for d in dropped}]
        lines.append({
            "type": "round", "round": r, "rounds": rounds, "start": start, "end": start + 8,
            "sampled": sampled, "reported": reported, "dropped": dropped,
            "clients": {str(c): {"examples": 100, "response_s": 0.5 + 0.1 * c + 0.01 * r} for c in reported},
            "loss": 1.0 / r, "accuracy": min(0.99, 0.5 + speed * r), "bytes_in": 1000, "bytes_out": 2000,
            "strategy": strategy,
        })
    lines.insert(2, {"type": "event", "time": t0, "level": "warning", "message": f"rejected update (token {TOKEN})"})
    lines.append({"type": "summary", "rounds_completed": rounds, "final_accuracy": lines[-1]["accuracy"],
                  "final_loss": 1.0 / rounds, "best_accuracy": lines[-1]["accuracy"], "wall_s": 10 * rounds - 2,
                  "status": "finished", "reason": None})
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))


def make_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunState:
    monkeypatch.setenv("FEDCTL_TEST_PW", PASSWORD)
    srv = HostRecord(
        info=HostInfo(name="srv", address="10.0.0.1", user="ubuntu", roles=("server",), price_per_hour=2.0,
                      identity_file="~/.ssh/id_ed25519", password_env="FEDCTL_TEST_PW",
                      extra={"api_token": TOKEN, "note": KEY, "zone": "eu-1"}),
        status="torn_down", workdir="/home/ubuntu/fedctl", acquired_at=T0 - 60, released_at=T0 + 120,
        facts={"python": "3.11.7", "imports": {"tensorflow": {"ok": True, "version": "2.21.0"}}},
    )
    cli = HostRecord(
        info=HostInfo(name="c1", address="10.0.0.2", roles=("client",), price_per_hour=1.0),
        status="torn_down", workdir="/home/ubuntu/fedctl", acquired_at=T0 - 60, released_at=T0 + 60,
        facts={"python": "3.11.7", "tensorflow": "2.21.0"},
    )
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    subprocess.run(["git", "init", "-q", str(exp_dir)], check=True)
    (exp_dir / "fedctl.yaml").write_text("rounds: 6\n")
    subprocess.run(["git", "-C", str(exp_dir), "-c", "user.name=t", "-c", "user.email=t@t", "add", "."], check=True)
    subprocess.run(["git", "-C", str(exp_dir), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    return RunState(
        run_id="20261124-171500-a1b2", phase="torn_down", hosts=[srv, cli], clients=4, rounds=6,
        config_path=str(exp_dir / "fedctl.yaml"), payload_name="fedavg_tf",
        experiment={"rounds": 6, "strategy": "fedavg", "budget": {"max_cost": 5, "max_hours": None, "idle_minutes": None},
                    "on_finish": "teardown", "auth": {"token": TOKEN, "password": PASSWORD}, "data": {"key_path": "/k"}},
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def colours(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return len(im.convert("RGB").getcolors(maxcolors=1 << 20) or [])


@pytest.fixture
def collected(tmp_path, monkeypatch):
    """A results folder as collect_raw leaves it (logs hold a token and a key by accident)."""
    out = tmp_path / "results" / "20261124-171500-a1b2"
    (out / "logs" / "srv").mkdir(parents=True)
    write_metrics(out / "metrics.jsonl")
    (out / "summary.json").write_text(json.dumps({"final_accuracy": 0.99}))
    (out / "final_model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (out / "logs" / "srv" / "server.log").write_text(f"starting with token {TOKEN}\n{KEY}password={PASSWORD}\nok\n")
    (out / "token").write_text(TOKEN)  # a careless collect must not leave it there
    return out, make_state(tmp_path, monkeypatch)


def test_build_report_writes_everything_a_paper_needs(collected):
    out, state = collected
    report = build_report(out, state, secrets=[TOKEN])
    for name in ("accuracy.png", "loss.png", "response_heatmap.png", "participation.png", "cost.png",
                 "summary.md", "config.yaml", "inventory.yaml", "versions.json", "cost.json", "report.json",
                 "metrics.jsonl", "final_model.weights.h5", "logs/srv/server.log"):
        assert (out / name).is_file(), name
    for plot in report.plots:
        assert png_size(out / plot) == PLOT_SIZE_PX
        assert colours(out / plot) > 2, f"{plot} is blank"
    s = report.summary
    assert s["rounds_completed"] == 6 and s["final_accuracy"] == pytest.approx(0.99) and s["strategy"] == "fedavg"
    assert s["dropped"] == 2 and s["best_round"] == 5
    assert s["cost"] == pytest.approx({"USD": 2.0 * 180 / 3600 + 1.0 * 120 / 3600})  # the ledger, released hosts
    md = (out / "summary.md").read_text()
    assert "| Run | Strategy | Clients | Rounds | Final accuracy" in md and "| 20261124-171500-a1b2 | fedavg | 4 | 6/6 |" in md
    assert "![accuracy.png](accuracy.png)" in md
    vers = json.loads((out / "versions.json").read_text())
    # versions of what the payload's manifest requires, by module name: fedctl knows no library
    assert vers["python"] == ["3.11.7"] and vers["packages"] == {"tensorflow": ["2.21.0"]}
    assert "tensorflow 2.21.0" in md
    assert vers["experiment_git"]["commit"] and len(vers["experiment_git"]["commit"]) == 40
    cost = json.loads((out / "cost.json").read_text())
    assert cost["budget"]["max_cost"] == 5 and cost["estimate"]["measured"]


def test_results_contain_no_password_token_or_key_material(collected):
    out, state = collected
    build_report(out, state, secrets=[TOKEN])
    assert not (out / "token").exists()
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (TOKEN.encode(), PASSWORD.encode(), b"-----BEGIN", b"b3BlbnNzaC1rZXktdjE"):
                assert secret not in data, f"{secret!r} leaked into {path.relative_to(out)}"
    inv = (out / "inventory.yaml").read_text()
    assert "password_env: FEDCTL_TEST_PW" in inv  # the NAME stays: the reader knows what was used
    assert "identity_file: ~/.ssh/id_ed25519" in inv and "host_key_policy: accept-new" in inv
    assert "zone: eu-1" in inv
    cfg = (out / "config.yaml").read_text()
    assert "key_path: /k" in cfg and "<removed>" in cfg
    assert "starting with token ***" in (out / "logs" / "srv" / "server.log").read_text()


def test_scrub_rules():
    data = {"password": "x", "password_env": "PW", "api_key": "k", "token_file": "/t", "tokens": 5,
            "nested": [{"secret": "s", "ok": "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----"}],
            "empty_token": None}
    assert scrub(data) == {"password": "<removed>", "password_env": "PW", "api_key": "<removed>", "token_file": "/t",
                           "tokens": 5, "nested": [{"secret": "<removed>", "ok": "<key material removed>"}],
                           "empty_token": None}


def test_report_without_metrics_or_prices_still_makes_images(tmp_path):
    state = RunState(run_id="r0", hosts=[HostRecord(info=HostInfo(name="h", address="x"), acquired_at=T0)])
    report = build_report(tmp_path / "r0", state, now=T0 + 10)
    assert report.warnings and "no metrics.jsonl" in report.warnings[0]
    for plot in report.plots:
        assert png_size(tmp_path / "r0" / plot) == PLOT_SIZE_PX


def test_participation_matrix_marks_dropped_and_unsampled(tmp_path):
    write_metrics(tmp_path / "m.jsonl", rounds=3)
    ids, rounds, status, resp = participation_matrix(read_metrics(str(tmp_path / "m.jsonl")), clients=5)
    assert ids == [0, 1, 2, 3, 4] and rounds == [1, 2, 3]
    assert [row[2] for row in status] == [2, 0, 1, 1, 0]  # round 3: 0 dropped, 1 not sampled, 4 never seen
    assert resp[0][2] != resp[0][2]  # NaN where dropped
    assert resp[2][2] == pytest.approx(0.73)


def test_compare_runs_on_one_plot_with_rounds_to_target(tmp_path):
    for name, strat, speed in (("a", "fedavg", 0.05), ("b", "fedprox", 0.1), ("c", "scaffold", 0.02)):
        (tmp_path / "results" / name).mkdir(parents=True)
        write_metrics(tmp_path / "results" / name / "metrics.jsonl", rounds=8, strategy=strat, speed=speed)
    runs = [resolve_run(n, tmp_path / "results") for n in ("a", "b", "c")]
    comp = compare(runs, tmp_path / "cmp" / "compare.png", target=0.7)
    rows = {r.run: r for r in comp.rows}
    assert rows["b"].rounds_to_target == 2 and rows["b"].seconds_to_target == pytest.approx(18)
    assert rows["a"].rounds_to_target == 4 and rows["c"].rounds_to_target is None
    assert png_size(comp.plot) == PLOT_SIZE_PX and colours(comp.plot) > 4
    table = comp.table.read_text()
    assert "| b | fedprox | 8 |" in table and "not reached" in table
    auto = compare(runs, tmp_path / "cmp" / "auto.png")
    assert auto.target == pytest.approx(min(0.5 + 0.02 * 8, 0.99))  # what every run reached
    assert all(r.rounds_to_target is not None for r in auto.rows)
    from fedctl.errors import UsageError

    with pytest.raises(UsageError):
        resolve_run("nope", tmp_path / "results")


def test_results_and_compare_commands(collected, tmp_path, capsys):
    from fedctl.cli.app import app
    from fedctl.cli.common import CliEnv, env, set_env
    from fedctl.state import StateStore

    out, state = collected
    root = out.parents[1]  # results/ sits next to .fedctl/
    StateStore(root / ".fedctl").save(state)
    other = root / "results" / "b"
    other.mkdir()
    write_metrics(other / "metrics.jsonl", strategy="fedprox", speed=0.2)
    old = env()
    set_env(CliEnv(state_dir=root / ".fedctl", clock=lambda: T0 + 600, interactive=False))
    try:
        app(args=["results", "--json"], standalone_mode=False)
        data = json.loads(capsys.readouterr().out)
        assert data["dir"] == str(out) and "summary.md" in data["files"] and len(data["plots"]) == 5
        app(args=["results", "compare", state.run_id, str(other), "--target", "0.8", "--json"],
            standalone_mode=False)
        comp = json.loads(capsys.readouterr().out)
        assert [r["rounds_to_target"] for r in comp["rows"]] == [3, 2]
        assert Path(comp["plot"]) == root / "results" / "compare.png" and Path(comp["plot"]).is_file()
    finally:
        set_env(old)
