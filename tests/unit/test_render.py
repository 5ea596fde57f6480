"""The dashboard renders snapshots built from fabricated probes: every host, GPU state, straggler, alert."""

from __future__ import annotations

import json
import re
from typing import Callable

import pytest
from rich.console import Console

from fedctl.connectors.base import HostInfo
from fedctl.dashboard.fmt import sparkline
from fedctl.dashboard.plain import render_lines, status_line
from fedctl.dashboard.render import fmt_duration, render
from fedctl.monitor.collect import HostProbe, HostSample
from fedctl.monitor.model import WatchModel
from fedctl.monitor.probe import FileChunk, ProbeResult
from fedctl.state import HostRecord, ProcessRecord, RunState
from tests.unit.test_nvidia import APPS, DRIVER_FAILED, NA_FIELDS, TWO_A100

NOW = 2000.0
GPU_OUT = {"h1": (TWO_A100, 0, APPS), "h2": (NA_FIELDS, 0, ""), "h4": (DRIVER_FAILED, 9, "")}


def host_name(i: int) -> str:
    return f"h{i}"


def make_state(phase: str = "running", hosts: int = 6, name: Callable[[int], str] = host_name) -> RunState:
    """A server host and ``hosts - 1`` client hosts running 2 clients each."""
    records = [HostRecord(HostInfo(name(1), "10.0.0.1", roles=("server",), price_per_hour=3.0), status="provisioned",
                          workdir="/w/h1", acquired_at=NOW - 3600,
                          processes=[ProcessRecord("server", 0, [], pid=31337, log="/w/h1/runs/r1/server.log",
                                                   status="running")])]
    for i in range(2, hosts + 1):
        ids = [2 * (i - 2), 2 * (i - 2) + 1]
        records.append(HostRecord(HostInfo(name(i), f"10.0.{i // 250}.{i % 250}", roles=("client",),
                                           price_per_hour=0.5),
                                  status="provisioned", workdir=f"/w/h{i}", acquired_at=NOW - 3600,
                                  processes=[ProcessRecord("client", 0, ids, pid=500 + i,
                                                           log=f"/w/h{i}/runs/r1/client-0.log", status="running")]))
    return RunState("r1", phase=phase, clients=2 * (hosts - 1), rounds=20, payload_name="fedavg_tf",
                    server={"host": name(1)}, hosts=records, started_at=NOW - 100, experiment={"strategy": "fedavg"})


def round_line(r: int, slow: int, dropped: int | None = None, loss: float = 0.5, clients: int = 10) -> str:
    reported = [c for c in range(clients) if c != dropped]
    return json.dumps({
        "type": "round", "round": r, "rounds": 20, "start": NOW - 100 + 10 * r, "end": NOW - 92 + 10 * r,
        "sampled": list(range(clients)), "reported": reported,
        "dropped": [{"id": dropped, "reason": "timeout"}] if dropped is not None else [],
        "clients": {str(c): {"response_s": 4.0 if c == slow else 1.0 + c / 100, "loss": loss} for c in reported},
        "loss": loss, "accuracy": 0.5 + r / 100, "strategy": "fedavg",
    })


