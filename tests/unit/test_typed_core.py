"""The typed core: the run's configuration, server endpoint and host facts are types in the state
(and load back as the same objects, old dict forms included); phases change only through the
transition table; the plan alone decides GPU placement; nothing outside the config layer reads the
run's configuration by string key."""

from __future__ import annotations

import ast
from dataclasses import replace
import json
from pathlib import Path
from typing import Any

import pytest

from fedctl.errors import StateError
from fedctl.model import PHASE_MOVES, HostInfo, HostStatus, Phase, Plan, PlannedHost, ProcStatus
from fedctl.plan import place_on_gpus
from fedctl.runtypes import Budget, HostFacts, Placement, RunConfig, ServerEndpoint, ServerSettings
from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore

FEDCTL = Path(__file__).resolve().parents[2] / "fedctl"
#: the config layer (it builds the typed config) and the payloads (they read their own config.yaml)
CONFIG_LAYER = ("config/", "payloads/")
#: files that still read the run's configuration by key (none now; a file named here must exist)
PENDING: set[str] = set()
TYPED_ATTRS = {"experiment", "server", "facts", "config"}


def _key_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``x.experiment[...]`` / ``x.experiment.get(...)`` (and for server, facts, config), and
    ``experiment[...]`` / ``experiment.get(...)`` on a bare name."""
    found = []

    def typed(node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and node.attr in TYPED_ATTRS:
            return node.attr
        if isinstance(node, ast.Name) and node.id in ("experiment", "facts"):
            return node.id
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and (name := typed(node.value)):
            found.append((node.lineno, f"{name}[...]"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and (name := typed(node.func.value))):
            found.append((node.lineno, f"{name}.get(...)"))
    return found


def test_nothing_outside_the_config_layer_reads_the_run_configuration_by_key():
    bad = []
    for path in sorted(FEDCTL.rglob("*.py")):
        rel = path.relative_to(FEDCTL).as_posix()
        if rel.startswith(CONFIG_LAYER) or rel in PENDING:
            continue
        for line, what in _key_reads(ast.parse(path.read_text(), rel)):
            bad.append(f"fedctl/{rel}:{line}: {what}")
    assert not bad, "read the typed attributes instead:\n" + "\n".join(bad)
    assert all((FEDCTL / p).is_file() for p in PENDING)  # a renamed file must not hide a key read


def test_the_key_read_finder_finds_each_form():
    src = ("a = state.experiment['rounds']\nb = state.experiment.get('seed')\nc = state.server['port']\n"
           "d = rec.facts.get('gpus')\ne = experiment['x']\nf = state.experiment.rounds\n")
    assert [w for _, w in _key_reads(ast.parse(src))] == [
        "experiment[...]", "experiment.get(...)", "server[...]", "facts.get(...)", "experiment[...]"]


def _config() -> RunConfig:
    return RunConfig(clients=4, rounds=3, seed=7, name="x", payload_name="echo", payload_dir="/p/echo",
                     placement=Placement(2, 1, "cpu"), server=ServerSettings(5000, "127.0.0.1"),
                     budget=Budget(max_cost=2.5), on_finish="stop", payload_config={"echo_round_s": 0.1})


def _state(**kw: Any) -> RunState:
    info = HostInfo("h1", "127.0.0.1")
    return RunState("r1", hosts=[HostRecord(info, status="provisioned", facts={"ok": True, "gpus": ["A, 100"]})],
                    **kw)


def test_the_state_keeps_and_loads_back_the_typed_config_endpoint_and_facts(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    state = _state(experiment=_config(), server=ServerEndpoint("h1", "10.0.0.1", 5000))
    state.hosts[0].processes.append(ProcessRecord("server", 0, pid=7, status="running"))
    store.save(state)
    assert json.loads(store.state_file.read_text())["hosts"][0]["processes"][0]["status"] == "running"
    back = store.load()
    assert back.experiment == _config() and isinstance(back.experiment, RunConfig)
    assert back.server == ServerEndpoint("h1", "10.0.0.1", 5000) and back.server.dial == "10.0.0.1:5000"
    assert isinstance(back.hosts[0].facts, HostFacts) and back.hosts[0].gpu_count == 1
    assert isinstance(back.phase, Phase) and isinstance(back.hosts[0].status, HostStatus)
    assert back.hosts[0].processes[0].status is ProcStatus.RUNNING
    # what a host gets as config.yaml: core keys and the payload's own, flat
    rendered = back.experiment.rendered()
    assert rendered["payload"] == "echo" and rendered["echo_round_s"] == 0.1 and rendered["server"]["port"] == 5000


def test_an_older_state_file_with_dicts_loads_as_the_types(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    store.save(_state())
    data = json.loads(store.state_file.read_text())
    data["payload_name"], data["payload_dir"] = "echo", "/p/echo"
    data["experiment"] = {"name": None, "payload": "echo", "clients": 4, "rounds": 3, "seed": 7,
                          "placement": {"clients_per_host": 2, "processes_per_gpu": 1, "server_device": "cpu"},
                          "server": {"port": 5000, "bind": "127.0.0.1"},
                          "budget": {"max_cost": 2.5, "max_hours": None, "idle_minutes": None},
                          "on_finish": "stop", "echo_round_s": 0.1}
    data["server"] = {"host": "h1", "address": "10.0.0.1", "port": 5000}
    data["hosts"][0]["facts"] = {"ok": True, "python": "3.11.7", "tensorflow": "2.21.0", "gpus": []}
    store.state_file.write_text(json.dumps(data))
    back = store.load()
    assert back.experiment == replace(_config(), name=None)
    assert back.server == ServerEndpoint("h1", "10.0.0.1", 5000)
    assert back.hosts[0].facts.tensorflow == "2.21.0" and back.hosts[0].facts.python == "3.11.7"


@pytest.mark.parametrize("old,new", [(Phase.TORN_DOWN, Phase.STARTING), (Phase.PROVISIONING, Phase.RUNNING),
                                     (Phase.PROVISIONED, Phase.FINISHED), (Phase.TEARING_DOWN, Phase.RUNNING)])
def test_an_illegal_phase_change_is_refused(old, new):
    state = RunState("r1", phase=old)
    with pytest.raises(StateError, match=f"cannot go from {old} to {new}"):
        state.transition(new)
    assert state.phase == old


def test_the_normal_life_of_a_run_is_allowed():
    state = RunState("r1")
    for phase in (Phase.PROVISIONED, Phase.STARTING, Phase.RUNNING, Phase.FINISHED, Phase.STARTING,
                  Phase.RUNNING, Phase.STOPPED, Phase.TEARING_DOWN, Phase.TORN_DOWN):
        state.transition(phase)
        assert state.phase is phase
    assert PHASE_MOVES[Phase.TORN_DOWN] == frozenset()
    state.transition("torn_down")  # staying is always allowed, and a string is read as its phase


def test_gpu_placement_is_a_pure_step_of_the_plan():
    h1, h2 = HostInfo("s", "127.0.0.1"), HostInfo("c", "127.0.0.2")
    plan = Plan("static", 8, (PlannedHost(h1, True), PlannedHost(h2, False, (tuple(range(8)),))))
    placed = place_on_gpus(plan, {"c": 4}, per_gpu=1)
    c = placed.planned("c")
    assert c.client_processes == ((0, 1), (2, 3), (4, 5), (6, 7)) and c.client_gpus == (0, 1, 2, 3)
    assert place_on_gpus(placed, {"c": 4}, per_gpu=1) == placed  # idempotent: a second provision changes nothing
    assert place_on_gpus(plan, {}, per_gpu=1) == plan  # hosts not looked at keep their processes
    assert plan.planned("c").client_processes == ((tuple(range(8))),)  # the input is not changed


def test_after_provision_the_plan_and_the_records_agree():
    from fedctl.ops.provision import _apply_placement

    s, c = HostInfo("s", "127.0.0.1"), HostInfo("c", "127.0.0.2")
    plan = Plan("static", 6, (PlannedHost(s, True), PlannedHost(c, False, (tuple(range(6)),))))
    state = RunState("r1", plan=plan, hosts=[HostRecord.planned(ph) for ph in plan.hosts])
    state.host("c").facts = HostFacts(ok=True, gpus=["A, 100", "B, 100"])
    state.host("c").info = HostInfo("c", "10.1.1.1")  # a created machine's address stays the record's
    _apply_placement(state, plan, per_gpu=1)
    for rec in state.hosts:
        ph = state.plan.planned(rec.name)
        assert [tuple(p) for p in rec.client_processes] == list(ph.client_processes)
        assert tuple(rec.client_gpus) == ph.client_gpus
    assert state.plan.planned("c").client_gpus == (0, 1) and state.host("c").info.address == "10.1.1.1"
