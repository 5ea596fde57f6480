"""Files named by the config: which values are files, and what each host's config says."""

from __future__ import annotations

from fedctl.connectors.base import HostInfo
from fedctl.shipping import config_for_host, find_files
from fedctl.state import HostRecord


def test_local_files_are_found_and_rewritten_per_host(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.npz").write_bytes(b"data")
    (tmp_path / "m.py").write_text("def build(s, c): pass\n")
    exp = {"data": {"path": "d/x.npz"}, "model": "m.py:build", "rounds": 3}
    files, notes = find_files(exp, ["data.path", "model"], tmp_path)
    assert [f.key_path for f in files] == ["data.path", "model"] and notes == []
    remote = HostRecord(info=HostInfo(name="h", address="10.0.0.2"), workdir="/w")
    cfg = config_for_host(exp, files, remote)
    assert cfg["data"]["path"] == f"/w/data/{files[0].sha256[:16]}/x.npz"
    assert cfg["model"] == f"/w/data/{files[1].sha256[:16]}/m.py:build"
    assert exp["data"]["path"] == "d/x.npz"  # the original is untouched
    local = HostRecord(info=HostInfo(name="l", address="127.0.0.1", kind="local"), workdir="/x")
    assert config_for_host(exp, files, local)["data"]["path"] == str((tmp_path / "d" / "x.npz").resolve())


def test_names_and_missing_files(tmp_path):
    exp = {"data": {"path": "/srv/mnist.npz"}, "model": "mlp"}
    files, notes = find_files(exp, ["data.path", "model"], tmp_path)
    assert files == []
    assert notes == ["data.path: /srv/mnist.npz is not a file here; it must exist on every host"]
    files, notes = find_files({"data": {"path": None}, "model": "nope.py:build"}, ["data.path", "model"], tmp_path)
    assert files == [] and notes == ["model: nope.py is not a file here; it must exist on every host"]
