"""``teardown``: stop everything, collect results, remove what fedctl wrote, release, verify.

Idempotent: each host moves to ``torn_down`` only after its own verification passed; an
unreachable host keeps its status and stays in the state as still to be torn down, so a second call
(or a call after fedctl was killed anywhere) finishes the job.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Sequence

from fedctl.connectors.base import Connector
from fedctl.deploy import find_run_pids, remote_run_dir
from fedctl.ops.collect import CollectReport, collect_raw, results_dir
from fedctl.ops.common import Progress, open_fleet, quiet
from fedctl.ops.stop import run_ids, run_marks, stop_host
from fedctl.config.loader import safe_text
from fedctl.deploy import TREE_MARKER
from fedctl.model import LIVE_PROCS, HostStatus, Phase, ProcStatus
from fedctl.model import is_strictly_under
from fedctl.shell import posix_sh, quote
from fedctl.errors import UsageError
from fedctl.state import HostRecord, RunState, StateStore


@dataclass
class HostTeardown:
    name: str
    ok: bool
    stopped: int = 0
    removed: bool = False
    leftover_pids: list[int] = field(default_factory=list)
    leftover_files: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class TeardownReport:
    state: RunState
    hosts: list[HostTeardown] = field(default_factory=list)
    collect: CollectReport | None = None
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)


#: Removal on the host, in one shell command per host, so that every check is made on the spot, in
#: the same command as the ``rm`` it guards. ``$W`` is the workdir. Records out: "KIND PATH", each
#: ended by a NUL (a path may hold a newline): L left behind, S a symbolic link, F not a folder,
#: O outside the workdir (resolved through symbolic links), M no marker (not made by fedctl).
#:   _real P   -> P with every symbolic link resolved (cd -P; the "x" keeps trailing newlines)
#:   _ours P   -> succeeds when P is fedctl's tree: no link, strictly under the workdir, marked
#:   _gone P   -> reports P when it is still there
REMOVE_SH = r"""_real() { _o=$(cd -P -- "$1" 2>/dev/null && pwd -P && echo x) || return 1; printf %s "${_o%??}"; }
_w=$(_real "$W") || _w=
case $_w in /) _wp=/ ;; ?*) _wp=$_w/ ;; *) _wp= ;; esac
_ours() { if [ -L "$1" ]; then printf 'S %s\0' "$1"; return 1; fi
[ -e "$1" ] || return 1
[ -d "$1" ] || { printf 'F %s\0' "$1"; return 1; }
_r=$(_real "$1") || _r=
case $_r in "$_wp"?*) [ -n "$_wp" ] || { printf 'O %s\0' "$1"; return 1; } ;; *) printf 'O %s\0' "$1"; return 1 ;; esac
[ -f "$1/@MARKER@" ] || { printf 'M %s\0' "$1"; return 1; }; }
_gone() { [ -e "$1" ] && printf 'L %s\0' "$1"; true; }
""".replace("@MARKER@", TREE_MARKER)

_REFUSED = {
    "S": "is a symbolic link",
    "F": "is not a folder (fedctl removes only folders it made)",
    "O": "does not lie strictly under the workdir {w} (symbolic links resolved)",
    "M": f"holds no {TREE_MARKER} marker (fedctl did not make it)",
    "X": "does not lie strictly under the workdir {w}",
    "K": "is recorded with an unknown kind",
}
#: the start of every refusal, so that a reader (and a test) can find them
REFUSED = "refused to remove"


def _remove_files(conn: Connector, rec: HostRecord) -> list[str]:
    """Remove exactly what fedctl created on the host (``rec.owned``), newest first: its trees with
    their content, and the folders it made to hold them when they are empty then. Nothing fedctl
    found there is touched.

    A recorded tree is removed only when, normalised, it lies strictly under the workdir, and, on
    the host, in the same command as the ``rm``: it is no symbolic link, it still lies strictly under
    the workdir with every link resolved, and it holds ``TREE_MARKER``. A recorded path that fails a
    check (an edited or foreign state, a folder swapped since) is refused, never removed, reported,
    and dropped from ``rec.owned`` (it is not fedctl's: a second teardown does not refuse it again).
    Returns what is left: the refusals and any tree still there (normally nothing)."""
    removable = [o for o in rec.owned if not o.keep]
    if not removable:
        return []
    workdir = posixpath.normpath(rec.workdir or conn.expand(rec.info.workdir))
    refused: dict[str, str] = {}  # recorded path -> why
    by_norm: dict[str, list[str]] = {}
    steps = []
    for o in reversed(removable):
        path = posixpath.normpath(o.path)
        by_norm.setdefault(path, []).append(o.path)
        if o.kind == "tree":
            if is_strictly_under(path, workdir):
                q = quote(path)
                steps.append(f"_ours {q} && {{ rm -rf -- {q}; _gone {q}; }}")
            else:
                refused[o.path] = _REFUSED["X"]
        elif o.kind == "dir" and (path == workdir or is_strictly_under(path, workdir)
                                  or is_strictly_under(workdir, path)):
            # a holder: the workdir, a folder in it, or a parent fedctl made for it; someone may
            # have put their own files there since, so only an empty one goes
            steps.append(f"[ -L {quote(path)} ] || rmdir -- {quote(path)} 2>/dev/null")
        else:
            refused[o.path] = _REFUSED["X" if o.kind == "dir" else "K"]
    left: list[str] = []
    if steps:
        res = conn.run(posix_sh(f"W={quote(workdir)}\n" + REMOVE_SH + "; ".join(steps) + "; true"), timeout=120)
        if not res.ok:
            left.append(f"(removal failed: {res.stderr.strip()[:200]})")
        for record in res.stdout.split("\0") if res.ok else ():
            kind, _, path = record.partition(" ")
            if kind == "L":
                left.append(f"{safe_text(path, 200)} is still there")
            elif path:
                refused.update({p: _REFUSED.get(kind, "failed a check") for p in by_norm.get(path, [path])})
    rec.owned = [o for o in rec.owned if o.path not in refused]
    shown = safe_text(workdir, 200)
    return [f"{REFUSED} {safe_text(p, 200)}: it {why.format(w=shown)}" for p, why in refused.items()] + left


def teardown(
    store: StateStore,
    state: RunState,
    keep_files: bool = False,
    collect: bool = True,
    grace_s: float = 10.0,
    progress: Progress = quiet,
    build_report: bool = True,
) -> TeardownReport:
    """Tear the run down. The caller holds the state lock."""
    from fedctl.providers import for_run

    report = TeardownReport(state)
    secrets: list[str] = []
    if state.phase != Phase.TEARING_DOWN:
        state.event(f"teardown requested (was {state.phase})", store.clock)
    state.transition(Phase.TEARING_DOWN)
    store.save(state)  # intent first
    recs = [r for r in state.hosts if r.status != HostStatus.TORN_DOWN]
    outcome: dict[str, HostTeardown] = {r.name: HostTeardown(r.name, ok=False) for r in recs}
    provider = for_run(state, store, progress)
    machines = provider.creates_machines
    # A machine about to be destroyed needs no file removal: SSH is only for stopping processes and
    # collecting results, so only where something ran and the machine got an address.
    ssh_recs = recs if not machines else [
        r for r in recs if provider.reachable(r.info) and (r.processes or state.started_at is not None)]
    gone = _gone(provider, recs, progress) if machines and ssh_recs else None
    if gone is not None:
        # the machines ended under the run (a Slurm job's time limit ...): its processes with them;
        # their files are still on the shared filesystem, read from the login node instead
        state.event(f"teardown: {gone}", store.clock)
        for r in ssh_recs:
            for p in r.processes:
                if p.status in LIVE_PROCS:
                    p.status = ProcStatus.STOPPED
        if collect:
            report.collect, secrets = _collect_without_machines(store, state, provider, ssh_recs, progress)
        store.save(state)
        ssh_recs = []

    if ssh_recs:
        with open_fleet(store, ssh_recs) as fleet:
            progress(f"stopping processes on {len(ssh_recs)} host(s)")
            for r in fleet.map(lambda c: stop_host(c, state, state.host(c.host.name), grace_s)):
                if r.ok:
                    outcome[r.host].stopped = r.value[0]
                    for p in state.host(r.host).processes:
                        if p.status in LIVE_PROCS:
                            p.status = ProcStatus.STOPPED
                else:
                    outcome[r.host].error = r.error
            store.save(state)
            reachable = [r.name for r in ssh_recs if outcome[r.name].error is None]
            if collect and (state.started_at is not None or any(r.processes for r in state.hosts)):
                # only from hosts of this fleet: a host left out of it (a machine without an address)
                # has nothing to collect over SSH
                report.collect = collect_raw(store, state, progress=progress, fleet=fleet,
                                             hosts=[r.name for r in ssh_recs])
                store.save(state)
                secrets = _run_tokens(fleet, state, reachable)
            if not keep_files and not machines:
                progress("removing fedctl's files from the hosts")
                for r in fleet.map(lambda c: _remove_files(c, state.host(c.host.name)), hosts=reachable):
                    if r.ok:
                        outcome[r.host].leftover_files = r.value
                        outcome[r.host].removed = not r.value
                    else:
                        outcome[r.host].error = r.error
            progress("verifying that nothing of the run is left")
            for r in fleet.map(lambda c: find_run_pids(c, run_marks(state, state.host(c.host.name))), hosts=reachable):
                if r.ok:
                    outcome[r.host].leftover_pids = r.value
                else:
                    outcome[r.host].error = r.error

    now = store.clock()
    released = []
    if machines:
        _destroy_machines(provider, store, state, recs, outcome, keep_files, progress)
    for name, o in (outcome.items() if not machines else ()):
        rec = state.host(name)
        o.ok = o.error is None and not o.leftover_pids and not o.leftover_files
        if o.error is None and o.leftover_files:  # said in full: what was refused, and why
            o.error = "; ".join(o.leftover_files)
            if any(f.startswith(REFUSED) for f in o.leftover_files):
                o.error += ("; fedctl removes only folders it made (marked, strictly under the workdir) and"
                            " no longer tracks the refused ones: remove them yourself if they are yours")
                state.event(f"{name}: {o.error}", store.clock)
        if o.ok:
            rec.status = HostStatus.TORN_DOWN
            rec.released_at = rec.released_at or now
            rec.processes = []
            rec.error = None
            released.append(rec.info)
        else:
            rec.error = o.error or (
                f"left behind: pids {o.leftover_pids}" if o.leftover_pids else f"files {o.leftover_files}"
            )
    if released and not keep_files:
        provider.release(released)
    report.hosts = list(outcome.values())
    done = all(r.status == HostStatus.TORN_DOWN for r in state.hosts)
    if done:
        state.transition(Phase.TORN_DOWN)
    if report.collect is not None and build_report:
        # after release, so the cost ledger in the report is final
        report.report_error = _build_report(store, state, secrets)
    state.event("torn down" if done else "teardown incomplete", store.clock)
    store.save(state)
    if done:
        store.keep_copy(state)
    return report


def _destroy_machines(
    provider: Any, store: StateStore, state: RunState, recs: list[HostRecord], outcome: dict[str, HostTeardown],
    keep_files: bool, progress: Progress,
) -> None:
    """Destroy the run's machines (a provider that creates them): it terminates every machine of
    the run, found by id and by tag, and returns only when none of them bills any more; then each
    host is released, at the time the provider's API reports (journaled). An SSH failure before
    does not keep a machine alive: destroying it stops its processes and removes its files."""
    from fedctl.providers.base import ProviderError

    if keep_files:
        progress("--keep-files does not apply to machines fedctl created: they are destroyed with their files")
    try:
        provider.release([r.info for r in recs])
    except ProviderError as exc:
        for r in recs:
            outcome[r.name].ok = False
            outcome[r.name].error = r.error = exc.message
        return
    now = store.clock()
    for r in recs:
        o = outcome[r.name]
        if o.error:
            state.event(f"{r.name}: {o.error}; its machine was destroyed all the same", store.clock)
        o.ok, o.removed, o.error, o.leftover_pids, o.leftover_files = True, True, None, [], []
        r.status, r.processes, r.error = HostStatus.TORN_DOWN, [], None
        r.released_at = r.released_at or now


def _gone(provider: Any, recs: list[HostRecord], progress: Progress) -> str | None:
    """Why the run's machines ended under it (``Provider.ended``: a Slurm job's time limit,
    preemption, a node failure, a scancel), when they did and the provider can still read their
    files (``files_connector``: the shared filesystem); None otherwise (the usual teardown)."""
    from fedctl.errors import FedctlError

    if not callable(getattr(provider, "files_connector", None)):
        return None
    try:
        why = provider.ended([r.info for r in recs])
    except FedctlError as exc:  # cannot ask (the login node is down): the usual path says what fails
        progress(f"could not ask whether the run's machines ended: {exc}")
        return None
    if why:
        progress(f"{why}: its nodes cannot be reached; the results are collected from the login node")
    return why


def _collect_without_machines(store: StateStore, state: RunState, provider: Any, recs: list[HostRecord],
                              progress: Progress) -> tuple[CollectReport | None, list[str]]:
    """Collect the results of machines that are gone through the provider's ``files_connector``
    (each host's files on the shared filesystem, only under its own workdir), and the run tokens
    the report masks. (None, []) when the run never started."""
    from fedctl.fleet import Fleet
    from fedctl.ops.common import host_infos, known_hosts_path

    if state.started_at is None and not any(r.processes for r in state.hosts):
        return None, []
    with Fleet(host_infos(recs), known_hosts=known_hosts_path(store),
               connector_factory=provider.files_connector) as fleet:
        names = [r.name for r in recs]
        collected = collect_raw(store, state, progress=progress, fleet=fleet, hosts=names)
        return collected, _run_tokens(fleet, state, names)


def forget(store: StateStore, state: RunState, names: Sequence[str]) -> list[str]:
    """Drop hosts that can never be reached again from the run, without contacting them.

    Returns, per host, what may be left on it (folders fedctl created, processes it started), so
    the user can clean it by other means. The caller holds the state lock."""
    unknown = [n for n in names if n not in {r.name for r in state.hosts}]
    if unknown:
        raise UsageError(
            f"no host named {', '.join(unknown)} in run {state.run_id}",
            hint="hosts: " + ", ".join(r.name for r in state.hosts),
        )
    notes = []
    now = store.clock()
    for name in names:
        rec = state.host(name)
        if rec.status == HostStatus.TORN_DOWN:
            continue
        left = [o.path for o in rec.owned]
        procs = [f"{p.label} (pid {p.pid})" for p in rec.processes if p.pid and p.status in LIVE_PROCS]
        what = "; ".join(x for x in (", ".join(left), ", ".join(procs)) if x) or "nothing fedctl knows of"
        notes.append(f"{name} ({rec.info.address}): forgotten without a teardown; may still hold: {what}")
        state.event(f"host {name} forgotten", store.clock, left=left, processes=procs)
        rec.status = HostStatus.TORN_DOWN
        rec.error = "forgotten (never torn down)"
        rec.released_at = rec.released_at or now
    if all(r.status == HostStatus.TORN_DOWN for r in state.hosts):
        state.transition(Phase.TORN_DOWN)
    store.save(state)
    if state.phase == Phase.TORN_DOWN:
        store.keep_copy(state)
    return notes


def _run_tokens(fleet: Any, state: RunState, reachable: list[str]) -> list[str]:
    """The run tokens on the server host, read before its files go: the report masks them anywhere
    (a payload might have printed one into a log)."""
    from fedctl.deploy import read_file
    from fedctl.ops.common import server_record

    server = server_record(state)
    if server is None or server.name not in reachable or not server.workdir:
        return []
    conn = fleet.connector(server.name)
    tokens = [read_file(conn, posixpath.join(remote_run_dir(server, rid), "token")) for rid in run_ids(state)]
    return [t.strip() for t in tokens if t and t.strip()]


def _build_report(store: StateStore, state: RunState, secrets: list[str]) -> str | None:
    """Make plots and summary.md from the collected files (fedctl.results); None when it worked."""
    try:
        from fedctl import results
    except ImportError:
        return "results report not available in this version"
    try:
        results.build_report(results_dir(store, state.run_id), state, secrets=secrets)
    except Exception as exc:  # noqa: BLE001 - a plot failure must not stop a teardown
        return f"{type(exc).__name__}: {exc}"
    return None
