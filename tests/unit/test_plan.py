"""Placement: server choice, roles, auto/int packing, local packing, errors, JSON round trip."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from fedctl.config.experiment import load_experiment
from fedctl.config.inventory import load_inventory
from fedctl.errors import PlanError
from fedctl.plan import Plan, even_split, make_plan

ECHO = Path(__file__).resolve().parents[1] / "payloads" / "echo"


def experiment(tmp_path, per_host="auto"):
    return load_experiment(None, [f"payload={ECHO}", f"placement.clients_per_host={per_host}"], cwd=tmp_path)


def inventory(tmp_path, hosts: str, defaults: str = ""):
    p = tmp_path / "inventory.yaml"
    p.write_text(f"provider: static\n{textwrap.dedent(defaults)}hosts:\n{textwrap.dedent(hosts)}")
    return load_inventory(str(p))


def layout(plan):
    return [(ph.name, ph.role_server, ph.client_processes) for ph in plan.hosts]


FLEET = """\
- {name: srv, address: 10.0.0.1, private_address: 192.168.0.1, roles: [server]}
- {name: 'c{1..3}', address: '10.0.0.{2..4}', roles: [client]}
"""


def test_auto_static_fills_contiguous_blocks(tmp_path):
    plan = make_plan(inventory(tmp_path, FLEET), experiment(tmp_path), clients=10)
    assert layout(plan) == [
        ("srv", True, ()),
        ("c1", False, ((0, 1, 2, 3),)),
        ("c2", False, ((4, 5, 6, 7),)),
        ("c3", False, ((8, 9),)),
    ]
    assert plan.server.host.name == "srv" and plan.server_address == "192.168.0.1"
    assert [h.name for h in plan.client_hosts] == ["c1", "c2", "c3"]
    assert plan.clients_of("c2") == (4, 5, 6, 7)
    assert plan.clients_of(plan.client_hosts[0].host) == (0, 1, 2, 3)


def test_auto_leaves_hosts_with_zero_clients_out(tmp_path):
    hosts = "- {name: srv, address: s, roles: [server]}\n- {name: 'c{1..4}', address: 'a{1..4}', roles: [client]}\n"
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=5)
    # ceil(5/4) = 2 per host: 2, 2, 1, and c4 gets none
    assert layout(plan)[1:] == [("c1", False, ((0, 1),)), ("c2", False, ((2, 3),)), ("c3", False, ((4,),))]
    assert plan.unused == ("c4",)


def test_int_clients_per_host(tmp_path):
    plan = make_plan(inventory(tmp_path, FLEET), experiment(tmp_path, 4), clients=9)
    assert [ph.client_processes for ph in plan.hosts[1:]] == [((0, 1, 2, 3),), ((4, 5, 6, 7),), ((8,),)]


def test_too_few_hosts_is_a_plan_error_with_the_numbers(tmp_path):
    with pytest.raises(PlanError) as e:
        make_plan(inventory(tmp_path, FLEET), experiment(tmp_path, 2), clients=7)
    msg = str(e.value)
    assert "7 clients" in msg and "3 client host(s)" in msg and "6 slots" in msg


def test_server_defaults_to_the_first_host_without_roles(tmp_path):
    hosts = "- {name: a, address: h1}\n- {name: b, address: h2}\n- {name: c, address: h3}\n"
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=4)
    assert layout(plan) == [("a", True, ()), ("b", False, ((0, 1),)), ("c", False, ((2, 3),))]


def test_single_host_without_roles_takes_server_and_clients(tmp_path):
    plan = make_plan(inventory(tmp_path, "- {name: solo, address: h}\n"), experiment(tmp_path), clients=3)
    assert layout(plan) == [("solo", True, ((0, 1, 2),))]


def test_host_with_both_roles_takes_clients(tmp_path):
    hosts = "- {name: a, address: h1, roles: [server, client]}\n- {name: b, address: h2, roles: [client]}\n"
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=4)
    assert layout(plan) == [("a", True, ((0, 1),)), ("b", False, ((2, 3),))]


def test_roles_listed_only_client_hosts_get_clients(tmp_path):
    # b lists no roles, but another host does: only hosts with role client take clients
    hosts = "- {name: a, address: h1, roles: [server]}\n- {name: b, address: h2}\n- {name: c, address: h3, roles: [client]}\n"
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=4)
    assert layout(plan) == [("a", True, ()), ("c", False, ((0, 1, 2, 3),))]
    assert plan.unused == ("b",)


def test_server_role_on_a_later_host(tmp_path):
    hosts = "- {name: a, address: h1, roles: [client]}\n- {name: b, address: h2, roles: [server]}\n"
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=2)
    assert plan.server.name == "b" and plan.clients_of("a") == (0, 1)


def test_no_client_role_is_an_error(tmp_path):
    with pytest.raises(PlanError, match="role client"):
        make_plan(inventory(tmp_path, "- {name: a, address: h1, roles: [server]}\n"), experiment(tmp_path), clients=2)


@pytest.mark.parametrize(
    "cores,sizes",
    [(2, [5, 5]), (8, [2, 2, 1, 1, 1, 1, 1, 1]), (16, [1] * 10), (3, [4, 3, 3])],
)
def test_local_packing(tmp_path, cores, sizes):
    plan = make_plan(load_inventory(None), experiment(tmp_path), clients=10, cpu_count=cores, cwd=tmp_path)
    assert plan.hosts[0].name == "local-server" and plan.hosts[0].role_server
    assert plan.hosts[0].client_processes == ()
    clients = plan.hosts[1:]
    assert [ph.name for ph in clients] == [f"local-client-{i}" for i in range(1, len(sizes) + 1)]
    assert [len(ph.client_processes[0]) for ph in clients] == sizes
    assert all(len(ph.client_processes) == 1 for ph in clients)
    assert [i for ph in clients for i in ph.client_ids] == list(range(10))


def test_local_hosts(tmp_path):
    plan = make_plan(load_inventory(None), experiment(tmp_path), clients=2, cpu_count=8, cwd=tmp_path)
    for ph in plan.hosts:
        h = ph.host
        assert h.kind == "local" and h.address == "127.0.0.1" and h.python == sys.executable
        assert h.workdir == str(tmp_path / ".fedctl" / "local" / h.name) and Path(h.workdir).is_absolute()
        assert h.price_per_hour == 0
    assert plan.price_per_hour_total == 0


def test_local_with_clients_per_host(tmp_path):
    plan = make_plan(load_inventory(None), experiment(tmp_path, 3), clients=10, cpu_count=2, cwd=tmp_path)
    assert [len(ph.client_ids) for ph in plan.hosts[1:]] == [3, 3, 2, 2]  # ceil(10/3) = 4 processes


def test_even_split():
    assert even_split(7, 3) == [3, 2, 2]
    assert sum(even_split(101, 8)) == 101 and max(even_split(101, 8)) - min(even_split(101, 8)) <= 1


def test_cost(tmp_path):
    hosts = """\
