"""Quoting: hostile values survive as literal arguments when run through a real shell."""

from __future__ import annotations

import json
import sys

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.local import LocalConnector
from fedctl.results.redact import redact_text
from fedctl.shell import join, quote

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


def test_join_and_quote_each_arg(conn, tmp_path):
    canary = tmp_path / "pwned"
    value = f"x$(touch {canary})'\"\n"
    assert json.loads(conn.run(join(ECHO_ARGV + [value, "--flag", value])).stdout) == [value, "--flag", value]
    assert json.loads(conn.run(join(ECHO_ARGV) + " " + quote(value)).stdout) == [value]
    assert not canary.exists()


def test_hostile_env_values_arrive_literally(conn, tmp_path):
    canary = tmp_path / "pwned"
    value = f"$(touch {canary}); `touch {canary}` 'q' \"d\"\n"
    r = conn.run('printf %s "$V"', env={"V": value})
    assert r.stdout == value and not canary.exists()


def test_masked_form_hides_secrets():
    # fedctl's one masker (shell.mask and shell.Cmd.masked, which nothing used, are gone)
    line = "login --password hunter2 --token s3cr3t-hunter2"
    assert redact_text(line, ["s3cr3t-hunter2", "hunter2", ""]) == "login --password *** --token ***"
    assert redact_text("a hunter2 b hunter2", ["hunter2"]) == "a *** b ***"


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


# ---- a host's ``environment:``: values are data, only $NAME / ${NAME} expand --------------------

from fedctl.shell import env_value_parts, export_prefix  # noqa: E402


@pytest.mark.parametrize(
    "value, parts",
    [
        ("/opt/x:$PATH", [("text", "/opt/x:"), ("ref", "PATH")]),
        ("${HOME}/a$B_1c", [("ref", "HOME"), ("text", "/a"), ("ref", "B_1c")]),
        ("$", [("text", "$")]),
        ("${B@P}", [("text", "${B@P}")]),
        ("$[B]", [("text", "$[B]")]),
        ("$(id) $1 $$ ${#X} ${X:-y} ${ X}", [("text", "$(id) $1 $$ ${#X} ${X:-y} ${ X}")]),
        ("x[${A}(id)]", [("text", "x["), ("ref", "A"), ("text", "(id)]")]),
        ("", []),
    ],
)
def test_only_name_references_are_references(value, parts):
    assert env_value_parts(value) == parts


@pytest.mark.parametrize("shell", ["bash", "dash", "zsh"])
def test_export_prefix_is_data_in_every_shell(shell, tmp_path):
    import shutil
    import subprocess

    exe = shutil.which(shell)
    assert exe, f"{shell} is not installed (apt-get install -y {shell})"
    canary = tmp_path / "pwned"
    env = {"A": "$", "B": f"x[${{A}}(touch {canary})]", "C": "${B@P}", "D": "$[B]",
           "E": f"'$(touch {canary})' `touch {canary}` \"q\" \\ =ls ~ *\n", "P": "/opt/x:$PATH", "U": "a${FEDCTL_NOPE}b"}
    dump = join([sys.executable, "-c", "import json, os; print(json.dumps({k: os.environ[k] for k in 'ABCDEPU'}))"])
    out = subprocess.run([exe, "-c", export_prefix(env) + dump], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, check=True).stdout
    assert not canary.exists()
    assert json.loads(out) == {
        "A": "$", "B": f"x[$(touch {canary})]", "C": "${B@P}", "D": "$[B]", "E": env["E"],
        "P": "/opt/x:/usr/bin:/bin", "U": "ab",
    }


@pytest.mark.parametrize("name", ["A\n", "1A", "A-B", "", "A B"])
def test_export_prefix_refuses_bad_names(name):
    with pytest.raises(ValueError):
        export_prefix({name: "x"})


def test_export_prefix_refuses_a_nul_value():
    with pytest.raises(ValueError, match="NUL"):
        export_prefix({"A": "a\0b"})