def build_model(dead: str | None = None, unreachable: str | None = None, metrics: str | None = None,
                status: dict | None = None, phase: str = "running", hosts: int = 6,
                name: Callable[[int], str] = host_name) -> WatchModel:
    state = make_state(phase, hosts, name)
    clients = 2 * (hosts - 1)
    model = WatchModel(state, interval=1.0, clock=lambda: NOW)
    if metrics is None:
        metrics = "\n".join(round_line(r, slow=(r % 3 + 5) % clients, dropped=(9 if r == 4 else None) and clients - 1,
                                        clients=clients) for r in range(1, 7)) + "\n"
    if status is None:
        status = {"round": 7, "rounds": 20, "phase": "training", "sampled": [0, 1, 2, 3],
                  "reported": [0, 1], "waiting": [2, 3]}
    for i, h in enumerate(state.hosts, start=1):
        probe = HostProbe(h, "r1", i == 1, clock=lambda: NOW)
        gq, grc, apps = GPU_OUT.get(f"h{i}", ("", 0, ""))
        pr = ProbeResult(load1=1.5, ncpu=8, mem_total_kib=16 << 20, mem_avail_kib=12 << 20, complete=True,
                         pids={p.label: (p.pid, h.name != dead) for p in h.processes},
                         gpu_present=f"h{i}" in GPU_OUT, gpu_text=gq, gpu_rc=grc, apps_text=apps,
                         pgid_pids={31337, 31338} if i == 1 else set())
        pr.files["L0"] = FileChunk("L0", False, 30, "1", 0, 30, f"log of {h.name}: step 1\nlog of {h.name}: step 2\n")
        if i == 1:
            pr.files["metrics"] = FileChunk("metrics", False, len(metrics), "2", 0, len(metrics), metrics)
            st = json.dumps(status)
            pr.files["status"] = FileChunk("status", False, len(st), "3", 0, len(st), st)
        model.apply(probe.absorb(pr, 0.05))
    if unreachable:
        model.apply(HostSample(unreachable, NOW, False, 10.0, error="ConnectError: connection refused"))
        model.hosts[unreachable].last_ok.time = NOW - 42  # its last good data is 42 s old
    return model


def text_of(renderable, width: int = 220) -> str:
    console = Console(width=width, record=True, force_terminal=True, color_system="truecolor")
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def snap():
    return build_model().snapshot()


def test_every_host_client_and_gpu_on_one_screen(snap):
    out = text_of(render(snap))
    for h in ("h1", "h2", "h3", "h4", "h5", "h6"):
        assert f" {h} " in out
    assert "round 7 of 20" in out and "fedavg_tf" in out and "fedavg" in out
    # two A100s with the run's own memory (pids 31337+31338 = 29512 MiB), not pid 4242's
    assert "0:NVIDIA A100-SXM4-40GB 87% 29.4/40.0G 61°C 287W run 28.8G" in out
    assert "1:NVIDIA A100-SXM4-40GB 0% 0.0/40.0G 33°C 52W run 0G" in out
    assert "n/a 1.0/6.0G 47°C n/a" in out  # [N/A] shows as n/a, never as 0
    assert "no GPU" in out
    assert "nvidia-smi error: NVIDIA-SMI has failed because it couldn't communicate" in out
    for c in range(10):
        assert re.search(rf"│\s+{c}\s+h{c // 2 + 2}\s", out), f"client {c} row missing"
    assert "log of h4: step 2" in out


def test_header_cost_eta_and_progress(snap):
    assert snap.cost == pytest.approx(3.0 + 5 * 0.5) and snap.cost_per_hour == pytest.approx(5.5)
    out = text_of(render(snap))
    assert "cost 5.50 USD (5.50 USD/h)" in out
    assert snap.elapsed_s == 100 and snap.eta_s is not None and snap.eta_s > 0
    assert "elapsed 1m40s" in out


def test_straggler_of_each_round_stands_out(snap):
    history = {p.round: p for p in snap.federation.history}
    assert [history[r].straggler for r in range(1, 7)] == [r % 3 + 5 for r in range(1, 7)]
    assert history[4].dropped == (9,)
    out = text_of(render(snap))
    assert "straggler  round 6: client 5 (4.00s)" in out
    row5 = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("5  h4"))
    assert row5.count("4.0*") == 2  # slowest in rounds 3 and 6
    row9 = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("9  h6"))
    assert "✗" in row9  # dropped in round 4


def test_client_states_follow_status_and_processes():
    snap = build_model(dead="h6").snapshot()
    states = {c.id: c.state for c in snap.clients}
    assert states[0] == "reported" and states[2] == "training" and states[4] == "waiting"
    assert states[8] == states[9] == "dead"
    assert any(a.kind == "process_died" and a.host == "h6" for a in snap.alerts)
    assert "client-0 on h6 (pid 506) is not running" in text_of(render(snap))


