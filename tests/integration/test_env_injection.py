"""An inventory's ``environment:`` values are data on real sshd hosts whose login shell is bash, dash
or zsh: nothing in a value runs, every value arrives byte for byte in the remote process's
environment, and only ``$NAME`` / ``${NAME}`` references expand (``PATH: /opt/x:$PATH``).

Each host's sessions run under one shell through sshd's ``ForceCommand`` (``exec SHELL -c
"$SSH_ORIGINAL_COMMAND"``): what a user whose login shell is that shell gets, without changing any
account's shell on this machine. The test checks that the command really ran under that shell.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fedctl.config.inventory import load_inventory
from fedctl.connectors.ssh import SSHConnector
from fedctl.shell import join
from tests.integration.sshd import SshdFleet, sshd_available

pytestmark = pytest.mark.integration

SHELLS = ("bash", "dash", "zsh")

# prints the named variables of this (remote) process's environment as hex bytes, None when unset
_DUMP = (
    "import json, os, sys; "
    "print(json.dumps({k: (os.environb[k.encode()].hex() if k.encode() in os.environb else None) "
    "for k in sys.argv[1:]}))"
)


def _payloads(canary: Path) -> dict[str, str]:
    """The reported payloads (``${B@P}`` and ``$[B]`` ran B's text as a command under bash) and
    more text every shell would otherwise expand."""
    return {
        "A": "$",
        "B": f"x[${{A}}(touch {canary})]",
        "C": "${B@P}",
        "D": "$[B]",
        "E": f"$(touch {canary}) `touch {canary}` $((1+1)) ${{#B}} ${{B:-z}} $1 $$ $? $",
        "F": f"it's \"d\" \\ \\$HOME\n; touch {canary} | & > {canary}.2 * ? [a] ~ =ls !! %1",
        "G": "\u00e9\u4e2d\U0001f600\t",
        "H": "",
    }


def _expected(canary: Path, home_path: str) -> dict[str, str]:
    """What each value must be in the remote environment: references resolved, the rest literal."""
    return {
        "A": "$",
        "B": f"x[$(touch {canary})]",  # ${A} is a reference to the earlier key A ("$")
        "C": "${B@P}",
        "D": "$[B]",
        "E": f"$(touch {canary}) `touch {canary}` $((1+1)) ${{#B}} ${{B:-z}} $1 $$ $? $",
        "F": f"it's \"d\" \\ \\{home_path}\n; touch {canary} | & > {canary}.2 * ? [a] ~ =ls !! %1",
        "G": "\u00e9\u4e2d\U0001f600\t",
        "H": "",
    }


def _login_shell() -> str:
    """The basename of this user's login shell (what sshd runs commands with when not forced)."""
    return Path(pwd.getpwuid(os.getuid()).pw_shell).name


@pytest.fixture
def shell_fleet(tmp_path: Path):
    """One sshd host per shell in SHELLS (127.0.0.240 onwards), sessions forced through that shell,
    plus one last host left to the user's own login shell. Yields (fleet, shell of each host)."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    missing = [s for s in SHELLS if shutil.which(s) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (apt-get install -y {' '.join(missing)}; .ci/run does)")
    fleet = SshdFleet(tmp_path / "sshd", len(SHELLS) + 1, first_address=240)
    for host, shell in zip(fleet.hosts, SHELLS):
        with host.config.open("a") as f:
            f.write(f'ForceCommand exec {shutil.which(shell)} -c "$SSH_ORIGINAL_COMMAND"\n')
    fleet.start_all()
    try:
        yield fleet, (*SHELLS, _login_shell())
    finally:
        fleet.stop_all()


def _dump(conn: SSHConnector, names: list[str]) -> dict[str, bytes | None]:
    r = conn.run(join([sys.executable, "-c", _DUMP, *names]))
    assert r.ok, r.stderr
    return {k: None if v is None else bytes.fromhex(v) for k, v in json.loads(r.stdout).items()}


def test_environment_values_are_data_under_bash_dash_and_zsh(shell_fleet, tmp_path, known_hosts):
    fleet, shells = shell_fleet
    canary = tmp_path / "pwned"
    env = {
        **_payloads(canary),
        "PATH": "/opt/fedctl-test/bin:$PATH",  # the README's example: extend the host's PATH
        "J": "${HOME}/x:$FEDCTL_TEST_SURELY_UNSET:y",  # an unset variable expands to nothing
        "K": "$PATH",  # an earlier key of the same environment
    }
    inv = fleet.write_inventory(tmp_path / "inventory.yaml", environment=env)
    hosts = load_inventory(str(inv)).hosts
    assert all(h.environment == env for h in hosts)
    for host, shell in zip(hosts, shells):
        with SSHConnector(replace(host, environment={}), known_hosts=known_hosts) as bare:
            base = _dump(bare, ["HOME", "PATH"])
        with SSHConnector(host, known_hosts=known_hosts) as conn:
            exe = conn.run("readlink /proc/$$/exe; true")  # "; true": the shell must not exec readlink
            assert exe.ok and Path(exe.stdout.strip()).name == shell, (shell, exe.stdout, exe.stderr)
            got = _dump(conn, list(env))
        assert base["HOME"] and base["PATH"]
        path = b"/opt/fedctl-test/bin:" + base["PATH"]
        want = {k: v.encode() for k, v in _expected(canary, base["HOME"].decode()).items()}
        want.update({"PATH": path, "J": base["HOME"] + b"/x::y", "K": path})
        assert not canary.exists(), f"an environment value ran a command under {shell}"
        assert not Path(f"{canary}.2").exists(), f"an environment value redirected output under {shell}"
        assert got == want, shell
