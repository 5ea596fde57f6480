"""The campaign's state: saved and loaded back, reconciled with a changed sweep file, the runs to
run now, how many runs a fleet holds, and the live view within 80x24."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fedctl.errors import StateError, UsageError
from fedctl.model import HostInfo
from fedctl.runtypes import HostFacts
from fedctl.state import HostRecord, RunState, StateStore
from fedctl.sweep.packing import capacity, run_state_for
from fedctl.sweep.plan import plan_campaign
from fedctl.sweep.spec import load_sweep
from fedctl.sweep.state import CampaignState, SweepStore, parse_only, reconcile, select
from fedctl.sweep.view import campaign_view, plain_lines, render_view

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "tests" / "payloads" / "echo"


def plan_of(tmp_path: Path, sets=(), **sweep):
    (tmp_path / "fedctl.yaml").write_text(yaml.safe_dump({"payload": str(ECHO)}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "base": "fedctl.yaml", **sweep}))
    spec = load_sweep(str(tmp_path / "sweep.yaml"))
    return plan_campaign(spec, None, list(sets), StateStore(tmp_path / ".fedctl" / "sweeps" / "s" / ".fedctl"))


def test_the_state_is_saved_atomically_and_loads_back_the_same(tmp_path):
    plan = plan_of(tmp_path, grid={"echo_round_s": [0.1, 0.2]}, seeds=[1, 2])
    st = reconcile(None, plan, clock=lambda: 5.0)
    st.set(next(iter(st.runs)), lambda: 6.0, status="running", run_id="r1", started_at=6.0, attempts=1)
    store = SweepStore(tmp_path / ".fedctl", "s")
    store.save(st)
    back = store.load()
    assert back.runs == st.runs and list(back.runs) == list(st.runs)
    assert back.events == [{"time": 6.0, "key": next(iter(st.runs)), "status": "running", "run_id": "r1"}]
    assert (tmp_path / ".fedctl" / "sweeps" / "s" / "sweep.json").stat().st_mode & 0o777 == 0o600
    (store.file).write_text("{broken")
    with pytest.raises(StateError, match="unreadable"):
        store.load()


def test_a_run_left_running_by_a_killed_fedctl_is_interrupted_and_run_again(tmp_path):
    plan = plan_of(tmp_path, grid={"echo_round_s": [0.1, 0.2]})
    st = reconcile(None, plan)
    a, b = list(st.runs)
    st.set(a, status="finished")
    st.set(b, status="running")
    again = reconcile(st, plan)
    assert again.runs[b].status == "interrupted" and again.runs[a].status == "finished"
    assert select(again, list(again.runs)) == [b]


def test_new_grid_values_add_runs_but_a_changed_meaning_is_refused(tmp_path):
    st = reconcile(None, plan_of(tmp_path, grid={"echo_round_s": [0.1]}))
    key = next(iter(st.runs))
    st.set(key, status="finished")
    more = reconcile(st, plan_of(tmp_path, grid={"echo_round_s": [0.1, 0.2]}))
    assert [r.status for r in more.runs.values()] == ["finished", "queued"]
    with pytest.raises(StateError, match="changed what 1 run"):
        reconcile(more, plan_of(tmp_path, sets=["echo_wait_s=3"], grid={"echo_round_s": [0.1, 0.2]}))
    # a budget change does not change what a run means
    reconcile(more, plan_of(tmp_path, grid={"echo_round_s": [0.1, 0.2]}, budget={"max_hours": 2}))


def test_select_reruns_failed_only_when_asked_and_filters_by_only(tmp_path):
    st = reconcile(None, plan_of(tmp_path, grid={"echo_round_s": [0.1, 0.2]}, seeds=[1, 2]))
    keys = list(st.runs)
    st.set(keys[0], status="failed")
    st.set(keys[1], status="finished")
    assert select(st, keys) == keys[2:]
    assert select(st, keys, rerun_failed=True) == [keys[0], *keys[2:]]
    assert select(st, keys, parse_only(["echo_round_s=0.2", "seed=2"])) == [keys[3]]
    with pytest.raises(UsageError, match="not a grid key"):
        select(st, keys, parse_only(["echo_wait_s=1"]))


def host(name: str, address: str, procs: int, cpus: int, gpus: int = 0, on_gpu: bool = False,
         kind: str = "ssh") -> HostRecord:
    rec = HostRecord(info=HostInfo(name=name, address=address, kind=kind))
    rec.client_processes = [[i] for i in range(procs)]
    rec.client_gpus = [i % max(gpus, 1) for i in range(procs)] if on_gpu else []
    rec.facts = HostFacts(ok=True, cpus=cpus, gpus=[f"gpu{i}" for i in range(gpus)])
    return rec


def test_capacity_never_oversubscribes_a_machine():
    st = RunState(run_id="f")
    st.hosts = [host("s", "10.0.0.1", 0, 4), host("c1", "10.0.0.2", 2, 8), host("c2", "10.0.0.3", 3, 8)]
    assert capacity(st) == 2  # c2: 8 cores // 3 processes
    st.hosts = [host("g", "10.0.0.2", 2, 64, gpus=4, on_gpu=True)]
    assert capacity(st) == 2 and capacity(st, per_gpu=2) == 4  # GPU slots, not cores
    # the local provider's hosts are all this machine: their processes add up
    st.hosts = [host(f"local-client-{i}", "127.0.0.1", 1, 4, kind="local") for i in range(3)]
    assert capacity(st) == 1
    st.hosts = [host("c", "10.0.0.2", 16, 2)]
    assert capacity(st) == 1  # one run that does not fit alone still runs, alone


def test_a_runs_state_is_the_fleets_hosts_with_its_own_id_and_nothing_owned():
    fleet = RunState(run_id="fleet", previous_runs=["x"])
    rec = host("c", "10.0.0.2", 1, 2)
    rec.own("/w/payloads/echo", "tree")
    rec.acquired_at = 100.0
    fleet.hosts = [rec]
    st = run_state_for(fleet, "run-1", "/p/fedctl.yaml")
    assert st.run_id == "run-1" and st.previous_runs == [] and st.hosts[0].owned == []
    assert st.hosts[0].acquired_at == 100.0 and st.config_path == "/p/fedctl.yaml"
    assert fleet.hosts[0].owned  # the fleet's record is untouched


def test_the_live_view_fits_80_by_24_with_many_runs():
    st = CampaignState(name="big-campaign", parallel=12)
    from fedctl.sweep.records import SweepRun

    for i in range(40):
        status = "running" if i < 12 else "failed" if i < 20 else "queued"
        st.runs[f"strategy.name-fedprox_data.alpha-0.{i}_seed-{i}"] = SweepRun(
            f"strategy.name-fedprox_data.alpha-0.{i}_seed-{i}", (("strategy.name", "fedprox"),), i,
            status=status, started_at=0.0, error="the server exited without a summary " * 3)
        st.progress[f"strategy.name-fedprox_data.alpha-0.{i}_seed-{i}"] = {"round": 3, "rounds": 100, "accuracy": 0.5}
    view = campaign_view(st, None, 100.0)
    console = Console(file=io.StringIO(), width=80, height=24, force_terminal=True)
    console.print(render_view(view))
    lines = console.file.getvalue().splitlines()
    assert len(lines) <= 24 and all(console.measure(line).maximum <= 80 for line in lines)
    text = "\n".join(lines)
    assert "0/40 done, 12 running, 20 queued, 8 failed" in text and "and 4 more running" in text
    assert plain_lines(replace(view, running=view.running[:1]))[1].startswith("  running strategy.name-fedprox")


def test_the_views_elapsed_time_and_cost_stop_when_the_fleet_is_released():
    fleet = RunState(run_id="f")
    rec = host("c", "10.0.0.2", 1, 2)
    rec.info = replace(rec.info, price_per_hour=3.6)
    rec.acquired_at, rec.released_at = 100.0, 160.0
    fleet.hosts = [rec]
    view = campaign_view(CampaignState(name="c"), fleet, 1000.0)
    assert view.elapsed_s == 60.0 and view.cost == {"USD": pytest.approx(0.06)}


def test_the_fleet_knows_a_runs_folders_before_and_as_they_are_made(tmp_path):
    """A Ctrl-C during a run's start left its run dir on sshd hosts: the fleet's teardown did not
    know it. Now the run dir is recorded in the fleet before start, and whatever start records
    (payload folder, holders) reaches the fleet's state at once, not when the run's state is saved."""
    from fedctl.sweep.packing import FleetJournal, merge_owned

    fleet_store = StateStore(tmp_path / "fleet")
    fleet = RunState(run_id="fleet")
    rec = host("c", "10.0.0.2", 1, 2)
    rec.workdir = "/w"
    fleet.hosts = [rec]
    fleet_store.save(fleet)
    st = run_state_for(fleet, "20261206-000000-abcd", None)
    merge_owned(fleet_store, st, intended=True)
    assert [o.path for o in fleet_store.load().hosts[0].owned] == ["/w/runs/20261206-000000-abcd"]
    journal = FleetJournal(fleet_store, st)
    journal.attach()
    st.hosts[0].own("/w/runs", "dir")
    st.hosts[0].own("/w/payloads/echo", "tree")
    journal.detach()
    st.hosts[0].own("/w/later", "tree")  # detached: the run's own state records it, the fleet not yet
    # the holder first: teardown goes newest first, so the run dir is removed before runs/ is tried
    assert [o.path for o in fleet_store.load().hosts[0].owned] == [
        "/w/runs", "/w/runs/20261206-000000-abcd", "/w/payloads/echo"]
    assert "journal" not in st.to_dict()["hosts"][0]
