"""Copy a run's raw outputs from the hosts into ``results/<run-id>/``.

Layout: ``metrics.jsonl``, ``summary.json``, the manifest's result files (final model, ...) and
``guard.json``/``status.json`` from the server's run dir at the top; every process log under
``logs/<host>/``. The token and the config's secrets never travel: only named files are fetched.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fedctl.connectors.base import Connector
from fedctl.deploy import remote_run_dir
from fedctl.errors import StateError
from fedctl.model import HostStatus
from fedctl.model import name_problem
from fedctl.ops.common import Progress, open_fleet, quiet, server_record
from fedctl.shell import join, quote
from fedctl.state import HostRecord, RunState, StateStore

#: files of the server's run dir worth keeping besides the manifest's results
SERVER_EXTRAS = ("status.json", "guard.json", "server.ready")


@dataclass
class CollectReport:
    dest: Path
    fetched: dict[str, list[str]] = field(default_factory=dict)  # host -> local files
    failures: dict[str, str] = field(default_factory=dict)  # host -> reason

    @property
    def ok(self) -> bool:
        return not self.failures


def results_dir(store: StateStore, run_id: str) -> Path:
    """``results/<run-id>/`` next to the ``.fedctl`` folder. StateError for a run id that is not a
    plain name (an edited state): it would put the results elsewhere."""
    problem = name_problem(run_id)
    if problem:
        raise StateError(f"{store.root / 'state.json'}: run id {problem}")
    return store.root.parent / "results" / run_id


def _server_files(state: RunState, rec: HostRecord) -> list[str]:
    """Remote paths of the server's result files, from the payload manifest."""
    run_dir = remote_run_dir(rec, state.run_id)
    paths = [posixpath.join(run_dir, f) for f in SERVER_EXTRAS]
    try:
        from fedctl.payload import load_manifest

        manifest = load_manifest(state.payload_dir)
        values = {"run_dir": run_dir, "workdir": rec.workdir, "run_id": state.run_id}
        paths.append(manifest.render_path(manifest.server.metrics, **values))
        paths.extend(manifest.render_path(t, **values) for t in manifest.server.results)
    except Exception:  # noqa: BLE001 - the payload folder may be gone; fall back to the contract
        paths += [posixpath.join(run_dir, f) for f in ("metrics.jsonl", "summary.json")]
    return list(dict.fromkeys(paths))


def _fetch_host(conn: Connector, state: RunState, rec: HostRecord, dest: Path, is_server: bool) -> list[str]:
    """Fetch logs (and the server's outputs) of one host; missing files are skipped, not errors."""
    run_dir = remote_run_dir(rec, state.run_id)
    wanted = [p.log for p in rec.processes if p.log]
    listing = conn.run(f"ls -1 {quote(run_dir)}/*.log 2>/dev/null || true", timeout=30)
    wanted += [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    targets: list[tuple[str, Path]] = [(p, dest / "logs" / rec.name / posixpath.basename(p)) for p in dict.fromkeys(wanted)]
    if is_server:
        targets += [(p, dest / posixpath.basename(p)) for p in _server_files(state, rec)]
    exists = conn.run(
        "for f in " + join([t[0] for t in targets]) + '; do [ -f "$f" ] && echo "$f"; done; true', timeout=30
    )
    present = set(exists.stdout.splitlines())
    got = []
    for remote, local in targets:
        if remote in present:
            local.parent.mkdir(parents=True, exist_ok=True)
            conn.get(remote, str(local))
            got.append(str(local))
    return got


def collect_raw(
    store: StateStore,
    state: RunState,
    dest: Path | None = None,
    progress: Progress = quiet,
    fleet: Any = None,
    hosts: Sequence[str] | None = None,
) -> CollectReport:
    """Fetch the current run's outputs from every reachable host into ``dest``.

    ``fleet``: an open fleet to use (the caller's session); ``hosts``: only these hosts (the ones
    that fleet covers; a host outside them is not asked)."""
    dest = dest or results_dir(store, state.run_id)
    dest.mkdir(parents=True, exist_ok=True)
    report = CollectReport(dest)
    server = server_record(state)
    recs = [r for r in state.hosts if r.workdir and r.status != HostStatus.TORN_DOWN
            and (hosts is None or r.name in hosts)]
    if not recs:
        return report

    def one(c: Connector) -> list[str]:
        rec = state.host(c.host.name)
        problem = name_problem(rec.name)
        if problem:  # its logs go to logs/<host>/ here
            raise StateError(f"host name {problem}")
        return _fetch_host(c, state, rec, dest, server is not None and rec.name == server.name)

    progress(f"collecting results of run {state.run_id} into {dest}")
    if fleet is None:
        with open_fleet(store, recs) as own:
            results = own.map(one)
    else:
        results = fleet.map(one, hosts=[r.name for r in recs])
    for r in results:
        if r.ok:
            report.fetched[r.host] = r.value
        else:
            report.failures[r.host] = r.error or "unreachable"
    state.results_dir = str(dest)
    return report
