"""Incremental reading: partial lines, offsets, truncation, rotation, capped chunks, the probe format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.monitor.collect import METRICS_KEY, HostProbe
from fedctl.monitor.metrics import LineBuffer, MetricsAggregator
from fedctl.monitor.probe import ProcReq, build_probe, new_nonce, parse_probe
from fedctl.state import HostRecord, ProcessRecord


def round_line(r: int, responses: dict[int, float], dropped: dict[int, str] | None = None, loss: float = 0.5) -> str:
    return json.dumps({
        "type": "round", "round": r, "rounds": 10, "start": 100.0 + r, "end": 101.0 + r,
        "sampled": sorted(set(responses) | set(dropped or {})), "reported": sorted(responses),
        "dropped": [{"id": c, "reason": why} for c, why in (dropped or {}).items()],
        "clients": {str(c): {"response_s": v, "loss": loss} for c, v in responses.items()},
        "loss": loss, "accuracy": r / 10, "strategy": "fedavg",
    })


# -- pure pieces ---------------------------------------------------------------------------------------
def test_line_buffer_holds_partial_lines():
    b = LineBuffer()
    assert b.feed("a\nb") == ["a"]
    assert b.feed("c\r\nd\n") == ["bc", "d"]
    assert b.feed("") == []
    b.feed("half")
    b.reset()
    assert b.feed("new\n") == ["new"]


def test_aggregator_rounds_clients_stragglers_and_bad_lines():
    agg = MetricsAggregator()
    text = "\n".join([
        round_line(1, {0: 0.5, 1: 0.6, 2: 2.5}),
        "{not json",
        round_line(2, {0: 0.4, 1: 0.5}, dropped={2: "timeout"}),
        json.dumps({"type": "event", "level": "warning", "message": "update of client 1 rejected", "client": 1}),
    ]) + "\n" + round_line(3, {0: 0.1, 1: 0.1})[:20]  # a torn last line
    agg.feed(text)
    assert sorted(agg.rounds) == [1, 2] and agg.bad_lines == 1
    assert agg.rounds[1].straggler() == (2, 2.5)
    assert agg.rounds[2].dropped == {2: "timeout"}
    assert agg.clients[2].rounds_taken == 1 and agg.clients[2].dropped_rounds == 1
    assert agg.clients[0].rounds_taken == 2 and agg.clients[0].last_response_s == 0.4
    assert agg.events[0].client == 1 and agg.strategy == "fedavg" and agg.total_rounds == 10
    agg.feed(round_line(3, {0: 0.1, 1: 0.1})[20:] + "\n")  # the rest of the torn line arrives
    assert 3 in agg.rounds and agg.rounds[3].straggler() == (None, None)  # a tie has no straggler


def test_aggregator_nan_loss_and_summary():
    agg = MetricsAggregator()
    agg.feed(round_line(1, {0: 0.5, 1: 0.7}, loss=float("nan")) + "\n")
    agg.feed(json.dumps({"type": "summary", "rounds_completed": 1, "status": "failed", "reason": "nan"}) + "\n")
    assert agg.nan_rounds() == [1] and agg.rounds[1].loss is None  # flagged, never a NaN value
    assert agg.rounds[1].nonfinite == ("loss", "clients.0.loss", "clients.1.loss")
    assert agg.summary.status == "failed" and agg.summary.reason == "nan"


def test_aggregator_counts_a_round_repeated_by_a_resume_once():
    agg = MetricsAggregator()
    agg.feed(round_line(1, {0: 0.5, 1: 0.7}) + "\n" + round_line(2, {0: 0.5, 1: 0.7}) + "\n")
    agg.feed(round_line(2, {0: 0.3}, dropped={1: "timeout"}) + "\n")  # the resumed server redoes round 2
    assert sorted(agg.rounds) == [1, 2] and agg.repeated == 1
    assert agg.rounds[2].reported == (0,) and agg.rounds[2].dropped == {1: "timeout"}  # the last line wins
    assert agg.clients[0].rounds_taken == 2 and agg.clients[0].last_response_s == 0.3
    assert agg.clients[1].rounds_taken == 1 and agg.clients[1].dropped_rounds == 1


def test_parse_probe_keeps_file_bytes_exactly():
    n = new_nonce()
    out = (
        f"{n} sys\n0.50 0.40 0.30 1/99 123\nncpu 4\nMemTotal: 1000 kB\nMemAvailable: 250 kB\n"
        f"{n} pids\nserver 77 1\nclient-0 - 0\n"
        f"{n} gpurc none\n"
        f"{n} file a 12 5 0 12\nx\n{n} fake\n\n\n{n} end a\n"  # content that looks like a marker
        f"{n} file b 3 6 0 3\nabc\n{n} end b\n"  # no trailing newline in the file
        f"{n} file c 0 7 0 0\n\n{n} end c\n"
        f"{n} file d missing\n"
        f"{n} done\n"
    )
    r = parse_probe(out, n)
    assert r.complete and r.load1 == 0.5 and r.ncpu == 4 and r.mem_total_kib == 1000 and r.mem_avail_kib == 250
    assert r.pids == {"server": (77, True), "client-0": (None, False)}
    assert r.files["a"].text == f"x\n{n} fake\n\n" and r.files["b"].text == "abc" and r.files["c"].text == ""
    assert r.files["d"].missing
    cut = parse_probe(out.split(f"{n} end b")[0], n)  # cut short mid-file: that chunk must not count
    assert "b" not in cut.files and not cut.complete


# -- the real shell command over a LocalConnector ---------------------------------------------------
@pytest.fixture
def conn():
    c = LocalConnector(HostInfo(name="local", address="localhost", kind="local"))
    c.connect()
    yield c
    c.close()


def _probe(tmp_path: Path) -> tuple[HostProbe, Path, Path]:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    log = run / "server.log"
    host = HostRecord(HostInfo(name="h1", address="localhost", kind="local", roles=("server",)), status="provisioned",
                      workdir=str(tmp_path), processes=[ProcessRecord("server", 0, [], pid=os.getpid(), log=str(log),
                                                                      status="running")])
    return HostProbe(host, "r1", is_server=True, gpu=False), run / "metrics.jsonl", log


def test_probe_reads_only_new_bytes_and_handles_truncation_and_rotation(conn, tmp_path):
    probe, metrics, log = _probe(tmp_path)
    s = probe.sample(conn)
    assert s.ok and s.metrics_text == "" and probe.cursors[METRICS_KEY].missing
    assert s.probe.pids == {"server": (os.getpid(), True)}
    l1 = round_line(1, {0: 0.5, 1: 0.7}) + "\n"
    metrics.write_text(l1 + '{"type": "ro')
    log.write_text("hello\nwor")
    s = probe.sample(conn)
    assert s.metrics_text == l1 + '{"type": "ro' and probe.cursors[METRICS_KEY].offset == len(l1) + 12
    assert s.log_lines == [("server", "hello")]
    with metrics.open("a") as f:
        f.write('und"}\n')
    with log.open("a") as f:
        f.write("ld\n")
    s = probe.sample(conn)
    assert s.metrics_text == 'und"}\n' and not s.metrics_reset  # only the appended bytes came
    assert s.log_lines == [("server", "world")]
    s = probe.sample(conn)
    assert s.metrics_text == "" and s.log_lines == []  # nothing new: nothing sent
    # truncation: the file shrank, read again from 0 and say so
    metrics.write_text("x\n")
    s = probe.sample(conn)
    assert s.metrics_reset and s.metrics_text == "x\n"
    # rotation: a new file (new inode) of any size
    os.rename(log, str(log) + ".1")
    log.write_text("fresh line that is longer than before\n")
    s = probe.sample(conn)
    assert s.log_lines == [("server", "fresh line that is longer than before")]
    assert probe.cursors["L0"].resets == 1


def test_big_metrics_come_in_capped_chunks(conn, tmp_path):
    probe, metrics, _ = _probe(tmp_path)
    lines = [round_line(r, {0: 0.1 * r, 1: 0.2}) for r in range(1, 200)]
    metrics.write_text("\n".join(lines) + "\n")
    probe.chunk_cap = 4096
    agg = MetricsAggregator()
    chunks = 0
    while True:
        s = probe.sample(conn)
        assert s.ok and len(s.metrics_text) <= 4096
        agg.feed(s.metrics_text)
        chunks += 1
        if not s.metrics_behind:
            break
    assert chunks > 5 and sorted(agg.rounds) == list(range(1, 200)) and agg.bad_lines == 0


def test_log_history_starts_near_the_end(conn, tmp_path):
    probe, _, log = _probe(tmp_path)
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))  # ~1 MB of history
    s = probe.sample(conn)
    texts = [t for _, t in s.log_lines]
    assert texts[-1] == "line 99999" and len("\n".join(texts)) <= probe.log_tail_bytes


def test_pid_from_pidfile_and_dead_pid(conn, tmp_path):
    pidfile = tmp_path / "client-0.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    n = new_nonce()
    cmd = build_probe(n, [ProcReq("client-0", None, str(pidfile)), ProcReq("client-1", 2**22 + 12345)], [], gpu=True)
    r = parse_probe(conn.run(cmd).stdout, n)
    assert r.pids == {"client-0": (os.getpid(), True), "client-1": (2**22 + 12345, False)}
