"""fedctl as a library: a whole experiment through ``fedctl.ops.run.run_experiment`` with no Typer,
and the GPU placement decided in the plan (the state's plan and its host records agree).

The first test runs the library in a fresh Python process (the local provider, the stdlib echo
payload, 2 clients, 2 rounds) so it can tell that neither Typer nor fedctl's CLI was imported. The
second provisions real sshd hosts, one of them with a fake nvidia-smi of 4 GPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from fedctl.model import Phase
from fedctl.ops.common import load_inputs
from fedctl.ops.run import QuietUI, provision_step, teardown_step
from fedctl.state import StateStore
from tests.gpu.fake_nvidia_smi import install
from tests.integration.test_lifecycle import project

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"

_SCRIPT = r"""
import json, sys
from fedctl.ops.common import load_inputs
from fedctl.ops.run import QuietUI, run_experiment
from fedctl.state import StateStore

class Recorder(QuietUI):
    def __init__(self):
        self.seen = []
    def progress(self, message):
        self.seen.append("progress")
    def started(self, report):
        self.seen.append("started:" + report.state.server.dial)
    def round(self, event):
        self.seen.append("round:%s" % event.round)
    def torn_down(self, report):
        self.seen.append("torn_down:%s" % report.ok)

store = StateStore(".fedctl")
inputs = load_inputs(None, "fedctl.yaml", clients=2, rounds=2, store=store, cpu_count=2)
ui = Recorder()
outcome = run_experiment(store, inputs, ui, interval=0.2)
state = store.load()
print(json.dumps({"ok": outcome.ok, "phase": str(outcome.status.phase), "summary": outcome.status.summary,
                  "seen": ui.seen, "state_phase": str(state.phase), "results": state.results_dir,
                  "typer": "typer" in sys.modules, "cli": any(m.startswith("fedctl.cli") for m in sys.modules)}))
"""


def test_a_whole_experiment_runs_through_the_library_without_typer(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO), "echo_round_s": 0.1}))
    res = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=proj, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["phase"] == "finished"
    assert out["summary"]["rounds_completed"] == 2
    assert out["state_phase"] == "torn_down"
    assert (Path(out["results"]) / "summary.md").is_file()
    seen = out["seen"]
    assert seen[-1] == "torn_down:True" and any(s.startswith("started:127.0.0.1:") for s in seen)
    assert "round:2" in seen
    assert out["typer"] is False and out["cli"] is False


def test_the_plan_places_clients_on_gpus_and_the_records_follow_it(sshd_fleet, tmp_path):
    fleet = sshd_fleet(2)
    proj = project(tmp_path, fleet, rounds=2, round_s=0.1)
    fake = install(tmp_path / "gpu4", 4).parent
    inv = yaml.safe_load((proj / "inventory.yaml").read_text())
    inv["hosts"][1]["environment"] = {"PATH": f"{fake}:$PATH"}
    (proj / "inventory.yaml").write_text(yaml.safe_dump(inv))
    store = StateStore(proj / ".fedctl")

    def provision_once():
        inputs = load_inputs(str(proj / "inventory.yaml"), str(proj / "fedctl.yaml"), clients=8, store=store)
        assert inputs.plan.planned("h2").client_processes == (tuple(range(8)),)  # GPUs not known yet
        return provision_step(store, inputs, QuietUI())

    report = provision_once()
    state = store.load()
    try:
        planned = state.plan.planned("h2")
        assert planned.client_processes == ((0, 1), (2, 3), (4, 5), (6, 7)) and planned.client_gpus == (0, 1, 2, 3)
        for rec in state.hosts:  # the records say what the stored plan says
            ph = state.plan.planned(rec.name)
            assert [tuple(p) for p in rec.client_processes] == list(ph.client_processes)
            assert tuple(rec.client_gpus) == ph.client_gpus
        assert [r.processes for r in report.rows if r.name == "h2"] == ["4 process(es) on GPU 0, 1, 2, 3"]
        # the same provision again is the same plan: no replan, the same run
        events = len(state.events)
        provision_once()
        again = store.load()
        assert again.run_id == state.run_id and again.plan == state.plan
        assert not any("plan replaced" in e["message"] for e in again.events[events:])
    finally:
        teardown_step(store, QuietUI())
    assert store.load().phase == Phase.TORN_DOWN