def test_unreachable_host_says_how_stale_it_is():
    snap = build_model(unreachable="h3").snapshot()
    h3 = next(h for h in snap.hosts if h.name == "h3")
    assert h3.reachable is False and h3.age_s == 42
    out = text_of(render(snap))
    assert "NO (ConnectError: connection refused), data 42s old" in out
    assert "h3 unreachable: ConnectError: connection refused" in out


def test_alerts_nan_timeout_rejected():
    metrics = "\n".join([round_line(1, 3), round_line(2, 3, dropped=7, loss=float("nan"))]) + "\n"
    metrics += json.dumps({"type": "event", "level": "warning", "message": "update of client 4 rejected: norm too large",
                           "client": 4, "round": 2}) + "\n"
    snap = build_model(metrics=metrics).snapshot()
    kinds = {a.kind for a in snap.alerts}
    assert {"nan_loss", "round_timeout", "update_rejected"} <= kinds
    out = text_of(render(snap))
    assert "round 2: loss is NaN" in out and "round 2: client 7 timed out" in out and "rejected" in out
    json.dumps(snap.to_dict(), allow_nan=False)  # strict JSON even with a NaN loss


def test_render_is_pure_and_plain_lines_have_the_same_facts(snap):
    assert text_of(render(snap)) == text_of(render(snap))
    lines = "\n".join(render_lines(snap))
    for h in ("h1", "h6"):
        assert f"  {h} " in lines
    assert "round 7 of 20" in lines and "straggler client 5 (4.00s)" in lines
    assert "gpu nvidia-smi error: NVIDIA-SMI has failed" in lines and "gpu no GPU" in lines
    assert "\x1b[" not in lines
    assert status_line(snap).startswith("run=r1 phase=training round=7/20")


def test_json_snapshot_has_clients_hosts_gpus_round_accuracy_alerts(snap):
    d = json.loads(json.dumps(snap.to_dict(), allow_nan=False))
    assert d["round"] == 7 and d["rounds"] == 20 and d["accuracy"] == pytest.approx(0.56)
    assert [c["id"] for c in d["clients"]] == list(range(10))
    h1 = d["hosts"][0]
    assert h1["gpu"]["status"] == "ok" and h1["gpu"]["gpus"][0]["run_mem_mib"] == 29512.0
    assert d["hosts"][3]["gpu"]["status"] == "error"
    assert "logs" not in d and isinstance(d["alerts"], list)


def test_log_filter_by_host_role_and_client(snap):
    model = build_model()
    assert {ln.host for ln in model.snapshot(log_filter="h3").logs} == {"h3"}
    assert {ln.host for ln in model.snapshot(log_filter="server").logs} == {"h1"}
    assert {ln.host for ln in model.snapshot(log_filter="client-07").logs} == {"h5"}
    assert "filter: h3" in text_of(render(model.snapshot(log_filter="h3")))


def test_finished_run():
    metrics = round_line(1, 2) + "\n" + json.dumps({"type": "summary", "rounds_completed": 1, "final_accuracy": 0.9,
                                                     "final_loss": 0.1, "status": "finished", "wall_s": 12.0}) + "\n"
    snap = build_model(metrics=metrics, status={"round": 1, "rounds": 1, "phase": "finished"}).snapshot()
    assert snap.done and snap.summary["final_accuracy"] == 0.9 and snap.eta_s == 0.0
    assert all(c.state == "finished" for c in snap.clients)
    assert "phase finished" in text_of(render(snap))


def test_formatters():
    assert fmt_duration(None) == "-" and fmt_duration(4.25) == "4.2s" and fmt_duration(3725) == "1h02m"
    assert sparkline([0.0, 0.5, 1.0]) == "▁▄█" and sparkline([None, 1.0]) == " ▅" and sparkline([]) == ""