- {name: srv, address: s, roles: [server], price_per_hour: 0.5}
- {name: 'c{1..2}', address: 'a{1..2}', roles: [client], price_per_hour: 1.25}
- {name: free, address: f, roles: [client]}
"""
    plan = make_plan(inventory(tmp_path, hosts, "defaults:\n  currency: CNY\n"), experiment(tmp_path), clients=3)
    assert plan.price_per_hour_total == pytest.approx(3.0)
    assert plan.currency == "CNY"
    assert plan.price_per_hour_by_currency == {"CNY": pytest.approx(3.0)}


def test_mixed_currencies_are_reported_per_currency(tmp_path):
    hosts = """\
- {name: srv, address: s, roles: [server], price_per_hour: 0.5, currency: USD}
- {name: c, address: a, roles: [client], price_per_hour: 4, currency: CNY}
"""
    plan = make_plan(inventory(tmp_path, hosts), experiment(tmp_path), clients=2)
    assert plan.price_per_hour_by_currency == {"USD": 0.5, "CNY": 4.0}
    with pytest.raises(PlanError, match="several currencies"):
        plan.price_per_hour_total  # noqa: B018


def test_round_trip(tmp_path):
    plan = make_plan(inventory(tmp_path, FLEET, "defaults:\n  port: 2222\n  price_per_hour: 0.3\n"),
                     experiment(tmp_path), clients=5)
    data = json.loads(json.dumps(plan.to_dict()))
    back = Plan.from_dict(data)
    assert back == plan
    assert back.hosts[1].host.roles == ("client",) and back.hosts[1].client_processes == ((0, 1),)


def test_local_round_trip(tmp_path):
    plan = make_plan(load_inventory(None), experiment(tmp_path), clients=4, cpu_count=2, cwd=tmp_path)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_from_dict_rejects_unknown_version(tmp_path):
    plan = make_plan(load_inventory(None), experiment(tmp_path), clients=1, cpu_count=1, cwd=tmp_path)
    data = plan.to_dict()
    data["version"] = 99
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict(data)


def test_zero_clients_is_an_error(tmp_path):
    with pytest.raises(PlanError):
        make_plan(load_inventory(None), experiment(tmp_path), clients=0, cpu_count=2, cwd=tmp_path)


def test_gpu_processes_spread_clients_over_gpus():
    from fedctl.plan import gpu_processes

    procs, gpus = gpu_processes(range(8), 4)
    assert procs == ((0, 1), (2, 3), (4, 5), (6, 7)) and gpus == (0, 1, 2, 3)
    procs, gpus = gpu_processes(range(5), 2, per_gpu=2)
    assert [len(p) for p in procs] == [2, 1, 1, 1] and gpus == (0, 1, 0, 1)
    assert gpu_processes(range(3), 4) == (((0,), (1,), (2,)), (0, 1, 2))  # never more than the clients
    assert gpu_processes(range(3), 0) == (((0, 1, 2),), (None,))


def test_the_local_plan_on_a_gpu_machine_has_one_client_process_per_gpu(tmp_path):
    from fedctl.plan import _local_plan

    plan = _local_plan(6, "auto", 16, tmp_path, gpus=2)
    assert [ph.client_gpus for ph in plan.client_hosts] == [(0,), (1,)]
    assert [len(ph.client_ids) for ph in plan.client_hosts] == [3, 3]
    assert len(_local_plan(6, "auto", 16, tmp_path, gpus=0).client_hosts) == 6
