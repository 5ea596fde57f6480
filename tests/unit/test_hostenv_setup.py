"""fedctl.hostenv without hosts: version pinning and what set-up runs, through fake connectors."""

from __future__ import annotations

from importlib import metadata

import pytest

from fedctl.connectors.base import CommandResult
from fedctl.hostenv import SetupFailed, pinned, prepare, run_setup
from fedctl.model import EnvSettings, HostInfo
from fedctl.state import HostRecord
from tests.fakes import FakeFactory


def test_requirements_are_pinned_to_this_machines_versions():
    ours = metadata.version("pyyaml")
    assert pinned(["pyyaml", "pyyaml>=1", "no-such-package-xyz", "git+https://x/y.git"]) == [
        f"pyyaml=={ours}", "pyyaml>=1", "no-such-package-xyz", "git+https://x/y.git"]


def test_setup_runs_once_per_content_and_reports_a_failure_with_its_output():
    host = HostInfo("a", "127.0.0.2", python_env=EnvSettings(setup=("apt-get install -y x",)))
    rec = HostRecord(host)
    done = {"yes": False}

    def test_done(cmd, env, stdin):
        return CommandResult(0 if done["yes"] else 1, "", "", 0.0)

    factory = FakeFactory(rules=[(r"^test -f .*setup-.*\.done", test_done),
                                 (r"apt-get install", CommandResult(7, "", "", 0.0)),
                                 (r"^tail ", CommandResult(0, "E: unable to locate package x\n", "", 0.0))])
    conn = factory(host)
    with pytest.raises(SetupFailed, match="exit 7") as err:
        run_setup(conn, rec, "/w")
    assert "unable to locate" in str(err.value)
    done["yes"] = True
    assert run_setup(conn, rec, "/w") is False  # ran once already: nothing runs


def test_an_existing_environment_is_found_not_rebuilt():
    host = HostInfo("a", "127.0.0.2", python="/usr/bin/python3")
    rec = HostRecord(host)
    factory = FakeFactory(rules=[(r"^test -f .*\.complete", CommandResult(0, "", "", 0.0))])
    conn = factory(host)
    res = prepare(conn, rec, "/w", ["pyyaml"], "3.11.7")
    assert not res.created and res.python.startswith("/w/envs/") and res.python.endswith("/bin/python")
    assert not any("pip" in c and "install" in c for c in conn.commands)
