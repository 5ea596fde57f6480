"""Issue 15's smaller findings: Python version specs, read-only commands leave no ``.fedctl/``,
``start`` cannot silently run another number of clients than was provisioned, and a bound on the
text an inventory or a YAML document stands for once expanded. CLI cases go through the installed
console script in a temporary folder, as a user's shell runs them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedctl.config.loader import MAX_TEXT_CHARS, parse_yaml_text
from fedctl.config.textsize import check_text_size
from fedctl.errors import ConfigError
from fedctl.facts import gather_facts, satisfies

FEDCTL = shutil.which("fedctl")


def fedctl(cwd: Path, *args: str, memory_mb: int | None = None) -> subprocess.CompletedProcess:
    """Run the console script in ``cwd``; ``memory_mb`` caps its address space (a runaway is a
    MemoryError there, not a machine out of memory)."""
    assert FEDCTL, "the fedctl console script is not installed (pip install -e .)"

    def cap() -> None:
        if memory_mb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    env = {k: v for k, v in os.environ.items() if k != "FEDCTL_STATE_DIR"}
    return subprocess.run([FEDCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**env, "COLUMNS": "200"}, preexec_fn=cap)


def fake_payload(root: Path, python: str = ">=3.8") -> None:
    """A payload with no imports (provision checks it in a fraction of a second) and a config."""
    d = root / "payloads" / "fake"
    d.mkdir(parents=True)
    (d / "payload.yaml").write_text(textwrap.dedent(f"""
        name: fake
        files: ["*.py"]
        requirements: {{python: "{python}"}}
        server: {{command: "{{python}} {{payload_dir}}/server.py --port {{port}}"}}
        client: {{command: "{{python}} {{payload_dir}}/client.py --client-ids {{client_ids}}"}}
    """))
    for name in ("server.py", "client.py"):
        (d / name).write_text("print('fake')\n")
    (root / "fedctl.yaml").write_text("payload: fake\nrounds: 2\n")


# ---- Python version specs (packaging's SpecifierSet) ---------------------------------------------


@pytest.mark.parametrize(
    "version, spec, ok",
    [
        ("3.11.7", ">=3.10,<3.13", True),  # was rejected: only ">=X.Y" was understood
        ("3.13.1", ">=3.10,<3.13", False),
        ("3.8.10", "~=3.10", False),  # was accepted
        ("3.10.2", "~=3.10", True),
        ("3.11.7", "==3.11.*", True),
        ("3.12.0", "==3.11.*", False),
        ("3.11.7", "!=3.11.7", False),
        ("3.9.18", ">=3.10", False),
        ("3.13.0rc1", ">=3.10", True),  # a release candidate counts as its release
        ("3.12.0+", ">=3.10", True),  # a source build's version, not PEP 440: judged by its numbers
        ("3.11.7", None, True),
    ],
)
def test_python_version_specs(version, spec, ok):
    assert satisfies(version, spec) is ok


@pytest.mark.parametrize("spec", [">=three", "3.10+", ">= 3.10 and < 4"])
def test_an_invalid_python_spec_is_a_config_error(spec):
    with pytest.raises(ConfigError) as e:
        satisfies("3.11.7", spec, file="payloads/x/payload.yaml")
    assert "payloads/x/payload.yaml: requirements.python" in str(e.value)
    assert "~=3.10" in str(e.value)  # says what a valid one looks like


def test_the_host_check_applies_the_spec_to_a_real_interpreter(tmp_path):
    from fedctl.connectors.base import HostInfo
    from fedctl.connectors.local import LocalConnector

    conn = LocalConnector(HostInfo("local1", "localhost", kind="local"))
    major, minor = sys.version_info[:2]
    inside = gather_facts(conn, sys.executable, [], str(tmp_path), f">={major}.{minor},<{major}.{minor + 1}")
    assert inside.ok, inside.problems
    outside = gather_facts(conn, sys.executable, [], str(tmp_path), f"~={major}.{minor + 1}")
    assert not outside.ok
    assert outside.problems == [f"python {outside.python} does not satisfy the payload's requirement ~={major}.{minor + 1}"]


def test_an_invalid_payload_spec_stops_provision_before_any_host(tmp_path):
    fake_payload(tmp_path, python=">=three")
    res = fedctl(tmp_path, "provision", "--dry-run", "--clients", "2")
    assert res.returncode == 2, res.stderr
    assert "payload.yaml: requirements.python: '>=three' is not a Python version specifier" in res.stderr
    assert "Traceback" not in res.stderr


# ---- read-only commands leave no .fedctl/ --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--version",), ("--help",), ("status",), ("status", "--json"), ("watch",), ("cost",), ("logs",),
        ("results",), ("instances",), ("payloads",), ("provision", "--dry-run", "--clients", "2"),
        ("provision", "--help"), ("start",), ("stop",), ("teardown", "--yes"),
    ],
)
def test_read_only_commands_create_no_state_folder(tmp_path, args):
    fake_payload(tmp_path)
    res = fedctl(tmp_path, *args)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode in (0, 2), res.stderr  # done, or "no run here" (start/stop/teardown too)
    assert not (tmp_path / ".fedctl").exists(), f"`fedctl {' '.join(args)}` created .fedctl/"


def test_a_command_that_changes_state_creates_it(tmp_path):
    fake_payload(tmp_path)
    res = fedctl(tmp_path, "provision", "--clients", "2")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / ".fedctl" / "state.json").is_file()


# ---- start cannot change the number of clients ---------------------------------------------------


@pytest.mark.parametrize("args", [("--set", "clients=5"), ("--clients", "5"), ("-n", "5")])
def test_start_refuses_another_number_of_clients_than_provisioned(tmp_path, args):
    fake_payload(tmp_path)
    assert fedctl(tmp_path, "provision", "--clients", "2").returncode == 0
    before = json.loads((tmp_path / ".fedctl" / "state.json").read_text())
    res = fedctl(tmp_path, "start", *args)
    assert res.returncode == 2, res.stderr
    assert "asks for 5 clients" in res.stderr and "provisioned for 2" in res.stderr
    assert "fedctl provision --clients 5" in res.stderr
    after = json.loads((tmp_path / ".fedctl" / "state.json").read_text())
    assert after["started_at"] is None and after == before  # nothing was pushed or started


# ---- a bound on the text an expanded document stands for -----------------------------------------


def test_a_long_value_shared_by_a_host_range_is_refused_fast_and_bounded(tmp_path):
    """900 kB in defaults and a 10,000-host range: 9 GB once copied per host. Before, ``provision
    --dry-run --json --clients 1400`` ran out of memory; now it is a config error naming the file, in
    well under a second of work, in a process capped at 1 GiB."""
    fake_payload(tmp_path)
    big = "x" * 900_000
    (tmp_path / "inv.yaml").write_text(textwrap.dedent(f"""
        provider: static
        defaults:
          user: u
          environment: {{LONG: "{big}"}}
        hosts:
          - name: "h{{00001..10000}}"
            address: "h{{00001..10000}}.lan"
    """))
    t0 = time.monotonic()
    res = fedctl(tmp_path, "provision", "--dry-run", "--json", "-i", "inv.yaml", "--clients", "1400", memory_mb=1024)
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    assert res.stderr.startswith("error: inv.yaml: hosts stand for more than 67,108,864 characters")
    assert "hosts[" in res.stderr and ".environment.LONG, has 900,000" in res.stderr
    assert res.stdout == ""


def test_a_large_plain_inventory_is_still_accepted(tmp_path):
    """The bound leaves room: 10,000 hosts with ordinary values pass."""
    from fedctl.config.inventory import load_inventory

    (tmp_path / "inv.yaml").write_text(textwrap.dedent("""
        provider: static
        defaults: {user: researcher, workdir: ~/fedctl, environment: {PATH: "/usr/local/cuda/bin:$PATH"}}
        hosts:
          - {name: "node{00001..10000}", address: "node{00001..10000}.cluster.example.org"}
    """))
    inv = load_inventory(str(tmp_path / "inv.yaml"))
    assert len(inv.hosts) == 10_000
    check_text_size(inv.path, "hosts", inv.hosts)


def test_check_text_size_counts_shared_strings_each_time():
    s = "y" * 1000
    check_text_size("f.yaml", "hosts", [{"a": s}] * 10, limit=10_000 + 10)
    with pytest.raises(ConfigError, match=r"f\.yaml: hosts stand for more than 9,999 characters"):
        check_text_size("f.yaml", "hosts", [{"a": s}] * 10, limit=9_999)


def test_an_alias_that_stands_for_too_much_text_is_refused_while_loading():
    """200 uses of one 500 kB string: 100 MB of text from a 500 kB file (few values, many bytes)."""
    text = 'x: &a "' + "a" * 500_000 + '"\ny: [' + ", ".join(["*a"] * 200) + "]\n"
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        parse_yaml_text(text, "fedctl.yaml")
    assert time.monotonic() - t0 < 5
    assert str(e.value).startswith("fedctl.yaml: refused at line 2")
    assert f"at most {MAX_TEXT_CHARS:,}" in str(e.value)
    # the same string used a few times is fine
    assert len(parse_yaml_text('x: &a "' + "a" * 500_000 + '"\ny: [*a, *a]\n', "fedctl.yaml")["y"]) == 2


def test_a_nul_in_an_environment_value_is_a_config_error(tmp_path):
    """No environment variable can hold a NUL; the inventory is refused before any host is reached."""
    fake_payload(tmp_path)
    (tmp_path / "inv.yaml").write_text(
        'provider: static\ndefaults: {user: u, environment: {A: "x\\0y"}}\nhosts:\n  - {name: h1, address: 127.0.0.9}\n'
    )
    res = fedctl(tmp_path, "provision", "--dry-run", "-i", "inv.yaml", "--clients", "1")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: inv.yaml: defaults.environment.A: holds a NUL character"), res.stderr
