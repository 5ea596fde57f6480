"""Bounded, validated input: alias bombs, file and host counts, number ranges, the payload's
data-size checks made at load time, and error messages that are short and terminal-safe."""

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedctl.config import ranges
from fedctl.config.experiment import MAX_CLIENTS, MAX_ROUNDS, load_experiment
from fedctl.config.inventory import MAX_HOSTS, load_inventory
from fedctl.config.loader import (
    MAX_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    check_choice,
    check_int,
    load_yaml,
    preview,
)
from fedctl.config.overrides import parse_override
from fedctl.errors import ConfigError
from fedctl.payload import resolve_payload

ESC = "\x1b"


def write(tmp_path: Path, text: str, name: str = "f.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def alias_bomb(levels: int = 9) -> str:
    """A billion-laughs value: each anchor is a list of 9 aliases of the previous one."""
    parts = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghijklmnop"
    for prev, name in zip(names, names[1:levels]):
        parts.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def fails(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return e.value


# --- YAML aliases, depth, scalars ------------------------------------------------------------------


def test_alias_bomb_under_a_known_key_is_refused_fast(tmp_path):
    p = write(tmp_path, f"rounds: {alias_bomb()}\n", "fedctl.yaml")
    assert p.stat().st_size < 400
    t0 = time.perf_counter()
    err = fails(load_experiment, str(p), [], cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    msg = str(err)
    assert str(p) in msg and "line 1, column" in msg and "aliases" in msg
    assert "anchor &f" in msg  # the innermost anchor past the limit: 9**6 lists of 9
    assert len(msg) < 400


def test_alias_bomb_in_an_override_is_refused():
    err = fails(parse_override, f"rounds={alias_bomb()}")
    assert err.file.startswith("--set rounds=") and f"{MAX_YAML_VALUES:,}" in err.problem


def test_recursive_alias_is_refused(tmp_path):
    err = fails(load_yaml, write(tmp_path, "a: &x [1, *x]\n"))
    assert "contains it" in err.problem and "line 1" in err.problem


def test_merge_keys_and_small_aliases_still_work(tmp_path):
    p = write(tmp_path, textwrap.dedent("""
        provider: static
        hosts:
          - &base {name: a, address: 10.0.0.1, user: ubuntu, workdir: ~/fl}
          - {<<: *base, name: b, address: 10.0.0.2}
          - {<<: *base, name: c, address: 10.0.0.3, user: root}
    """), "inventory.yaml")
    inv = load_inventory(str(p))
    assert [(h.name, h.user, h.workdir) for h in inv.hosts] == [
        ("a", "ubuntu", "~/fl"), ("b", "ubuntu", "~/fl"), ("c", "root", "~/fl")]


def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path):
    p = write(tmp_path, "rounds: " + "[" * 3000 + "]" * 3000 + "\n")
    err = fails(load_yaml, p)
    assert f"more than {MAX_YAML_DEPTH} levels" in err.problem and "line 1" in err.problem


@pytest.mark.parametrize("value,fragment", [
    ("9" * 5000, "too large"), ("1" + "0" * 400, "too large"), ("2024-13-45", "month"),
])
def test_unbuildable_scalars_are_config_errors(tmp_path, value, fragment):
    err = fails(load_yaml, write(tmp_path, f"x: {value}\n"))
    assert fragment in err.problem and "line 1" in err.problem


# --- sizes ----------------------------------------------------------------------------------------


def test_file_over_the_limit_is_refused_before_parsing(tmp_path):
    p = tmp_path / "inventory.yaml"
    line = "  - {name: h, address: 10.0.0.1}\n"
    p.write_text("hosts:\n" + line * (MAX_FILE_BYTES // len(line) + 1))
    t0 = time.perf_counter()
    err = fails(load_inventory, str(p))
    assert time.perf_counter() - t0 < 0.5  # parsing 1 MiB would take seconds
    assert f"{MAX_FILE_BYTES:,} bytes" in err.problem and err.file == str(p)


def test_hosts_are_counted_before_ranges_expand(tmp_path, monkeypatch):
    per = MAX_HOSTS // 2
    p = write(tmp_path, textwrap.dedent(f"""
        provider: static
        hosts:
          - {{name: 'a{{1..{per}}}', address: 'a{{1..{per}}}.example'}}
          - {{name: 'b{{1..{per}}}', address: 'b{{1..{per}}}.example'}}
          - {{name: 'c{{1..{per}}}', address: 'c{{1..{per}}}.example'}}
    """), "inventory.yaml")
    real_expand = ranges.expand
    expanded: list[str] = []
    monkeypatch.setattr(ranges, "expand", lambda text: (expanded.append(text), real_expand(text))[1])
    err = fails(load_inventory, str(p))
    assert err.key_path == "hosts[2].name" and f"at most {MAX_HOSTS}" in err.problem
    assert not any(t.startswith("c") for t in expanded), "the entry past the limit was expanded"


def test_range_bounds_with_thousands_of_digits_are_a_range_error():
    with pytest.raises(ranges.RangeError, match="digits"):
        ranges.expand("h{1.." + "9" * 5000 + "}")


@pytest.mark.parametrize("text,key,fragment", [
    ("rounds: 100000000000000000000000000000000\n", "rounds", f"<= {MAX_ROUNDS}"),
    (f"rounds: {MAX_ROUNDS + 1}\n", "rounds", f"<= {MAX_ROUNDS}"),
    ("rounds: 1.0e+32\n", "rounds", "integer"),
    (f"clients: {MAX_CLIENTS + 1}\n", "clients", f"<= {MAX_CLIENTS}"),
    ("seed: -1\n", "seed", ">= 0"),
    (f"seed: {2**32}\n", "seed", f"<= {2**32 - 1}"),
    (f"placement: {{clients_per_host: {MAX_CLIENTS + 1}}}\n", "placement.clients_per_host", "<="),
    ("budget: {max_cost: 1.0e+999}\n", "budget.max_cost", "finite"),
])
def test_core_numbers_are_bounded(tmp_path, text, key, fragment):
    p = write(tmp_path, text, "fedctl.yaml")
    err = fails(load_experiment, str(p), [], cwd=tmp_path)
    assert err.key_path == key and fragment in err.problem


def test_largest_seed_is_accepted(tmp_path):
    p = write(tmp_path, f"seed: {2**32 - 1}\n", "fedctl.yaml")
    assert load_experiment(str(p), [], cwd=tmp_path).seed == 2**32 - 1


# --- the payload's start-time checks, made at load ----------------------------------------------


def test_more_clients_than_digits_examples_fails_at_load(tmp_path):
    err = fails(load_experiment, None, [], clients=100_000, cwd=tmp_path)
    assert err.file == "--clients" and err.key_path == "clients"
    assert "1438 training examples" in err.problem


def test_digits_at_its_size_is_accepted(tmp_path):
    assert load_experiment(None, [], clients=1438, cwd=tmp_path).clients == 1438
    err = fails(load_experiment, None, ["data.test_fraction=0.5"], clients=1438, cwd=tmp_path)
    assert "only 899 training examples" in err.problem


def test_shards_that_do_not_fit_fail_at_load(tmp_path):
    err = fails(load_experiment, None, ["data.partition=shards", "data.shards_per_client=200"],
                clients=10, cwd=tmp_path)
    assert err.key_path == "data.shards_per_client" and "2000 training examples" in err.problem


def test_synthetic_size_and_cnn_shape_are_checked_at_load(tmp_path):
    err = fails(load_experiment, None, ["data.dataset=synthetic", "data.synthetic.train=5"],
                clients=6, cwd=tmp_path)
    assert err.key_path == "clients" and "only 5 training examples" in err.problem
    err = fails(load_experiment, None, ["data.dataset=synthetic", "data.synthetic.features=50",
                                        "model=cnn"], cwd=tmp_path)
    assert err.key_path == "model" and "50 flat features" in err.problem


def test_npz_size_is_read_from_its_headers_relative_to_the_config(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    np.savez_compressed(sub / "d.npz", x_train=np.zeros((7, 28, 28), np.uint8), y_train=np.zeros(7),
                        x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.zeros(2))
    cfg = write(sub, "data: {dataset: npz, path: d.npz}\nmodel: cnn\n", "fedctl.yaml")
    assert load_experiment(str(cfg), [], clients=7, cwd=tmp_path).clients == 7
    err = fails(load_experiment, str(cfg), [], clients=8, cwd=tmp_path)
    assert err.key_path == "clients" and "only 7 training examples" in err.problem
    np.savez(sub / "d.npz", x_train=np.zeros((7, 3)), y_train=np.zeros(7))
    err = fails(load_experiment, str(cfg), [], clients=2, cwd=tmp_path)
    assert err.key_path == "data.path" and "x_test, y_test" in err.problem


def test_npz_that_is_not_here_is_left_to_the_hosts(tmp_path):
    e = load_experiment(None, ["data.dataset=npz", "data.path=/nowhere/d.npz"], clients=5, cwd=tmp_path)
    assert e.payload_config["data"]["path"] == "/nowhere/d.npz"


def test_digits_train_size_matches_the_payloads_split():
    payload_dir = str(resolve_payload("fedavg_tf"))
    sys.path.insert(0, payload_dir)  # the payload imports ``fedtf`` the way server.py does
    try:
        from fedtf import config, data
    finally:
        sys.path.remove(payload_dir)
    from sklearn.datasets import load_digits

    d = load_digits()
    for fraction in (1e-6, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.9):
        _, y_train, _, _ = data._split(d.data, d.target, fraction, seed=0)
        assert len(y_train) == config._digits_train_size(fraction), fraction


# --- messages: bounded and escaped ----------------------------------------------------------------


def test_preview_is_bounded_for_huge_and_shared_values():
    inner = ["x" * 1000] * 9
    for _ in range(12):  # 9**12 strings if it were expanded
        inner = [inner] * 9
    t0 = time.perf_counter()
    text = preview(inner)
    assert time.perf_counter() - t0 < 0.1 and len(text) <= 80
    assert len(preview(10**5000)) <= 80


def test_type_errors_show_a_bounded_preview(tmp_path):
    err = fails(check_int, "f.yaml", ("rounds",), list(range(100_000)))
    assert len(err.problem) < 150 and "0, 1, 2" in err.problem
    err = fails(check_choice, "f.yaml", ("on_finish",), "y" * 10_000, ["stop"])
    assert len(err.problem) < 150


def test_control_characters_in_a_set_are_escaped():
    err = fails(parse_override, f"rounds=[1, 2{ESC}[2J")
    assert ESC not in str(err) and "\\x1b" in str(err)
    err = fails(parse_override, f"rou{ESC}[31mnds=5")
    assert ESC not in str(err) and "\\x1b" in err.file


def test_long_set_text_is_cut_in_messages():
    err = fails(parse_override, "rounds=[" + "1, " * 10_000)
    assert len(err.file) < 140


def test_control_characters_in_values_and_keys_are_escaped(tmp_path):
    p = write(tmp_path, 'on_finish: "\\e[2Jgone"\n', "fedctl.yaml")
    err = fails(load_experiment, str(p), [], cwd=tmp_path)
    assert ESC not in str(err) and "\\x1b[2Jgone" in str(err)
    p = write(tmp_path, '"\\e[31mred\\u202e": 1\n', "fedctl.yaml")
    err = fails(load_experiment, str(p), [], cwd=tmp_path)
    assert ESC not in str(err) and "\u202e" not in str(err) and "\\u202e" in str(err)


def test_payload_validator_messages_are_escaped_and_bounded(tmp_path):
    p = write(tmp_path, 'data: {path: ["\\e[2J", ' + ", ".join(["x" * 50] * 200) + "]}\n", "fedctl.yaml")
    err = fails(load_experiment, str(p), [], cwd=tmp_path)
    assert err.key_path == "data.path" and ESC not in str(err) and len(err.problem) <= 240
