"""The payload contract: one reader of metrics.jsonl (and of status.json / the ready file) that cost,
results, watch, status and the budget watchdog all share, so they agree on what a run did."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedctl import contract
from fedctl.budget import watchdog_script, watchdog_spec
from fedctl.connectors.base import HostInfo
from fedctl.contract import MetricsLog, parse_metrics, parse_ready, parse_status, read_metrics
from fedctl.cost import estimate
from fedctl.monitor.metrics import MetricsAggregator
from fedctl.ops.status import parse_metrics_tail
from fedctl.results import build_report, compare
from fedctl.state import HostRecord, RunState

T0 = 1_764_000_000.0


def rnd(r: int, acc: float, start: float | None = None, reported=(0, 1), **extra) -> dict:
    start = T0 + 10 * (r - 1) if start is None else start
    dropped = [{"id": c, "reason": "timeout"} for c in (0, 1) if c not in reported]
    return {"type": "round", "round": r, "rounds": 5, "start": start, "end": start + 8, "sampled": [0, 1],
            "reported": list(reported), "dropped": dropped,
            "clients": {str(c): {"response_s": 0.5 + c, "loss": 1 - acc} for c in reported},
            "loss": 1 - acc, "accuracy": acc, "strategy": "fedavg", **extra}


def lines(*objs: dict) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


#: rounds 1-4, the server fails, ``start --resume`` redoes rounds 3 and 4 (from the checkpoint after
#: round 2) and finishes with round 5: 5 rounds, not 7
RESUMED = lines(
    rnd(1, 0.50), rnd(2, 0.60), rnd(3, 0.61), rnd(4, 0.62),
    {"type": "summary", "rounds_completed": 4, "status": "failed", "reason": "server killed"},
    rnd(3, 0.70, start=T0 + 100, reported=(0,)), rnd(4, 0.80, start=T0 + 110), rnd(5, 0.90, start=T0 + 120),
    {"type": "summary", "rounds_completed": 5, "final_accuracy": 0.9, "wall_s": 128.0, "status": "finished"},
)


def state_for(tmp_path: Path) -> RunState:
    host = HostRecord(HostInfo("srv", "10.0.0.1", roles=("server", "client"), price_per_hour=1.0),
                      status="torn_down", acquired_at=T0 - 60, released_at=T0 + 200)
    return RunState("r1", phase="torn_down", hosts=[host], clients=2, rounds=5, results_dir=str(tmp_path))


# -- de-duplication after a resume ----------------------------------------------------------------------
def test_a_round_repeated_after_a_resume_counts_once_everywhere(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(RESUMED)

    log = read_metrics(str(path))
    assert [r.round for r in log.ordered] == [1, 2, 3, 4, 5] and log.repeated == 2
    assert log.rounds[3].accuracy == 0.7 and log.rounds[3].reported == (0,)  # the LAST line of round 3 wins
    assert log.rounds[3].dropped == {1: "timeout"}
    assert log.summary is not None and log.summary.status == "finished" and log.summary.wall_s == 128.0

    # cost: the measured estimate counts 5 rounds (it counted 7 before)
    est = estimate(state_for(tmp_path), rounds=5).updated_from_metrics(path)
    assert est.rounds_done == 5 and est.seconds_per_round == pytest.approx((T0 + 128 - T0) / 5)

    # results: the report, its plots' matrix and compare see the same 5 rounds
    report = build_report(tmp_path, state_for(tmp_path), now=T0 + 200)
    assert report.summary["rounds_completed"] == 5 and report.summary["final_accuracy"] == 0.9
    assert report.summary["metrics"]["accuracy"] == {"rounds": 5, "last": 0.9, "min": 0.5, "max": 0.9}
    assert report.summary["dropped"] == 1  # round 3's first attempt dropped nobody; its redo dropped client 1
    assert compare([tmp_path, tmp_path], tmp_path / "cmp.png", target=0.8).rows[0].rounds == 5

    # the monitor, fed in chunks cut anywhere (mid-line included), as watch reads the growing file
    agg = MetricsAggregator()
    for i in range(0, len(RESUMED), 37):
        agg.feed(RESUMED[i:i + 37])
    assert sorted(agg.rounds) == [1, 2, 3, 4, 5] and agg.rounds[3].accuracy == 0.7
    assert agg.clients[1].rounds_taken == 4 and agg.clients[1].dropped_rounds == 1
    assert agg.summary is not None and agg.summary.status == "finished"

    # status: the latest round and the summary that still counts
    last, summary = parse_metrics_tail(RESUMED)
    assert last["round"] == 5 and summary["status"] == "finished"

    # the budget watchdog, run the way a host runs it (below): the latest round's end
    wd = _pushed_watchdog(tmp_path)
    assert wd(str(path)) == T0 + 128


def test_a_summary_followed_by_rounds_is_from_a_resumed_attempt():
    """A failed run resumed with `start --resume`: while it runs again, it is not failed."""
    running = RESUMED.split('{"type": "summary", "rounds_completed": 5')[0]
    log = parse_metrics(running)
    assert log.summary is None and len(log.rounds) == 5
    assert parse_metrics_tail(running)[1] is None
    failed_only = RESUMED.split(json.dumps(rnd(3, 0.70, start=T0 + 100, reported=(0,))))[0]
    assert parse_metrics(failed_only).summary.status == "failed"


# -- partial and bad lines ---------------------------------------------------------------------------
def test_a_torn_last_line_waits_and_bad_lines_are_counted_not_fatal(tmp_path):
    whole = lines(rnd(1, 0.5)) + "{not json\n" + '["a list"]\n' + '{"type": "round", "round": "x"}\n'
    torn = json.dumps(rnd(2, 0.6))
    log = parse_metrics(whole + torn[:25])
    assert list(log.rounds) == [1] and log.bad_lines == 3  # the torn line is not "bad": it is unfinished
    # a last line that is a whole object without its newline counts (a reader must not drop it)
    assert sorted(parse_metrics(whole + torn).rounds) == [1, 2]

    inc = MetricsLog()
    assert inc.feed(whole + torn[:25]) == 4 and list(inc.rounds) == [1]
    inc.feed(torn[25:])  # the rest, still without newline: held
    assert list(inc.rounds) == [1]
    inc.feed("\n")
    assert sorted(inc.rounds) == [1, 2] and inc.bad_lines == 3

    (tmp_path / "m.jsonl").write_bytes((whole + torn[:25]).encode() + b"\xff\xfe")  # and bytes that are no UTF-8
    assert list(read_metrics(str(tmp_path / "m.jsonl")).rounds) == [1]
    assert read_metrics(str(tmp_path / "missing.jsonl")).rounds == {}


def test_tail_read_drops_the_line_it_cuts(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(*(rnd(r, r / 100) for r in range(1, 201))))
    log = read_metrics(str(path), tail_bytes=2000)
    assert 0 < len(log.rounds) < 10 and log.bad_lines == 0 and max(log.rounds) == 200
    assert log.last_round_end() == read_metrics(str(path)).last_round_end()


# -- NaN-free -------------------------------------------------------------------------------------------
def test_no_nan_or_infinity_comes_out(tmp_path):
    """A payload that is not strict JSON writes NaN / Infinity: readers see None, and know it was NaN."""
    text = ('{"type": "round", "round": 1, "start": NaN, "end": 5.0, "loss": NaN, "accuracy": Infinity, '
            '"f1": 0.25, "bytes_in": 100, "sampled": [0, 1], "reported": [0, 1], '
            '"clients": {"0": {"response_s": -Infinity, "loss": NaN}, "1": {"response_s": 2.0}}}\n'
            '{"type": "summary", "final_loss": NaN, "wall_s": Infinity, "status": "failed"}\n')
    log = parse_metrics(text)
    r = log.rounds[1]
    assert r.loss is None and r.accuracy is None and r.start is None and r.duration_s is None
    assert r.values == {"f1": 0.25, "bytes_in": 100}  # every finite metric, whatever the payload calls it
    assert set(r.nonfinite) == {"loss", "accuracy", "start", "clients.0.response_s", "clients.0.loss"}
    assert r.response(0) is None and r.straggler() == (None, None) and log.nan_rounds() == [1]
    assert log.summary.get("final_loss") is None and log.summary.wall_s is None and log.wall_s is None
    json.dumps(r.to_dict(), allow_nan=False)
    json.dumps(log.summary.to_dict(), allow_nan=False)

    def finite_only(value: str) -> float:
        raise AssertionError(f"{value} in strict JSON output")

    (tmp_path / "metrics.jsonl").write_text(text)
    build_report(tmp_path, state_for(tmp_path), now=T0 + 200)
    for name in ("report.json", "cost.json"):
        json.loads((tmp_path / name).read_text(), parse_constant=finite_only)
    assert "| f1 | 1 | 0.2500 |" in (tmp_path / "summary.md").read_text()  # a payload's own metric, shown


# -- status.json and the ready file ----------------------------------------------------------------------
def test_status_and_ready_readers():
    st = parse_status('{"round": 3, "rounds": 20, "phase": "training", "sampled": [0, "4", true], '
                      '"waiting": [4], "time": NaN}')
    assert st.round == 3 and st.phase == "training" and st.sampled == (0, 4) and st.waiting == (4,)
    assert st.reported == () and st.time is None
    for junk in (None, "", "  ", '{"phase": "trai', "[1, 2]", "{}"):
        assert parse_status(junk) is None
    assert parse_ready('{"port": 8080, "pid": 12}') == contract.ReadyInfo(8080, 12)
    for junk in (None, "", '{"port": 0}', '{"port": "x"}', '{"po'):
        assert parse_ready(junk) is None


# -- where the files are: the manifest says -------------------------------------------------------------
def test_paths_come_from_the_payload_manifest(tmp_path):
    payload = tmp_path / "p"
    payload.mkdir()
    (payload / "payload.yaml").write_text(
        "name: p\nfiles: ['*.py']\n"
        "server:\n  command: '{python} s.py'\n  metrics: '{run_dir}/out/metrics-{run_id}.jsonl'\n"
        "  ready_file: '{workdir}/ready-{run_id}'\n"
        "client:\n  command: '{python} c.py'\n")
    srv = HostRecord(HostInfo("srv", "10.0.0.1", roles=("server",)), status="provisioned", workdir="/w")
    state = RunState("r9", hosts=[srv], payload_dir=str(payload))
    files = contract.host_files(state, srv)
    assert files == contract.RunFiles("/w/runs/r9", "/w/runs/r9/out/metrics-r9.jsonl", "/w/runs/r9/status.json",
                                      "/w/ready-r9")
    assert watchdog_spec(state, srv, now=T0)["metrics"] == files.metrics
    assert contract.collected_metrics(tmp_path, state) == tmp_path / "metrics-r9.jsonl"
    # no manifest (a payload folder gone by now): the contract's default names
    gone = RunState("r9", hosts=[srv], payload_dir=str(tmp_path / "gone"))
    assert contract.host_files(gone, srv).metrics == "/w/runs/r9/metrics.jsonl"
    assert contract.collected_metrics(tmp_path, gone) == tmp_path / "metrics.jsonl"


# -- the watchdog carries the contract's reader, not a parser of its own ------------------------------------
def _pushed_watchdog(tmp_path: Path):
    """``last_round_end`` of the script fedctl pushes, run by a python that cannot import fedctl."""
    script = tmp_path / "fedctl-watchdog.py"
    script.write_bytes(watchdog_script())

    def last_round_end(metrics: str) -> float | None:
        code = ("import json, runpy, sys; m = runpy.run_path(sys.argv[1], run_name='wd'); "
                "print(json.dumps(m['last_round_end'](sys.argv[2])))")
        out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(script), metrics], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return last_round_end


def test_the_pushed_watchdog_is_self_contained_and_old_python_safe(tmp_path):
    script = watchdog_script()
    assert b"import fedctl" not in script and b"from fedctl" not in script
    assert script.count(b"def parse_metrics(") == 1  # the contract's reader, inlined once
    assert b"json.loads" not in script.split(b"end of fedctl/contract/metrics.py")[1]  # and no other parser
    source = (Path(contract.__file__).parent / "metrics.py").read_text()
    tree = ast.parse(source, feature_version=(3, 6))  # hosts may have an old python
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"json", "math", "re", "typing"}  # stdlib only, no __future__, no dataclasses (3.7)
    (tmp_path / "m.jsonl").write_text(lines(rnd(1, 0.5), rnd(2, 0.6)) + '{"ty')
    assert _pushed_watchdog(tmp_path)(str(tmp_path / "m.jsonl")) == T0 + 18
    assert _pushed_watchdog(tmp_path)(str(tmp_path / "none.jsonl")) is None


def test_finite_numbers_only():
    assert contract.number(1) == 1.0 and contract.number(True) is None and contract.number("1") is None
    assert contract.number(float("nan")) is None and contract.number(10 ** 400) is None
    assert contract.integer("12") == 12 and contract.integer(3.0) == 3 and contract.integer(3.5) is None
    assert math.isfinite(contract.number(1e308))
