"""--set parsing and application."""

import pytest

from fedctl.config.overrides import apply_overrides, parse_override, source_for
from fedctl.errors import ConfigError


@pytest.mark.parametrize(
    "text,path,value",
    [
        ("rounds=5", ("rounds",), 5),
        ("data.alpha=0.1", ("data", "alpha"), 0.1),
        ("strategy.name=fedprox", ("strategy", "name"), "fedprox"),
        ("placement.clients_per_host=auto", ("placement", "clients_per_host"), "auto"),
        ("budget.max_cost=null", ("budget", "max_cost"), None),
        ("tensorboard=true", ("tensorboard",), True),
        ("data.path=", ("data", "path"), None),
        ("x=[1, 2]", ("x",), [1, 2]),
        ("x={a: 1}", ("x",), {"a": 1}),
        ("name=a=b", ("name",), "a=b"),
        ("name='007'", ("name",), "007"),
    ],
)
def test_parse(text, path, value):
    ov = parse_override(text)
    assert ov.path == path and ov.value == value and ov.source == f"--set {text}"


@pytest.mark.parametrize("text", ["rounds", "=5", " =5", ".a=1", "a.=1", "a..b=1", "a b=1", "x=[1, 2"])
def test_malformed(text):
    with pytest.raises(ConfigError) as e:
        parse_override(text)
    assert e.value.file == f"--set {text}"


def test_apply_creates_parents_and_does_not_mutate():
    raw = {"data": {"alpha": 0.5, "partition": "iid"}, "rounds": 3}
    out = apply_overrides(raw, [parse_override("data.alpha=0.1"), parse_override("strategy.name=fedprox")])
    assert out == {"data": {"alpha": 0.1, "partition": "iid"}, "rounds": 3, "strategy": {"name": "fedprox"}}
    assert raw["data"]["alpha"] == 0.5 and "strategy" not in raw


def test_later_override_wins():
    out = apply_overrides({}, [parse_override("rounds=1"), parse_override("rounds=2")])
    assert out == {"rounds": 2}


def test_cannot_set_below_a_scalar():
    with pytest.raises(ConfigError) as e:
        apply_overrides({"rounds": 3}, [parse_override("rounds.x=1")])
    assert e.value.file == "--set rounds.x=1" and "rounds" in e.value.problem


def test_source_for():
    ovs = [parse_override("data.alpha=0.1"), parse_override("strategy={name: x}")]
    assert source_for("data.alpha", ovs, "f.yaml") == "--set data.alpha=0.1"
    assert source_for("strategy.name", ovs, "f.yaml") == "--set strategy={name: x}"
    assert source_for("data.partition", ovs, "f.yaml") == "f.yaml"
    assert source_for("rounds", ovs, "f.yaml") == "f.yaml"
