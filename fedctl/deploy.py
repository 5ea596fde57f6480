"""Remote primitives every lifecycle step is built from: paths, detached processes, payload push.

Each function takes one Connector and does one job on that host with as few round trips as it can.
Commands are assembled from ``shlex.quote``d parts (``fedctl.shell``); nothing secret is ever part
of a command (the run token travels with ``put_bytes(mode=0o600)``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from fedctl.connectors.base import Connector
from fedctl.errors import RemoteError
from fedctl.shell import join, quote
from fedctl.state import HostRecord

#: the marker file that says "fedctl created this tree" (teardown removes only what fedctl wrote)
OWNED_MARKER = ".fedctl-owned"
#: sub-folders of the workdir that belong to fedctl entirely
OWNED_DIRS = ("payloads", "runs")


def remote_run_dir(host: HostRecord, run_id: str) -> str:
    """``<workdir>/runs/<run-id>`` on that host (workdir must be resolved already)."""
    if not host.workdir:
        raise RemoteError(f"{host.name}: workdir not resolved yet (was the host provisioned?)")
    return posixpath.join(host.workdir, "runs", run_id)


def remote_payload_dir(host: HostRecord, payload_name: str) -> str:
    """``<workdir>/payloads/<name>`` on that host."""
    if not host.workdir:
        raise RemoteError(f"{host.name}: workdir not resolved yet (was the host provisioned?)")
    return posixpath.join(host.workdir, "payloads", payload_name)


def run_pattern(run_id: str, workdir: str | None = None) -> str:
    """A ``pgrep -f`` regex that matches the run's processes: their argv holds
    ``<workdir>/runs/<run-id>`` (only ``runs/<run-id>`` when no workdir is given).

    With the workdir, hosts that share one machine (the local provider, a loopback fleet) each find
    only their own processes. The run id's first character sits in a bracket so the shell that runs
    pgrep (whose argv contains the pattern text) does not match itself.
    """
    prefix = re.escape(posixpath.join(workdir, "runs") + "/") if workdir else "runs/"
    return f"{prefix}[{run_id[0]}]{re.escape(run_id[1:])}"


def check(result_ok: bool, host: str, what: str, detail: str) -> None:
    """Raise RemoteError naming the host and step when a remote step failed."""
    if not result_ok:
        raise RemoteError(f"{host}: {what} failed: {detail.strip()[-500:] or 'no output'}")


def spawn_detached(
    conn: Connector,
    command: str,
    cwd: str,
    pidfile: str,
    log: str,
) -> int:
    """Start ``command`` detached from the SSH session and return its pid.

    ``setsid`` makes it a process-group leader (so stop can signal the whole group) and frees it
    from the session; ``nohup`` + redirected stdio keep it alive after the connection closes. The
    pid goes to ``pidfile`` (written via a temp name) BEFORE we return, so a fedctl killed right
    after this call still leaves a trace that teardown finds.
    """
    inner = f"exec {command}"
    script = (
        f"cd {quote(cwd)} && "
        f"(setsid nohup /bin/sh -c {quote(inner)} > {quote(log)} 2>&1 < /dev/null & "
        f"echo $! > {quote(pidfile + '.tmp')} && mv {quote(pidfile + '.tmp')} {quote(pidfile)}) && "
        f"cat {quote(pidfile)}"
    )
    res = conn.run(script, timeout=60)
    check(res.ok, conn.host.name, "starting a process", res.stderr or res.stdout)
    try:
        return int(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RemoteError(f"{conn.host.name}: no pid came back from the start command") from None


def pids_alive(conn: Connector, pids: Iterable[int]) -> dict[int, bool]:
    """Which of ``pids`` are alive (not zombies) on the host, in one round trip."""
    pids = sorted({int(p) for p in pids if p})
    if not pids:
        return {}
    # kill -0 says the pid exists; /proc/<pid>/stat's 3rd field tells a zombie (Z) from a live one.
    script = (
        f"for p in {join(pids)}; do "
        "if kill -0 $p 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' /proc/$p/stat 2>/dev/null; "
        'then echo "$p 1"; else echo "$p 0"; fi; done'
    )
    res = conn.run(script, timeout=30)
    check(res.ok, conn.host.name, "checking processes", res.stderr)
    alive = {}
    for line in res.stdout.splitlines():
        pid, flag = line.split()
        alive[int(pid)] = flag == "1"
    return alive


def find_run_pids(conn: Connector, run_ids: Sequence[str], workdir: str | None = None) -> list[int]:
    """Pids on the host whose command line names one of the runs (including untracked ones)."""
    pids: set[int] = set()
    for run_id in run_ids:
        res = conn.run(f"pgrep -f -- {quote(run_pattern(run_id, workdir))} || true", timeout=30)
        check(res.ok, conn.host.name, "listing the run's processes", res.stderr)
        pids.update(int(p) for p in res.stdout.split() if p.isdigit())
    return sorted(pids)


def read_pidfiles(conn: Connector, run_dir: str) -> list[int]:
    """Pids recorded in ``*.pid`` files of a run dir (written by ``spawn_detached``)."""
    res = conn.run(f"cat {quote(run_dir)}/*.pid 2>/dev/null || true", timeout=30)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def stop_pids(conn: Connector, pids: Iterable[int], grace_s: float = 10.0) -> list[int]:
    """TERM each pid's process group (and the pid), wait up to ``grace_s``, then KILL what is left.

    Returns the pids still alive afterwards (normally none). One round trip: the waiting happens on
    the host, so a slow link does not multiply the grace period.
    """
    pids = sorted({int(p) for p in pids if p and int(p) > 1})
    if not pids:
        return []
    plist = join(pids)
    steps = max(1, int(grace_s * 5))
    script = (
        f"for p in {plist}; do kill -TERM -$p 2>/dev/null; kill -TERM $p 2>/dev/null; done; "
        f"i=0; while [ $i -lt {steps} ]; do left=''; "
        f"for p in {plist}; do kill -0 $p 2>/dev/null && "
        "! grep -q '^[0-9]* ([^)]*) Z' /proc/$p/stat 2>/dev/null && left=\"$left $p\"; done; "
        '[ -z "$left" ] && break; sleep 0.2; i=$((i+1)); done; '
        f"for p in {plist}; do kill -KILL -$p 2>/dev/null; kill -KILL $p 2>/dev/null; done; "
        "sleep 0.2; "
        f"for p in {plist}; do kill -0 $p 2>/dev/null && "
        "! grep -q '^[0-9]* ([^)]*) Z' /proc/$p/stat 2>/dev/null && echo $p; done; true"
    )
    res = conn.run(script, timeout=grace_s + 60)
    check(res.ok, conn.host.name, "stopping processes", res.stderr)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


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
