"""Remote primitives every lifecycle step is built from: paths, detached processes, payload push.

Each function takes one Connector and does one job on that host with as few round trips as it can.
Commands are assembled from ``shlex.quote``d parts (``fedctl.shell``); nothing secret is ever part
of a command (the run token travels with ``put_bytes(mode=0o600)``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from fedctl.connectors.base import Connector
from fedctl.errors import RemoteError
from fedctl.model import CONTROL_CHARS, name_problem
from fedctl.shell import join, posix_sh, quote
from fedctl.state import HostRecord, ProcessRecord


def remote_workdir(host: HostRecord) -> str:
    """The host's workdir as resolved at provision, normalised. RemoteError when it is not resolved
    yet, or holds a control character (a home folder with a newline in its name: the run's marks
    and fedctl's listings would be ambiguous there)."""
    if not host.workdir:
        raise RemoteError(f"{host.name}: workdir not resolved yet (was the host provisioned?)")
    if CONTROL_CHARS.search(host.workdir):
        raise RemoteError(f"{host.name}: workdir {host.workdir!r} holds a control character; fedctl works"
                          " only in folders whose path has none")
    return posixpath.normpath(host.workdir)


def _plain(host: HostRecord, what: str, name: str) -> str:
    """``name`` when it is a plain name (``fedctl.model.name_problem``), else RemoteError: a run id or
    payload name from an edited or foreign state never steers a path out of the workdir."""
    problem = name_problem(name)
    if problem:
        raise RemoteError(f"{host.name}: refusing {what} {problem}")
    return name


def remote_run_dir(host: HostRecord, run_id: str) -> str:
    """``<workdir>/runs/<run-id>`` on that host (workdir must be resolved already)."""
    return posixpath.join(remote_workdir(host), "runs", _plain(host, "run id", run_id))


def remote_payload_dir(host: HostRecord, payload_name: str) -> str:
    """``<workdir>/payloads/<name>`` on that host."""
    return posixpath.join(remote_workdir(host), "payloads", _plain(host, "payload name", payload_name))


def check(result_ok: bool, host: str, what: str, detail: str) -> None:
    """Raise RemoteError naming the host and step when a remote step failed."""
    if not result_ok:
        raise RemoteError(f"{host}: {what} failed: {detail.strip()[-500:] or 'no output'}")


#: every process fedctl starts carries its run dir in this variable; children inherit it. With the
#: start time from /proc it tells our process from an unrelated one that reused a recorded pid.
RUN_MARK_ENV = "FEDCTL_RUN_DIR"


@dataclass(frozen=True)
class ProcRef:
    """What identifies a process fedctl started: pid, start time and run mark.

    ``start`` is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot; None when unknown, e.g.
    the process was gone before it could be read). ``mark`` is the run dir the process was started
    for; the process carries it as ``FEDCTL_RUN_DIR`` in its environment.
    """

    pid: int
    start: int | None
    mark: str


#: POSIX sh functions that check a process's identity on the host, in the same shell command as the
#: signal that follows (no window for a pid to be reused between the check and the kill).
#:   _st PID            -> "START PGRP" of a live, non-zombie process; fails otherwise
#:   _ours PID START MARK -> succeeds when PID is that process: same start time (START "-": unknown,
#:                         as in a state an older fedctl wrote) and MARK in its environment or argv
IDENT_SH = r"""_st() { _s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; _s=${_s##*") "}
set -- $_s; [ "$1" != Z ] && [ "$1" != X ] || return 1; echo "${20} $3"; }
_ours() { _i=$(_st "$1") || return 1; _g=${_i#* }; _i=${_i% *}
if [ "$2" != - ] && [ "$2" != "$_i" ]; then return 1; fi
{ tr '\000' '\n' < "/proc/$1/environ" | grep -qxF "FEDCTL_RUN_DIR=$3"; } 2>/dev/null && return 0
{ tr '\000' '\n' < "/proc/$1/cmdline" | grep -qF -- "$3"; } 2>/dev/null; }
"""


def ref_of(proc: ProcessRecord) -> ProcRef:
    """The identity of a recorded process (its run mark is the folder of its pid file)."""
    return ProcRef(int(proc.pid or 0), proc.start_time, posixpath.dirname(proc.pidfile))


def record_spawn(proc: ProcessRecord, ref: ProcRef) -> None:
    """Store what ``spawn_detached`` returned in the process record."""
    proc.pid, proc.start_time = ref.pid, ref.start


def _candidates(refs: Iterable[ProcRef], scan_marks: Sequence[str] = ()) -> list[str]:
    """Shell lines that set ``M0``, ``M1``... (the marks) and ``_c`` (the candidates as
    ``pid:start:k`` words); with ``scan_marks``, every process carrying one of those marks in its
    environment is added too (children, processes whose pid fedctl never learnt)."""
    marks: dict[str, int] = {}
    words = []
    for r in refs:
        if not r.pid or int(r.pid) <= 1:
            continue
        k = marks.setdefault(r.mark, len(marks))
        words.append(f"{int(r.pid)}:{'-' if r.start is None else int(r.start)}:{k}")
    for m in scan_marks:
        marks.setdefault(m, len(marks))
    lines = [f"M{k}={quote(m)}" for m, k in marks.items()]
    lines.append(f"_c={quote(' '.join(words))}")
    for m in scan_marks:
        k = marks[m]
        lines.append(
            f'for _f in $(grep -lzxF "FEDCTL_RUN_DIR=$M{k}" /proc/[0-9]*/environ 2>/dev/null); do '
            '_p=${_f#/proc/}; _p=${_p%/environ}; _i=$(_st "$_p") || continue; '
            f'_c="$_c $_p:${{_i% *}}:{k}"; done'
        )
    # _each FN: call FN PID START MARK for each candidate that is still ours (sets _g: its group)
    lines.append(
        r'_each() { for _w in $_c; do _p=${_w%%:*}; _r=${_w#*:}; _t=${_r%%:*}; '
        r'eval "_m=\$M${_r#*:}"; _ours "$_p" "$_t" "$_m" && "$1" "$_p"; done; }'
    )
    return lines


def spawn_detached(
    conn: Connector,
    command: str,
    cwd: str,
    pidfile: str,
    log: str,
    env: Mapping[str, str] | None = None,
) -> ProcRef:
    """Start ``command`` detached from the SSH session; return what identifies the process.

    ``setsid`` makes it a process-group leader (so stop can signal the whole group) and frees it
    from the session; ``nohup`` + redirected stdio keep it alive after the connection closes. It
    runs with ``FEDCTL_RUN_DIR=<cwd>`` (the run mark) and ``env`` (e.g. CUDA_VISIBLE_DEVICES).
    ``pidfile`` gets "PID START" (written via a
    temp name) BEFORE we return, so a fedctl killed right after this call still leaves a trace that
    teardown finds and can check.

    A connector with a ``spawn_detached`` of its own starts the process its way, with the same pid
    file and run mark (a Slurm node: as a job step of its own, which a detached child of a short
    step is not).
    """
    own = getattr(type(conn), "spawn_detached", None)  # on the class: a test's Mock has every attribute
    if own is not None:
        return own(conn, command, cwd, pidfile, log, env)
    inner = f"exec {command}"
    script = (
        IDENT_SH
        + f"cd {quote(cwd)} && "
        f"({''.join(f'{k}={quote(v)} ' for k, v in (env or {}).items())}{RUN_MARK_ENV}={quote(cwd)} setsid nohup /bin/sh -c {quote(inner)} > {quote(log)} 2>&1 < /dev/null & "
        f"_p=$!; _i=$(_st $_p) || _i=-; "
        f'echo "$_p ${{_i% *}}" > {quote(pidfile + ".tmp")} && mv {quote(pidfile + ".tmp")} {quote(pidfile)}) && '
        f"cat {quote(pidfile)}"
    )
    res = conn.run(posix_sh(script), timeout=60)
    check(res.ok, conn.host.name, "starting a process", res.stderr or res.stdout)
    refs = parse_pidfile(res.stdout, cwd)
    if not refs:
        raise RemoteError(f"{conn.host.name}: no pid came back from the start command")
    return refs[-1]


def parse_pidfile(text: str, mark: str) -> list[ProcRef]:
    """The processes a pid file names: one "PID START" per line (an older fedctl wrote "PID")."""
    refs = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        start = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        refs.append(ProcRef(int(parts[0]), start, mark))
    return refs


def _ours_now(conn: Connector, refs: Sequence[ProcRef], scan_marks: Sequence[str], what: str) -> set[int]:
    """The pids of ``refs`` (and of processes carrying one of ``scan_marks``) that are fedctl's
    processes right now, in one round trip (``IDENT_SH``)."""
    script = IDENT_SH + "\n".join(_candidates(refs, scan_marks)) + '\n_yes() { echo "$1"; }; _each _yes; true'
    res = conn.run(posix_sh(script), timeout=30)
    check(res.ok, conn.host.name, what, res.stderr)
    return {int(p) for p in res.stdout.split() if p.isdigit()}


def pids_alive(conn: Connector, refs: Iterable[ProcRef]) -> dict[int, bool]:
    """Which of ``refs`` are alive and still the process fedctl started, in one round trip.

    A pid that now belongs to another process (same number, other start time or no run mark) is
    not alive for fedctl."""
    refs = [r for r in refs if r.pid]
    if not refs:
        return {}
    live = _ours_now(conn, refs, (), "checking processes")
    return {int(r.pid): int(r.pid) in live for r in refs}


def is_alive(conn: Connector, ref: ProcRef) -> bool:
    """Whether one process fedctl started is still running (``pids_alive`` for one)."""
    return pids_alive(conn, [ref]).get(ref.pid, False)


def find_run_pids(conn: Connector, marks: Sequence[str]) -> list[int]:
    """Pids on the host that carry one of the run marks (``FEDCTL_RUN_DIR``) in their environment:
    the run's processes and their children, tracked or not."""
    if not marks:
        return []
    return sorted(_ours_now(conn, [], marks, "listing the run's processes"))


def read_pidfiles(conn: Connector, run_dir: str) -> list[ProcRef]:
    """Processes recorded in the ``*.pid`` files of a run dir (written by ``spawn_detached``)."""
    res = conn.run(f"cat {quote(run_dir)}/*.pid 2>/dev/null || true", timeout=30)
    return parse_pidfile(res.stdout, run_dir)


def stop_pids(
    conn: Connector, refs: Iterable[ProcRef], scan_marks: Sequence[str] = (), grace_s: float = 10.0
) -> list[int]:
    """TERM each of fedctl's processes and its group, wait up to ``grace_s``, then KILL what is left.

    A process is signalled only while it is still the one fedctl started (``IDENT_SH``: start time
    and run mark), checked in the same shell command as each signal; a pid reused by an unrelated
    process is left alone, and so is its group. ``scan_marks`` adds every process carrying one of
    those run marks (children, processes started by a fedctl killed before it saved their pid).
    Returns the pids still alive afterwards (normally none). One round trip: the waiting happens on
    the host, so a slow link does not multiply the grace period.
    """
    refs = [r for r in refs if r.pid and int(r.pid) > 1]
    if not refs and not scan_marks:
        return []
    lines = _candidates(refs, scan_marks)
    steps = max(1, int(grace_s * 5))
    script = (
        IDENT_SH
        + "\n".join(lines)
        # a group is signalled only when its leader is ours (setsid made each process we started one)
        + '\n_term() { [ "$_g" = "$1" ] && kill -TERM -"$1" 2>/dev/null; kill -TERM "$1" 2>/dev/null; }'
        + '\n_kill() { [ "$_g" = "$1" ] && kill -KILL -"$1" 2>/dev/null; kill -KILL "$1" 2>/dev/null; }'
        + '\n_left() { _l="$_l $1"; }; _yes() { echo "$1"; }'
        + f'\n_each _term; _n=0; while [ $_n -lt {steps} ]; do _l=; _each _left; [ -z "$_l" ] && break; '
        "sleep 0.2; _n=$((_n+1)); done"
        + "\n_each _kill; sleep 0.2; _each _yes; true"
    )
    res = conn.run(posix_sh(script), timeout=grace_s + 60)
    check(res.ok, conn.host.name, "stopping processes", res.stderr)
    return sorted({int(p) for p in res.stdout.split() if p.isdigit()})


#: a file in each folder fedctl creates as its own: a later run may reuse such a folder (kept with
#: ``--keep-files``), while a folder without it is someone else's and fedctl never writes into it
TREE_MARKER = ".fedctl-tree"


def make_dirs(
    conn: Connector, rec: HostRecord, trees: Sequence[str] = (), holders: Sequence[str] = (), keep: bool = False
) -> None:
    """Create folders (with their parents) in one round trip and record in ``rec`` what this call
    created: each of ``trees`` as fedctl's entirely, every parent and each of ``holders`` as a
    folder to remove only when empty. A holder that already existed (a project folder, ``~``) is
    never recorded, so teardown never removes it. A tree that already exists is adopted only when
    fedctl made it (it holds ``TREE_MARKER``); otherwise this raises and writes nothing into it.
    ``keep``: teardown leaves what this call records (``keep_env``).
    """
    # normalised: what is recorded is what teardown checks against the workdir, character for character
    holders = [posixpath.normpath(p) for p in holders]
    trees = [posixpath.normpath(p) for p in trees]
    if not holders and not trees:
        return
    # Output: "KIND PATH" records, each ended by a NUL (a path may hold a newline, never a NUL).
    # mk lists the missing ancestors of a path, deepest first, then creates them and ends the group
    # with "E"; the parent is ${d%/*}, not $(dirname), which would drop a name's trailing newlines.
    script = (
        r"mk() { _d=$1; "
        r'while [ ! -e "$_d" ] && [ ! -L "$_d" ] && [ "$_d" != / ] && [ "$_d" != . ]; do '
        r"""printf 'C %s\0' "$_d"; case $_d in */*) _d=${_d%/*}; _d=${_d:-/};; *) _d=.;; esac; done; """
        r"""mkdir -p -- "$1" || exit 1; printf 'E .\0'; }; """
        f'for p in {join(holders)}; do mk "$p"; done; '
        f"for p in {join(trees)}; do "
        # a symbolic link is never fedctl's tree, whatever it points at
        f'if [ -L "$p" ] || {{ [ -e "$p" ] && [ ! -f "$p/{TREE_MARKER}" ]; }}; then '
        r"""printf 'F %s\0' "$p"; continue; fi; mk "$p"; """
        f'[ -f "$p/{TREE_MARKER}" ] && ' r"""printf 'A %s\0' "$p"; """
        f': > "$p/{TREE_MARKER}" || exit 1; done'
    )
    res = conn.run(posix_sh(script), timeout=60)
    check(res.ok, conn.host.name, "creating folders", res.stderr)
    foreign, group = [], []
    for record in res.stdout.split("\0"):
        kind, _, path = record.partition(" ")
        if not path:
            continue
        if kind == "C":
            group.append(path)
        elif kind == "E":  # the group's folders exist now: record them shallowest first
            for made in reversed(group):
                rec.own(made, "tree" if made in trees else "dir", keep)
            group = []
        elif kind == "A":  # made by an earlier fedctl run whose files were kept: ours again
            rec.own(path, "tree", keep)
        elif kind == "F":
            foreign.append(path)
    if foreign:
        raise RemoteError(
            f"{conn.host.name}: {', '.join(map(ascii, foreign))} already exists and was not made by fedctl;"
            " fedctl writes nothing into a folder it did not create (choose another workdir, or move that folder)"
        )


@dataclass(frozen=True)
class PushReport:
    """What ``push_files`` did on one host."""

    sent: tuple[str, ...]
    unchanged: tuple[str, ...]


def push_files(conn: Connector, files: Sequence[tuple[str, str, str]], remote_root: str) -> PushReport:
    """Copy ``(rel_path, local_path, sha256)`` files under ``remote_root``, skipping unchanged ones.

    The remote hashes come back in one ``sha256sum`` call; only files whose content differs (or is
    missing) are sent. Parent folders are created in one call too.
    """
    rels = [rel for rel, _, _ in files]
    dirs = sorted({posixpath.dirname(posixpath.join(remote_root, r)) for r in rels} | {remote_root})
    res = conn.run(
        f"mkdir -p {join(dirs)} && cd {quote(remote_root)} && "
        f"sha256sum -- {join(rels)} 2>/dev/null; true",
        timeout=120,
    )
    check(res.ok, conn.host.name, "hashing payload files", res.stderr)
    remote: dict[str, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            remote[parts[1].lstrip("*")] = parts[0]
    sent, same = [], []
    for rel, local, digest in files:
        if remote.get(rel) == digest:
            same.append(rel)
            continue
        conn.put(local, posixpath.join(remote_root, rel))
        sent.append(rel)
    return PushReport(tuple(sent), tuple(same))


def tail_file(conn: Connector, path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a remote file ('' when it does not exist)."""
    res = conn.run(f"tail -n {int(lines)} {quote(path)} 2>/dev/null || true", timeout=30)
    return res.stdout


def read_file(conn: Connector, path: str) -> str | None:
    """A small remote text file's content, or None when it does not exist."""
    res = conn.run(f"cat {quote(path)} 2>/dev/null", timeout=30)
    return res.stdout if res.ok else None
