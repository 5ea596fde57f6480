"""The first hour of a new user (issue 16 item 6): each rough edge found trying the README, fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.errors import UsageError
from fedctl.model import EnvSettings, Plan, PlannedHost
from fedctl.ops.common import Inputs
from fedctl.ops.provision import identity_changes, replan
from fedctl.state import HostRecord, RunState, StateStore

ECHO = Path(__file__).resolve().parents[1] / "payloads" / "echo"


def _host(name: str, i: int, **kw: Any) -> HostInfo:
    return HostInfo(name=name, address=f"127.0.0.{i}", **{"workdir": f"/w/{name}", **kw})


def _inputs(plan: Plan, tmp_path: Path) -> Inputs:
    """Inputs with a real experiment (the echo test payload, 2 clients) and a static inventory."""
    from fedctl.config.experiment import load_experiment

    (tmp_path / "fedctl.yaml").write_text(f"payload: {ECHO}\nclients: 2\nrounds: 3\n")
    exp = load_experiment(str(tmp_path / "fedctl.yaml"), [], cwd=tmp_path)
    return Inputs(type("I", (), {"provider": "static"})(), exp, plan)


def _failed_run(tmp_path: Any, b_info: HostInfo) -> tuple[StateStore, RunState]:
    store = StateStore(tmp_path / ".fedctl")
    a = HostRecord(_host("a", 2), role="server", status="provisioned")
    b = HostRecord(b_info, role="client", client_processes=[[0, 1]], status="failed")
    for rec in (a, b):
        rec.own(rec.info.workdir, "dir")  # both were reached: their workdirs are fedctl's
    plan = Plan("static", 2, (PlannedHost(a.info, True), PlannedHost(b.info, False, ((0, 1),))))
    state = RunState(run_id="20260101-000000-abcd", provider="static", plan=plan, hosts=[a, b],
                     server={"host": "a"})
    store.save(state)
    return store, state


@pytest.mark.parametrize("fix", [
    {"python_env": EnvSettings(setup=("apt-get install -y python3-venv",))},
    {"python_env": EnvSettings(mode="venv", wheelhouse="/wheels", keep=True)},
    {"environment": {"HTTPS_PROXY": "http://proxy:3128"}},
    {"python": "/usr/bin/python3.11", "identity_file": "/right/key"},
])
def test_a_failed_host_whose_settings_are_fixed_takes_the_same_provision_again(tmp_path, fix):
    broken = _host("b", 3, python_env=EnvSettings(setup=("false",)))
    store, state = _failed_run(tmp_path, broken)
    fixed_b = dataclasses.replace(broken, **fix)
    plan = Plan("static", 2, (state.plan.hosts[0], PlannedHost(fixed_b, False, ((0, 1),))))
    replan(store, state, _inputs(plan, tmp_path))
    assert state.host("b").info == fixed_b and state.host("b").status == "pending"
    assert state.host("a").status == "provisioned"  # unchanged: not checked again
    assert store.load().host("b").info == fixed_b


@pytest.mark.parametrize("change, said", [
    ({"address": "127.0.0.9"}, "b changed address '127.0.0.3' -> '127.0.0.9'"),
    ({"port": 2222}, "b changed port 22 -> 2222"),
    ({"user": "ubuntu"}, "b changed user None -> 'ubuntu'"),
    ({"workdir": "/elsewhere"}, "b changed workdir '/w/b' -> '/elsewhere'"),
])
def test_moving_a_host_that_holds_something_is_refused_naming_the_field(tmp_path, change, said):
    store, state = _failed_run(tmp_path, _host("b", 3))
    moved = dataclasses.replace(state.host("b").info, **change)
    plan = Plan("static", 2, (state.plan.hosts[0], PlannedHost(moved, False, ((0, 1),))))
    with pytest.raises(UsageError) as ei:
        replan(store, state, _inputs(plan, tmp_path))
    assert said in str(ei.value) and "holds /w/b" in str(ei.value), str(ei.value)
    assert "address, user or workdir" not in str(ei.value)


def test_identity_is_where_the_host_is_and_where_fedctl_wrote():
    h = _host("b", 3)
    assert identity_changes(h, dataclasses.replace(h, port=22)) == []  # 22 is ssh's default
    assert identity_changes(h, dataclasses.replace(h, identity_file="/k", python="/p",
                                                      python_env=EnvSettings(mode="venv"))) == []
    assert identity_changes(h, dataclasses.replace(h, address="h.example", workdir="/x")) == [
        "address '127.0.0.3' -> 'h.example'", "workdir '/w/b' -> '/x'"]


def test_the_resume_note_says_what_really_happens():
    from fedctl.ops.resume import restart_note

    none = restart_note("h1", 8080, "--resume", None, 10)
    assert none == "restarting the server on h1 (port 8080) with --resume: no round had finished, so the run starts again from round 1"
    some = restart_note("h1", 8080, "--resume", 3, 10)
    assert "3 of 10 round(s) had finished" in some and "from round 1 if it saved none" in some
    assert "last checkpoint" not in none + some


def test_the_inventory_template_shows_every_host_setting_and_each_loads_uncommented(tmp_path):
    import re
    from pathlib import Path

    from fedctl.config.inventory import SETTING_KEYS, load_inventory

    template = (Path(__file__).parents[2] / "fedctl" / "templates" / "inventory.yaml").read_text()
    shown = set(re.findall(r"^  #? ?([a-z_]+):", template, re.M))
    assert set(SETTING_KEYS) - shown == set()
    # the commented env lines, uncommented, are a valid inventory (a wheelhouse needs its folder)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "dep-1.0-py3-none-any.whl").write_bytes(b"")
    lines = template.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # env: auto"))
    end = next(i for i, line in enumerate(lines) if line.startswith("hosts:"))
    opened = [line.replace("  # ", "  ", 1) if line.startswith("  # ") else line for line in lines[start:end]]
    (tmp_path / "inventory.yaml").write_text("\n".join(lines[:start] + opened + lines[end:]) + "\n")
    inv = load_inventory(str(tmp_path / "inventory.yaml"))
    host = inv.hosts[0]
    assert host.python_env.mode == "auto" and host.python_env.setup == ("sudo apt-get install -y python3-venv",)
    assert host.python_env.wheelhouse == str(tmp_path / "wheels") and host.python_env.keep is False
    assert dict(host.environment) == {"HTTPS_PROXY": "http://proxy.internal:3128"}


def test_a_client_process_is_named_after_the_client_ids_it_holds():
    from fedctl.monitor.targets import process_name

    assert process_name([7]) == "client-7"
    assert process_name([4, 5, 6, 7]) == "clients-4-7"
    assert process_name([9, 1, 4]) == "clients-1_4_9"
