"""Files named by the experiment config (a data set ``data.path``, a model ``my_model.py:build``)
travel to the hosts with the run, so a config that works here works on the fleet.

The payload's manifest lists which key paths may name files (``config.files``). A value that names
a file on this machine is shipped to ``<workdir>/data/<sha256[:16]>/<name>`` (content-addressed: a
second run or an unchanged file costs one hash check) and the host's copy of the config points
there. A value that names a local folder (a Flower app) travels the same way, as a tree: its
hash covers every file's path and content, only changed files are sent, and caches (``__pycache__``,
``.git``, virtual environments) stay behind. A value that names no local file is left alone: it may
already be on the hosts. The local provider's hosts share this machine, so they just get the
absolute path.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedctl.connectors.base import Connector
from fedctl.deploy import make_dirs, push_files
from fedctl.errors import PayloadError
from fedctl.payload import sha256_file
from fedctl.state import HostRecord

DATA_DIR = "data"
#: folders never shipped with a config-named folder (caches, VCS, virtual environments, build output)
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache", "node_modules", "build", "dist", ".eggs"})
#: a config-named folder with more files than this is refused (a home folder named by mistake)
MAX_FOLDER_FILES = 5000


@dataclass(frozen=True)
class ShippedFile:
    """One config value that names a local file."""

    key_path: str  # e.g. "data.path"
    local: Path
    sha256: str
    suffix: str  # what followed the file in the value (":build_fn" for models), else ""
    #: for a folder: its files as (path relative to the folder, POSIX; local path; sha256); () for a file
    members: tuple[tuple[str, Path, str], ...] = ()

    @property
    def is_dir(self) -> bool:
        return bool(self.members)

    def remote_path(self, workdir: str) -> str:
        return posixpath.join(workdir, DATA_DIR, self.sha256[:16], self.local.name)


def folder_members(root: Path) -> tuple[tuple[str, Path, str], ...]:
    """The files of a folder to ship, sorted: regular files only, no caches (``SKIP_DIRS``, ``*.pyc``);
    a symlink pointing outside the folder is refused."""
    root = root.resolve()
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]) or p.suffix in (".pyc", ".pyo"):
            continue
        if p.is_dir() or not p.is_file():
            continue
        real = p.resolve()
        if root not in real.parents:
            raise PayloadError(f"{root}: {rel} points outside the folder; fedctl does not ship it")
        out.append((rel.as_posix(), p, sha256_file(p)))
        if len(out) > MAX_FOLDER_FILES:
            raise PayloadError(f"{root} holds more than {MAX_FOLDER_FILES} files; is it the right folder?")
    return tuple(out)


def folder_hash(members: Sequence[tuple[str, Path, str]]) -> str:
    """One hash for a tree: every member's relative path and content hash."""
    h = hashlib.sha256()
    for rel, _, digest in members:
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def _get(d: dict[str, Any], key_path: str) -> Any:
    for part in key_path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set(d: dict[str, Any], key_path: str, value: Any) -> None:
    *parents, last = key_path.split(".")
    for part in parents:
        d = d[part]
    d[last] = value


def _split(value: str) -> tuple[str, str]:
    """``"m.py:build" -> ("m.py", ":build")``; any other value is all file."""
    head, sep, tail = value.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head, ":" + tail
    return value, ""


def find_files(experiment: dict[str, Any], key_paths: Sequence[str], base_dir: Path) -> tuple[list[ShippedFile], list[str]]:
    """The config values that name local files (relative ones against ``base_dir``), and notes for
    values that name no local file (they must exist on the hosts)."""
    found, notes = [], []
    for kp in key_paths:
        value = _get(experiment, kp)
        if not isinstance(value, str) or not value:
            continue
        file, suffix = _split(value)
        path = Path(file).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if path.is_file():
            found.append(ShippedFile(kp, path.resolve(), sha256_file(path), suffix))
        elif path.is_dir() and not suffix:
            members = folder_members(path)
            if not members:
                notes.append(f"{kp}: {file} is an empty folder here; nothing is shipped")
                continue
            found.append(ShippedFile(kp, path.resolve(), folder_hash(members), "", members))
        elif kp != "model" or suffix:  # "mlp" is a model name, not a missing file
            notes.append(f"{kp}: {file} is not a file here; it must exist on every host")
    return found, notes


def config_for_host(experiment: dict[str, Any], files: Sequence[ShippedFile], rec: HostRecord) -> dict[str, Any]:
    """The experiment as this host must see it: shipped files point at the host's copies."""
    out = copy.deepcopy(experiment)
    for f in files:
        where = str(f.local) if rec.info.kind == "local" else f.remote_path(rec.workdir or "")
        _set(out, f.key_path, where + f.suffix)
    return out


def ship(conn: Connector, rec: HostRecord, files: Sequence[ShippedFile]) -> int:
    """Copy the files to the host (unchanged ones are skipped). Returns how many were sent."""
    if rec.info.kind == "local" or not files:
        return 0
    sent = 0
    for f in files:
        root = posixpath.dirname(f.remote_path(rec.workdir or ""))
        make_dirs(conn, rec, trees=[root])
        if f.is_dir:
            items = [(posixpath.join(f.local.name, rel), str(p), digest) for rel, p, digest in f.members]
        else:
            items = [(f.local.name, str(f.local), f.sha256)]
        report = push_files(conn, items, root)
        sent += len(report.sent)
    return sent
