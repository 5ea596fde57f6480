"""Whole runs (server.py + client.py processes on loopback, real TensorFlow) with train.vectorize on
against off: SCAFFOLD on shards of different sizes gives the same loss and accuracy curve, and an
asynchronous fedbuff run trains its waves vectorised and learns."""
from __future__ import annotations

import pytest
from test_async_run import Run, _cfg, _check_lines

pytestmark = pytest.mark.e2e

ROUNDS = 3


def _sync_cfg(vectorize: str) -> dict:
    return {"clients": 4, "rounds": ROUNDS, "seed": 1, "model": "mlp",
            "data": {"dataset": "synthetic", "partition": "dirichlet", "alpha": 1.0,
                     "synthetic": {"train": 400, "test": 200, "features": 16, "classes": 4, "noise": 1.0}},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.1, "vectorize": vectorize, "vectorize_chunk": 3},
            "strategy": {"name": "scaffold"}, "sampling": {"round_timeout_s": 120}}


def _run(tmp, cfg: dict, ids: list[str]) -> tuple[dict, str]:
    run = Run(tmp, cfg)
    try:
        server, port = run.server()
        clients = [run.spawn("client.py", ["--server", f"127.0.0.1:{port}", "--client-ids", i], f"client-{n}.log")
                   for n, i in enumerate(ids)]
        assert server.wait(240) == 0, run.logs()
        assert [c.wait(60) for c in clients] == [0] * len(ids), run.logs()
    finally:
        run.close()
    return run.rounds(), run.logs()


@pytest.mark.timeout(600)
def test_scaffold_run_vectorised_has_the_same_curve(tmp_path):
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off, off_logs = _run(tmp_path / "off", _sync_cfg("off"), ["0,1,2,3"])
    on, on_logs = _run(tmp_path / "on", _sync_cfg("on"), ["0,1,2,3"])
    assert sorted(off) == sorted(on) == list(range(1, ROUNDS + 1))
    assert "vectorised training: up to 3 clients" in on_logs and "vectorised training" not in off_logs
    for r in range(1, ROUNDS + 1):
        a, b = off[r], on[r]
        assert a["reported"] == b["reported"] == [0, 1, 2, 3]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (a, b)
        assert abs(b["accuracy"] - a["accuracy"]) <= 1 / 200 + 1e-9, (a, b)  # at most one test example
        for k in map(str, range(4)):  # each client's own reported loss, too
            assert b["clients"][k]["loss"] == pytest.approx(a["clients"][k]["loss"], rel=1e-4, abs=1e-5)
    assert off[ROUNDS]["accuracy"] > 0.4  # it learns (chance is 0.25): equal curves mean something


@pytest.mark.timeout(300)
def test_fedbuff_run_vectorised_waves(tmp_path):
    cfg = _cfg(rounds=6)
    cfg["train"]["vectorize"] = "on"
    rounds, logs = _run(tmp_path, cfg, ["0,1,2", "3,4,5"])
    _check_lines(rounds, 6)
    assert "vectorised training" in logs and "Traceback" not in logs
    assert max(r["accuracy"] for r in rounds.values()) > 0.4
