"""fedctl.fsutil: the one atomic file write (state, results, fetched files, the local connector)."""

from __future__ import annotations

import os
import stat

import pytest

from fedctl import fsutil
from fedctl.fsutil import TMP_MARK, atomic_write, atomic_writer


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_bytes_and_text_with_the_mode_asked(tmp_path):
    target = tmp_path / "sub" / "state.json"  # the missing folder is made
    atomic_write(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one" and stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, "zwei \u00e9", mode=0o644)
    assert target.read_text("utf-8") == "zwei \u00e9" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _names(target.parent) == ["state.json"]


def test_mode_none_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f", b"x", mode=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


def test_secret_mode_is_set_before_the_first_byte(tmp_path):
    target = tmp_path / "token"
    with atomic_writer(target, mode=0o600) as fh:
        (tmp,) = [p for p in tmp_path.iterdir() if TMP_MARK in p.name]
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # before anything is written
        fh.write(b"secret")
        assert not target.exists()  # nothing is visible under the real name until the end
    assert target.read_bytes() == b"secret"


def test_failure_mid_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write(target, b'{"old": true}')
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_writer(target) as fh:
            fh.write(b'{"new": tr')  # half a document ...
            raise RuntimeError("disk on fire")  # ... and then the writer dies
    assert target.read_bytes() == b'{"old": true}'
    assert _names(tmp_path) == ["state.json"]


def test_failed_fsync_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["state.json"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    # without it a crash soon after the rename can bring back the old entry (or none)
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, (tmp_path / "f").exists()))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", recording_fsync)
    atomic_write(tmp_path / "f", b"x")
    assert synced == [("file", False), ("folder", True)]  # the data before the rename, the folder after


def test_a_folder_that_refuses_fsync_is_not_an_error(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def no_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # what some network file systems answer
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", no_dir_fsync)
    atomic_write(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_state_store_saves_through_it(tmp_path, monkeypatch):
    from fedctl.state import RunState, StateStore

    written: list[tuple[str, int | None]] = []
    real = fsutil.atomic_writer

    def spy(path, mode=0o644):
        written.append((os.path.basename(path), mode))
        return real(path, mode)

    monkeypatch.setattr(fsutil, "atomic_writer", spy)
    store = StateStore(tmp_path / ".fedctl")
    store.save(RunState(run_id="r1"))
    assert written == [("state.json", 0o600)]
    assert store.load().run_id == "r1"
