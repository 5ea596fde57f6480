"""fedctl.yaml: core keys, payload keys via the manifest and its validator, --set and flags."""

import textwrap
from pathlib import Path

import pytest

from fedctl.config.experiment import load_experiment
from fedctl.errors import ConfigError

VALIDATOR = '''
class Problem(ValueError):
    def __init__(self, key_path, problem, valid=None):
        super().__init__(f"{key_path}: {problem}")
        self.key_path, self.problem, self.valid = key_path, problem, valid

DEFAULTS = {"strategy": {"name": "fedavg", "mu": 0.01}, "data": {"alpha": 0.5}}

def validate(d):
    out = {k: dict(v) for k, v in DEFAULTS.items()}
    for key, value in d.items():
        if key == "plain_error":
            raise ValueError("something is off with plain_error")
        if key == "formatted_error":
            raise ValueError("formatted_error.x: too big (valid: 1, 2)")
        for sub, v in value.items():
            if sub not in DEFAULTS[key]:
                raise Problem(f"{key}.{sub}", "unknown key", ", ".join(DEFAULTS[key]))
            out[key][sub] = v
    if out["strategy"]["name"] not in ("fedavg", "fedprox"):
        raise Problem("strategy.name", f"{out['strategy']['name']!r} is not a strategy", "fedavg, fedprox")
    if not isinstance(out["data"]["alpha"], float) or out["data"]["alpha"] <= 0:
        raise Problem("data.alpha", "must be a number > 0")
    return out
'''


@pytest.fixture
def payload(tmp_path) -> Path:
    d = tmp_path / "payloads" / "fake"
    d.mkdir(parents=True)
    (d / "payload.yaml").write_text(textwrap.dedent("""
        name: fake
        files: ["*.py"]
        config:
          validator: "cfg.py:validate"
          keys: [strategy, data, plain_error, formatted_error]
        server: {command: "{python} {payload_dir}/server.py --port {port}"}
        client: {command: "{python} {payload_dir}/client.py --client-ids {client_ids}"}
    """))
    (d / "cfg.py").write_text(VALIDATOR)
    return d


def cfg(tmp_path, text, name="fedctl.yaml") -> str:
    p = tmp_path / name
    p.write_text("payload: fake\n" + textwrap.dedent(text))
    return str(p)


def load(tmp_path, text="", overrides=(), **kw):
    return load_experiment(cfg(tmp_path, text), list(overrides), cwd=tmp_path, **kw)


def err(tmp_path, text="", overrides=(), **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text, overrides, **kw)
    return e.value


def test_defaults(tmp_path, payload):
    e = load(tmp_path)
    assert (e.clients, e.rounds, e.seed, e.name, e.on_finish) == (10, 20, 42, None, None)
    assert e.placement.clients_per_host == "auto"
    assert e.server.port == "auto" and e.server.port_number == 0 and e.server.bind == "0.0.0.0"
    assert e.budget.max_cost is None
    assert e.payload.name == "fake"
    assert e.payload_config == {"strategy": {"name": "fedavg", "mu": 0.01}, "data": {"alpha": 0.5}}


def test_missing_file_in_cwd_means_defaults(tmp_path, payload):
    e = load_experiment(None, ["payload=fake"], cwd=tmp_path)
    assert e.path is None and e.clients == 10


def test_file_in_cwd_is_used(tmp_path, payload):
    cfg(tmp_path, "rounds: 7\n")
    e = load_experiment(None, [], cwd=tmp_path)
    assert e.rounds == 7 and e.path == str(tmp_path / "fedctl.yaml")


def test_explicit_missing_file_is_an_error(tmp_path, payload):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment("nope.yaml", [], cwd=tmp_path)


def test_full_core(tmp_path, payload):
    e = load(tmp_path, """
        name: exp1
        clients: 4
        rounds: 3
        seed: 7
        placement: {clients_per_host: 2}
        server: {port: 9000, bind: 127.0.0.1}
        budget: {max_cost: 5, max_hours: 1.5, idle_minutes: 10}
        on_finish: teardown
        strategy: {name: fedprox}
    """)
    assert (e.name, e.clients, e.rounds, e.seed) == ("exp1", 4, 3, 7)
    assert e.placement.clients_per_host == 2 and e.server.port_number == 9000
    assert e.budget.max_cost == 5.0 and e.budget.max_hours == 1.5 and e.on_finish == "teardown"
    r = e.resolved()
    assert r["strategy"] == {"name": "fedprox", "mu": 0.01}
    assert r["clients"] == 4 and r["payload"] == "fake" and r["server"] == {"port": 9000, "bind": "127.0.0.1"}
    assert r["budget"]["max_hours"] == 1.5


def test_resolved_is_a_copy(tmp_path, payload):
    e = load(tmp_path)
    e.resolved()["strategy"]["name"] = "changed"
    assert e.resolved()["strategy"]["name"] == "fedavg"


