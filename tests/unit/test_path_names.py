"""Every name that becomes a path is a plain name; every check is a full match (no trailing newline).

Payload names, host names, run ids, payload files and workdirs, each refused with the file and key
that hold it, before anything reaches a host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fedctl.config.inventory import parse_inventory
from fedctl.deploy import remote_payload_dir, remote_run_dir
from fedctl.errors import ConfigError, RemoteError, StateError
from fedctl.model import HostInfo, is_strictly_under, name_problem, rel_path_problem
from fedctl.ops.collect import results_dir
from fedctl.payload import load_manifest
from fedctl.state import HostRecord, StateStore

ECHO = Path(__file__).resolve().parents[1] / "payloads" / "echo"

BAD_NAMES = ["", ".", "..", "../../work", "a/b", "/abs", "echo\n", "h1\n", "a b", "-x", "x..y", "a\x1bb",
             "tab\there", "é", "a" * 129]
GOOD_NAMES = ["echo", "fedavg_tf", "fl-client-01", "20261124-171500-a1b2", "h.1", "A9"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_plain_is_refused(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_plain_name_passes(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("rel, ok", [
    ("server.py", True), ("pkg/mod.py", True), ("a b.py", True),
    ("../x.py", False), ("pkg/../../x.py", False), ("a\nb.py", False), ("a.py\n", False),
    ("/etc/passwd", False), ("pkg//x.py", False), ("./x.py", False),
])
def test_payload_file_paths(rel, ok):
    assert (rel_path_problem(rel) is None) is ok


@pytest.mark.parametrize("path, root, under", [
    ("/w/runs/x", "/w", True), ("/w", "/w", False), ("/w/", "/w", False), ("/w/runs/../..", "/w", False),
    ("/w/runs/../../w/runs/x", "/w", True), ("/wx/runs", "/w", False), ("/", "/w", False),
    ("/a", "/", True), ("fedctl/runs/x", "fedctl", True), ("fedctl/../x", "fedctl", False),
])
def test_strictly_under_compares_normalised_paths(path, root, under):
    assert is_strictly_under(path, root) is under


def _payload(tmp_path: Path, **changes: object) -> Path:
    d = tmp_path / "pl"
    shutil.copytree(ECHO, d, ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((d / "payload.yaml").read_text())
    doc.update(changes)
    (d / "payload.yaml").write_text(yaml.safe_dump(doc))
    return d


@pytest.mark.parametrize("name", ["../../work", "..", "echo\n", "a/b", ".fedctl-tree"])
def test_a_payload_name_that_would_leave_its_folder_is_refused(tmp_path, name):
    d = _payload(tmp_path, name=name)
    with pytest.raises(ConfigError) as err:
        load_manifest(d)
    assert err.value.file == str(d / "payload.yaml") and err.value.key_path == "name"
    assert "plain name" in err.value.problem


def test_a_payload_folder_whose_name_is_not_plain_needs_a_name(tmp_path):
    d = _payload(tmp_path)
    doc = yaml.safe_load((d / "payload.yaml").read_text())
    del doc["name"]
    (d / "payload.yaml").write_text(yaml.safe_dump(doc))
    odd = d.rename(tmp_path / "my payload")
    with pytest.raises(ConfigError, match="the folder's name"):
        load_manifest(odd)
    (odd / "payload.yaml").write_text(yaml.safe_dump({**doc, "name": "mine"}))
    assert load_manifest(odd).name == "mine"


def test_a_payload_file_with_a_newline_in_its_name_is_refused(tmp_path):
    d = _payload(tmp_path)
    (d / "evil\nname.py").write_text("x = 1\n")
    with pytest.raises(ConfigError) as err:
        load_manifest(d).files()
    assert err.value.key_path == "files[0]" and "control character" in err.value.problem


def _inventory(host: dict, defaults: dict | None = None) -> dict:
    return {"provider": "static", "defaults": defaults or {},
            "hosts": [{"name": "h1", "address": "10.0.0.1", **host}]}


@pytest.mark.parametrize("host, defaults, key", [
    ({"name": "h1\n"}, None, "hosts[0].name"),
    ({"name": "../h1"}, None, "hosts[0].name"),
    ({"currency": "USD\n"}, None, "hosts[0].currency"),
    ({"password_env": "PW\n"}, None, "hosts[0].password_env"),
    ({"environment": {"PATH\n": "/x"}}, None, "hosts[0].environment"),
    ({"workdir": "/tmp/a\nb"}, None, "hosts[0].workdir"),
    ({}, {"workdir": "~/fed\tctl"}, "defaults.workdir"),
])
def test_inventory_names_are_full_matches_and_workdirs_hold_no_control_characters(host, defaults, key):
    with pytest.raises(ConfigError) as err:
        parse_inventory(_inventory(host, defaults), "inv.yaml")
    assert err.value.file == "inv.yaml"
    assert err.value.key_path is not None and err.value.key_path.startswith(key)


def test_a_workdir_is_recorded_normalised():
    inv = parse_inventory(_inventory({"workdir": "/srv/a/../fl/"}), "inv.yaml")
    assert inv.hosts[0].workdir == "/srv/fl"
    assert parse_inventory(_inventory({}, {"workdir": "~/x/./y/"}), "inv.yaml").hosts[0].workdir == "~/x/y"


def test_remote_paths_refuse_names_from_an_edited_state():
    rec = HostRecord(HostInfo("h1", "10.0.0.1"), workdir="/w/")
    assert remote_run_dir(rec, "20261124-171500-a1b2") == "/w/runs/20261124-171500-a1b2"
    assert remote_payload_dir(rec, "echo") == "/w/payloads/echo"
    for bad in ("../..", "..", "x/../../y", "r\n"):
        with pytest.raises(RemoteError, match="refusing run id"):
            remote_run_dir(rec, bad)
        with pytest.raises(RemoteError, match="refusing payload name"):
            remote_payload_dir(rec, bad)
    with pytest.raises(RemoteError, match="control character"):
        remote_run_dir(HostRecord(HostInfo("h1", "10.0.0.1"), workdir="/home/a\nb/fedctl"), "r1")


def test_a_run_id_that_is_not_plain_puts_no_results_elsewhere(tmp_path):
    store = StateStore(tmp_path / ".fedctl")
    assert results_dir(store, "20261124-171500-a1b2") == tmp_path / "results" / "20261124-171500-a1b2"
    with pytest.raises(StateError, match="run id"):
        results_dir(store, "../../elsewhere")
