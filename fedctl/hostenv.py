"""A host's Python environment: set-up commands, then a virtual environment with the payload's
requirements when the host's ``python`` lacks them.

Inventory keys (``fedctl.model.EnvSettings``): ``setup`` (shell commands run once per host per
content hash of the list), ``env`` (auto | none | venv), ``env_site_packages``, ``wheelhouse`` (a
local folder of wheels pushed once, content-addressed, for hosts without a package index),
``keep_env``. Everything a host's set-up prints goes to a log on that host; a failure reports the
exit code and the last lines of that log, never a traceback of fedctl.

Layout on a host (every folder is recorded as fedctl's, so teardown removes it unless kept; fedctl
writes files only into folders it made, never into an ``envs`` that was there before):
    <workdir>/envs/setup-<hash>/setup.log, .done   set-up commands' output and "ran already" marker
    <workdir>/envs/<hash>/                   the venv; setup.log in it; .complete when usable
    <workdir>/wheelhouse/<hash>/             the pushed wheels
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fedctl.connectors.base import Connector
from fedctl.deploy import make_dirs, push_files, tail_file
from fedctl.errors import RemoteError
from fedctl.shell import join, quote
from fedctl.state import HostRecord
from fedctl.textsafe import escape_control

log = logging.getLogger("fedctl.hostenv")

#: how long a pip install may take on a host (a CUDA TensorFlow is several GB)
INSTALL_TIMEOUT_S = 3600.0
#: how often a long set-up shows the last line of its log, and the longest silence between two reports
PROGRESS_EVERY_S = 5.0
HEARTBEAT_S = 30.0

#: where a step's progress goes: one line at a time (``fedctl.ops.common.Progress``)
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """A Progress that shows nothing."""


class SetupFailed(Exception):
    """A host's set-up failed; the message holds the exit code and the last lines of its log."""


@dataclass(frozen=True)
class EnvResult:
    """What ``prepare`` did on one host: the python to use, and whether anything ran."""

    python: str
    env_dir: str | None  # the venv, when one is used
    created: bool  # a venv was made (or set-up commands ran) this time


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a requirement's leading name (match: a prefix)


def pinned(requirements: Sequence[str]) -> list[str]:
    """Requirements with versions pinned to what THIS machine runs where none is given, so hosts
    and laptop agree (``numpy`` -> ``numpy==1.26.4``). A requirement with a version, a URL or a
    path is left as it is; one not installed here stays unpinned. ``tensorflow[and-cuda]`` takes
    the version of this machine's ``tensorflow`` or ``tensorflow-cpu``."""
    from importlib import metadata

    out = []
    for req in requirements:
        m = _NAME.match(req)
        rest = req[m.end():] if m else ""
        if not m or any(c in rest for c in "<>=!~@;") or "/" in req:
            out.append(req)
            continue
        name = m.group(0)
        candidates = [name]
        if name.lower().startswith("tensorflow"):
            candidates += ["tensorflow", "tensorflow-cpu"]
        version = None
        for c in candidates:
            try:
                version = metadata.version(c)
                break
            except metadata.PackageNotFoundError:
                continue
        out.append(f"{req}=={version}" if version else req)
    return out


def _done(conn: Connector, marker: str) -> bool:
    """Whether a step whose success leaves ``marker`` already ran on the host."""
    return conn.run(f"test -f {quote(marker)}", timeout=30).ok


def _run_logged(
    conn: Connector, script: str, log_path: str, marker: str, what: str,
    progress: Progress = _quiet,
) -> None:
    """Run ``script`` with its output in ``log_path``; leave ``marker`` when it worked, else raise
    SetupFailed with the exit code and the log's last lines. While it runs, ``progress`` gets the
    log's last line every ``PROGRESS_EVERY_S`` seconds when it changed (and at least every ``HEARTBEAT_S``), so
    a TensorFlow install of several minutes shows what it is doing instead of nothing."""
    done = threading.Event()
    watcher = threading.Thread(
        target=_follow_log, args=(conn, log_path, what, progress, PROGRESS_EVERY_S, done),
        name=f"fedctl-setup-log-{conn.host.name}", daemon=True,
    )
    watcher.start()
    try:
        res = conn.run(f"{{ {script}; }} > {quote(log_path)} 2>&1 && touch {quote(marker)}",
                       timeout=INSTALL_TIMEOUT_S)
    finally:
        done.set()
        watcher.join()
    if not res.ok:
        tail = tail_file(conn, log_path, 12).strip() or res.stderr.strip()[-800:]
        raise SetupFailed(f"{what} failed (exit {res.exit_code}; log {log_path}):\n{tail}")