@pytest.mark.parametrize(
    "text,key",
    [
        ("clients: 0\n", "clients"),
        ("clients: ten\n", "clients"),
        ("rounds: 1.5\n", "rounds"),
        ("seed: x\n", "seed"),
        ("placement: {clients_per_host: 0}\n", "placement.clients_per_host"),
        ("placement: {clients_per_host: many}\n", "placement.clients_per_host"),
        ("placement: {per_host: 2}\n", "placement.per_host"),
        ("server: {port: 99999}\n", "server.port"),
        ("server: {port: high}\n", "server.port"),
        ("budget: {max_cost: 0}\n", "budget.max_cost"),
        ("budget: {max_hours: -1}\n", "budget.max_hours"),
        ("budget: {max_dollars: 3}\n", "budget.max_dollars"),
        ("on_finish: explode\n", "on_finish"),
        ("placement: 3\n", "placement"),
    ],
)
def test_core_errors_name_file_and_key(tmp_path, payload, text, key):
    e = err(tmp_path, text)
    assert e.file == str(tmp_path / "fedctl.yaml")
    assert e.key_path == key


def test_unknown_top_key_lists_core_and_payload_keys(tmp_path, payload):
    e = err(tmp_path, "roundz: 3\n")
    assert e.key_path == "roundz"
    for k in ("clients", "rounds", "placement", "budget", "strategy", "data"):
        assert k in e.valid


def test_validator_error_is_wrapped_with_the_file(tmp_path, payload):
    e = err(tmp_path, "strategy: {name: fedsgd}\n")
    assert e.file == str(tmp_path / "fedctl.yaml")
    assert e.key_path == "strategy.name" and "fedsgd" in e.problem and e.valid == "fedavg, fedprox"


def test_validator_unknown_nested_key(tmp_path, payload):
    e = err(tmp_path, "strategy: {nme: fedprox}\n")
    assert e.key_path == "strategy.nme" and "name" in e.valid


def test_validator_plain_value_error_uses_its_text(tmp_path, payload):
    e = err(tmp_path, "plain_error: {}\n")
    assert "something is off with plain_error" in str(e) and e.file == str(tmp_path / "fedctl.yaml")


def test_validator_contract_format_is_parsed(tmp_path, payload):
    e = err(tmp_path, "formatted_error: {}\n")
    assert e.key_path == "formatted_error.x" and e.problem == "too big" and e.valid == "1, 2"


def test_set_overrides_the_file(tmp_path, payload):
    e = load(tmp_path, "rounds: 9\nstrategy: {name: fedavg}\n",
             ["rounds=5", "strategy.name=fedprox", "data.alpha=0.1", "placement.clients_per_host=auto"])
    assert e.rounds == 5 and e.payload_config["strategy"]["name"] == "fedprox"
    assert e.payload_config["data"]["alpha"] == 0.1 and e.placement.clients_per_host == "auto"


def test_set_is_validated_and_names_itself(tmp_path, payload):
    e = err(tmp_path, "", ["strategy.nme=fedprox"])
    assert e.file == "--set strategy.nme=fedprox" and e.key_path == "strategy.nme"
    assert str(e).startswith("--set strategy.nme=fedprox: strategy.nme: unknown key")


def test_set_core_error_names_the_set(tmp_path, payload):
    e = err(tmp_path, "", ["rounds=0"])
    assert e.file == "--set rounds=0" and e.key_path == "rounds"


def test_set_unknown_top_key(tmp_path, payload):
    e = err(tmp_path, "", ["roundz=3"])
    assert e.file == "--set roundz=3" and "rounds" in e.valid


def test_file_error_still_names_the_file_when_sets_exist(tmp_path, payload):
    e = err(tmp_path, "clients: 0\n", ["rounds=3"])
    assert e.file == str(tmp_path / "fedctl.yaml")


def test_flags_win_over_file_and_set(tmp_path, payload):
    e = load(tmp_path, "clients: 3\nrounds: 3\n", ["clients=4"], clients=6, rounds=2)
    assert (e.clients, e.rounds) == (6, 2)
    assert e.raw["clients"] == 6


def test_bad_flag_names_the_flag(tmp_path, payload):
    e = err(tmp_path, "", clients=0)
    assert e.file == "--clients" and e.key_path == "clients"


def test_malformed_set_is_a_config_error(tmp_path, payload):
    for bad in ("rounds", "=5", ".a=1", "a..b=1"):
        with pytest.raises(ConfigError, match="--set"):
            load(tmp_path, "", [bad])


def test_unknown_payload_lists_available(tmp_path, payload):
    p = tmp_path / "x.yaml"
    p.write_text("payload: nope\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(str(p), [], cwd=tmp_path)
    assert e.value.key_path == "payload" and "fake" in str(e.value) and e.value.file == str(p)


def test_payload_path_relative_to_config_folder(tmp_path, payload):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "fedctl.yaml").write_text("payload: ../payloads/fake\n")
    e = load_experiment(str(sub / "fedctl.yaml"), [], cwd=tmp_path / "exp")
    assert e.payload.dir == payload.resolve()


def test_echo_payload_keys(tmp_path):
    echo = Path(__file__).resolve().parents[1] / "payloads" / "echo"
    e = load_experiment(None, [f"payload={echo}", "echo_round_s=0", "fail_at_round=2"], cwd=tmp_path)
    assert e.payload_config == {"echo_round_s": 0.0, "echo_wait_s": 30.0, "fail_at_round": 2, "echo_data": None}
    with pytest.raises(ConfigError) as ex:
        load_experiment(None, [f"payload={echo}", "echo_round_s=-1"], cwd=tmp_path)
    assert ex.value.key_path == "echo_round_s" and ex.value.file == "--set echo_round_s=-1"
