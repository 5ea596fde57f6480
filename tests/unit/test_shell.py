"""Quoting: hostile values survive as literal arguments when run through a real shell."""

from __future__ import annotations

import json
import sys

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.shell import Cmd, join, mask, quote

HOSTILE = [
    "a; touch {canary}",
    "$(touch {canary})",
    "`touch {canary}`",
    "it's \"quoted\"",
    "line1\nline2; touch {canary}",
    "&& touch {canary} ||",
    "| tee {canary}",
    "> {canary}",
    "${{HOME}} $HOME * ?",
    "-n",
    "",
    "tab\there",
    "back\\slash\\",
    "'; touch {canary}; echo '",
    "\u00e9\u4e2d\U0001f600",
]

ECHO_ARGV = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


@pytest.fixture
def conn() -> LocalConnector:
    return LocalConnector(HostInfo("local1", "localhost", kind="local"))


def test_hostile_arguments_arrive_literally(conn, tmp_path):
    canary = tmp_path / "pwned"
    args = [h.format(canary=canary) for h in HOSTILE]
    r = conn.run(join(ECHO_ARGV + args))
    assert r.ok, r.stderr
    assert json.loads(r.stdout) == args
    assert not canary.exists()


def test_cmd_of_and_quote_each_arg(conn, tmp_path):
    canary = tmp_path / "pwned"
    value = f"x$(touch {canary})'\"\n"
    cmd = Cmd.of(*ECHO_ARGV, value, "--flag", value)
    assert json.loads(conn.run(str(cmd)).stdout) == [value, "--flag", value]
    assert json.loads(conn.run(join(ECHO_ARGV) + " " + quote(value)).stdout) == [value]
    assert not canary.exists()


def test_hostile_env_values_arrive_literally(conn, tmp_path):
    canary = tmp_path / "pwned"
    value = f"$(touch {canary}); `touch {canary}` 'q' \"d\"\n"
    r = conn.run('printf %s "$V"', env={"V": value})
    assert r.stdout == value and not canary.exists()


def test_masked_form_hides_secrets():
    cmd = Cmd.of("login", "--password", "hunter2", secrets=["hunter2"])
    assert "hunter2" in str(cmd)
    assert "hunter2" not in cmd.masked and "***" in cmd.masked
    assert mask("a hunter2 b hunter2", ["hunter2", ""]) == "a *** b ***"


def test_host_environment_expands_variables_but_runs_nothing(tmp_path):
    from fedctl.connectors.local import LocalConnector
    from fedctl.model import HostInfo

    marker = tmp_path / "ran"
    env = {"PATH": "/opt/x:$PATH", "Q": f'a"b`touch {marker}`c\\d$(touch {marker})'}
    conn = LocalConnector(HostInfo(name="l", address="127.0.0.1", kind="local", environment=env))
    out = conn.run('echo "$PATH"; echo "$Q"').stdout.splitlines()
    assert out[0].startswith("/opt/x:") and len(out[0]) > len("/opt/x:")
    assert out[1] == f'a"b`touch {marker}`c\\d$(touch {marker})'
    assert not marker.exists()