def _follow_log(conn: Connector, log_path: str, what: str, progress: Progress, every: float,
                done: threading.Event) -> None:
    """Report the last line of ``log_path`` until ``done`` (a second channel of the same
    connection; a failed read ends the reports, never the set-up)."""
    start = shown_at = time.monotonic()
    last = ""
    while not done.wait(every):
        try:
            line = tail_file(conn, log_path, 1).strip()
        except RemoteError as exc:
            log.debug("host %s: reading %s: %s", conn.host.name, log_path, exc)
            return
        now = time.monotonic()
        if line and (line != last or now - shown_at >= HEARTBEAT_S):
            last, shown_at = line, now
            elapsed = int(now - start)
            progress(f"{conn.host.name}: {what} ({elapsed // 60}m{elapsed % 60:02d}s): {escape_control(line)[:160]}")


def run_setup(conn: Connector, rec: HostRecord, workdir: str, progress: Progress = _quiet) -> bool:
    """Run the host's ``setup`` commands once per content hash. Returns whether they ran now.
    With ``keep_env`` the folder with the "ran already" marker is kept by teardown as the env is,
    so the next run on the host does not set it up again."""
    commands = rec.info.python_env.setup
    if not commands:
        return False
    envs = posixpath.join(workdir, "envs")
    key = _digest(*commands)
    # the log and the "ran already" marker live in a folder fedctl makes (an envs/ that was there
    # before, or a setup-<hash> of someone else's, is never written into: make_dirs refuses it)
    folder = posixpath.join(envs, f"setup-{key}")
    make_dirs(conn, rec, holders=[envs], trees=[folder], keep=rec.info.python_env.keep)
    done, log_path = posixpath.join(folder, ".done"), posixpath.join(folder, "setup.log")
    if _done(conn, done):
        return False
    # one shell for the list, stopping at the first failure; its number and exit code are reported
    script = "; ".join(
        f"echo '$ '{quote(c)}; ( {c} ) || {{ rc=$?; echo \"fedctl: setup command {i + 1} failed with exit $rc\"; exit $rc; }}"
        for i, c in enumerate(commands)
    )
    _run_logged(conn, script, log_path, done, "setup", progress)
    return True


def _push_wheelhouse(conn: Connector, rec: HostRecord, workdir: str) -> str | None:
    """Push the inventory's wheelhouse once (content-addressed); return its folder on the host."""
    folder = rec.info.python_env.wheelhouse
    if not folder:
        return None
    from fedctl.payload import sha256_file

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    digests = [(p.name, str(p), sha256_file(p)) for p in files]
    remote = posixpath.join(workdir, "wheelhouse", _digest(*(d for _, _, d in digests)))
    make_dirs(conn, rec, trees=[remote], keep=rec.info.python_env.keep)
    push_files(conn, digests, remote)
    return remote


def prepare(
    conn: Connector, rec: HostRecord, workdir: str, requirements: Sequence[str], python_version: str,
    progress: Progress = _quiet,
) -> EnvResult:
    """Make (or find) the venv for ``requirements`` on the host; raise SetupFailed with the log's
    last lines when pip fails. The same requirements on the same host are a no-op the second time
    (one ``test -f``). ``progress`` gets pip's last line every few seconds while it installs."""
    settings = rec.info.python_env
    wheels = _push_wheelhouse(conn, rec, workdir)
    reqs = pinned(requirements)
    key = _digest(rec.info.python, python_version, str(settings.site_packages), wheels or "", *reqs)
    env_dir = posixpath.join(workdir, "envs", key)
    py = posixpath.join(env_dir, "bin", "python")
    complete = posixpath.join(env_dir, ".complete")
    if _done(conn, complete):
        make_dirs(conn, rec, trees=[env_dir], keep=settings.keep)  # adopt it (a kept env) as ours
        return EnvResult(py, env_dir, False)
    make_dirs(conn, rec, holders=[posixpath.join(workdir, "envs")], trees=[env_dir], keep=settings.keep)
    log_path = posixpath.join(env_dir, "setup.log")
    venv = [rec.info.python, "-m", "venv", *(["--system-site-packages"] if settings.site_packages else []), env_dir]
    index = ["--no-index", "--find-links", wheels] if wheels else []
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *index, *reqs]
    _run_logged(conn, f"{join(venv)} && {join(pip)}", log_path, complete, "creating the environment", progress)
    return EnvResult(py, env_dir, True)