def test_live_frame_fits_the_terminal(snap):
    from fedctl.dashboard.screen import fit_screen

    console = Console(width=200, height=60, force_terminal=True)
    lines = console.render_lines(fit_screen(snap, console), console.options, pad=False)
    assert len(lines) <= 60  # the logs panel takes at most the rows left
    text = "\n".join("".join(seg.text for seg in line) for line in lines)
    assert all(f"log of h{i}: step 2" in text for i in range(1, 7)) and " h6 " in text
    tight = Console(width=200, height=45, force_terminal=True)
    assert len(tight.render_lines(fit_screen(snap, tight), tight.options, pad=False)) == 45
    from fedctl.dashboard.screen import WATCH_KEYS

    narrow = screen(snap, 70, 30, WATCH_KEYS)
    text = "\n".join(narrow)
    # heat columns shrink to what fits (the most recent rounds) instead of wrapping
    assert " r6" in text and " r3" in text and " r2 " not in text.split("clients", 1)[1]
    assert len(narrow) <= 30 and "logs" in text and "log of h6: step 2" in text  # rows were cut for the logs
    assert "2 more clients not shown" in text


def test_small_screen_keeps_problem_rows():
    snap = build_model(dead="h6", unreachable="h5").snapshot()
    text = "\n".join(screen(snap, 200, 24))
    assert re.search(r"^\s*9\s+h6\s+dead", text, re.M) and re.search(r"^h5\s+NO 42s", text, re.M)


# -- a default 80x24 terminal ------------------------------------------------------------------------
#: words a narrow column used to break across lines ("reach"/"able", "serve"/"r")
WORDS = ("reachable", "reported", "training", "waiting", "server", "client", "processes", "straggler",
         "accuracy", "unreachable", "connection", "refused", "running", "detach", "filter", "elapsed",
         "payload", "strategy", "federation")
#: real words on the screen that are also pieces of WORDS
WHOLE = {"process", "run", "round", "rounds", "dead", "data", "load"}


def broken_words(lines: list[str], words: tuple[str, ...] = WORDS) -> list[str]:
    """Pieces of ``words`` on screen: a word cut by wrapping shows a head (``reach``) and a tail (``able``)
    in separate places; a word cut with an ellipsis (``repor…``) is a whole cut, not a break."""
    broken = []
    for line in lines:
        for m in re.finditer(r"[A-Za-z]+", line):
            token = m.group()
            if len(token) < 3 or token in WHOLE or token in words or line[m.end():m.end() + 1] == "…":
                continue
            if any(w != token and (w.startswith(token) or w.endswith(token)) for w in words):
                broken.append(f"{token!r} in {line!r}")
    return broken


def screen(snap, width: int, height: int, keys=None) -> list[str]:
    """What a ``width``x``height`` terminal shows of the live screen (the text of every line)."""
    import io

    from fedctl.dashboard.screen import fit_screen

    console = Console(width=width, height=height, force_terminal=True, record=True, file=io.StringIO())
    console.print(fit_screen(snap, console, keys))
    return console.export_text().splitlines()


def check_fits(lines: list[str], width: int, height: int) -> None:
    from rich.cells import cell_len

    assert len(lines) <= height, len(lines)
    assert max(cell_len(line) for line in lines) <= width, [line for line in lines if cell_len(line) > width]
    assert broken_words(lines) == []


def test_three_hosts_fit_80x24_with_the_keys_line():
    from fedctl.dashboard.screen import DETACH_KEYS, WATCH_KEYS

    snap = build_model(hosts=3, unreachable="h3").snapshot()
    lines = screen(snap, 80, 24, WATCH_KEYS)
    check_fits(lines, 80, 24)
    assert lines[0].startswith("q: quit (the run keeps going)") and "f: filter logs" in lines[0]
    text = "\n".join(lines)
    assert re.search(r"^h1\s+yes\s", text, re.M) and re.search(r"^h2\s+yes\s", text, re.M)
    assert re.search(r"^h3\s+NO 42s\s", text, re.M)  # the error itself is in the alerts
    assert "h3 unreachable: ConnectError: connection refused" in text
    assert all(re.search(rf"^\s+{c}\s+h{c // 2 + 2}\s+\w+\s+\d", text, re.M) for c in range(4))
    assert "log of h3: step 2" in text  # the logs still get lines
    run = screen(snap, 80, 24, DETACH_KEYS)  # fedctl run: detach and stop, both on the first line
    check_fits(run, 80, 24)
    assert run[0].startswith("d: detach (run goes on)") and "Ctrl-C: stop the run" in run[0]


def test_fifty_hosts_fit_80x24_as_a_count_and_the_problem_hosts():
    from fedctl.dashboard.fmt import fit_name
    from fedctl.dashboard.screen import WATCH_KEYS

    def name(i: int) -> str:
        return f"worker-node-{i:03d}.cluster.example.internal"

    snap = build_model(hosts=50, name=name, dead=name(17), unreachable=name(33)).snapshot()
    lines = screen(snap, 80, 24, WATCH_KEYS)
    check_fits(lines, 80, 24)
    assert lines[0].startswith("q: quit")
    text = "\n".join(lines)
    assert "hosts (49/50 reachable, 1 with a dead process)" in text and "more hosts not shown" in text
    assert re.search(r"^worker-node-017…\s+yes\s.*client-0✖", text, re.M)  # the problem hosts are the rows
    assert re.search(r"^worker-node-033…\s+NO 42s", text, re.M)
    # a name is cut one way everywhere (tables and log prefixes): its first label and an ellipsis
    above_logs = text.split("\nlogs ", 1)[0]
    cut = re.findall(r"worker-node-\d{3}\S*", above_logs.split("\nclients", 1)[1])
    assert cut and set(cut) <= {fit_name(name(i), 16) for i in range(1, 51)}, cut
    assert fit_name(name(7), 16) == "worker-node-007…"
    assert re.search(r"^worker-node-050… clients-96-97 \| log of", text, re.M)  # named by its client ids, as `fedctl logs`


@pytest.mark.parametrize("width, height", [(60, 15), (40, 10), (120, 40), (100, 30)])
def test_other_sizes_degrade_without_breaking_words(width, height):
    from fedctl.dashboard.screen import WATCH_KEYS

    snap = build_model(dead="h6", unreachable="h3").snapshot()
    lines = screen(snap, width, height, WATCH_KEYS)
    check_fits(lines, width, height)
    assert lines[0].startswith("q: quit")
    assert len(lines) == height  # and every line is used


def test_once_on_an_80_column_terminal_fits_its_width():
    """``watch --once`` on a terminal prints ``render`` sized to the terminal's width (no height)."""
    import io

    snap = build_model(dead="h6", unreachable="h3").snapshot()
    console = Console(width=80, force_terminal=True, record=True, file=io.StringIO())
    console.print(render(snap, max_log_lines=10, width=80, compact=True))
    lines = console.export_text().splitlines()
    check_fits(lines, 80, 10_000)
    assert all(re.search(rf"^h{i}\s", "\n".join(lines), re.M) for i in range(1, 7))  # every host, one line each


def test_host_names_whole_when_they_fit_and_cut_one_way_when_not():
    from fedctl.dashboard.fmt import fit_name, name_width

    assert fit_name("h1", 16) == "h1" and fit_name("gpu-017.cluster.example", 12) == "gpu-017…"
    assert fit_name("worker-node-017", 10) == "work…e-017"  # no dots: the end (the number) stays
    assert len(fit_name("a-very-long-host-name-without-dots", 12)) == 12
    assert name_width(["h1", "h22"], 80) == 3 and name_width(["x" * 40], 80) == 16 and name_width(["x"], None) is None


def test_heat_cells_tell_fast_rounds_apart():
    from fedctl.dashboard.fmt import compact_seconds

    assert compact_seconds(0.0234, 4) == ".023" and compact_seconds(0.2, 4) == ".200"
    assert compact_seconds(0.0234, 3) == ".02" and compact_seconds(0.999, 3) == "1.0"
    assert compact_seconds(9.96, 3) == "10" and compact_seconds(123.4, 4) == "123"
    assert compact_seconds(4000, 3) == "67m"
    for v in (0.001, 0.5, 3.3, 42.0, 999.0, 12345.0, 1e6):
        assert len(compact_seconds(v, 3)) <= 3 and len(compact_seconds(v, 4)) <= 4
