"""Where a payload's files are: on a host, from the manifest's templates (``server.metrics``,
``server.ready_file``); in a local results folder, under the name ``collect_raw`` kept.

A payload whose manifest names no path (or whose folder is gone by now) gets the contract's defaults
in the run dir: ``metrics.jsonl``, ``status.json``, ``server.ready``. ``status.json`` has no manifest
key: it is always ``<run_dir>/status.json``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedctl.contract.metrics import METRICS_FILE
from fedctl.contract.status import READY_FILE, STATUS_FILE
from fedctl.errors import FedctlError

if TYPE_CHECKING:
    from fedctl.payload import PayloadManifest


@dataclass(frozen=True)
class RunFiles:
    """The payload's files in one host's run dir (absolute remote paths)."""

    run_dir: str
    metrics: str
    status: str
    ready: str


def manifest_of(state: Any) -> "PayloadManifest | None":
    """The manifest of the run's payload, None when the state names none or it cannot be read."""
    if not getattr(state, "payload_dir", ""):
        return None
    from fedctl.payload import load_manifest

    try:
        return load_manifest(state.payload_dir)
    except (FedctlError, OSError):
        return None


def run_files(run_dir: str, manifest: "PayloadManifest | None" = None, workdir: str | None = None,
              run_id: str | None = None) -> RunFiles:
    """The files of the run dir ``run_dir``: the manifest's paths, else the contract's defaults.

    A path template is filled with ``run_dir``, ``workdir`` and ``run_id`` only: a file's place must
    not depend on how a process was started.
    """
    run_dir = run_dir.rstrip("/") or "/"
    values = {"run_dir": run_dir, "workdir": workdir, "run_id": run_id}

    def path(template: str | None, default: str) -> str:
        if manifest is not None and template:
            try:
                return manifest.render_path(template, **values)
            except FedctlError:
                pass  # a template with other placeholders: the default place
        return posixpath.join(run_dir, default)

    server = manifest.server if manifest is not None else None
    return RunFiles(
        run_dir=run_dir,
        metrics=path(server.metrics if server else None, METRICS_FILE),
        status=posixpath.join(run_dir, STATUS_FILE),
        ready=path(server.ready_file if server else None, READY_FILE),
    )


def host_files(state: Any, host: Any, manifest: "PayloadManifest | None" = None) -> RunFiles:
    """The files of the current run on ``host`` (a HostRecord); ``manifest`` None: the state's."""
    from fedctl.deploy import remote_run_dir

    if manifest is None:
        manifest = manifest_of(state)
    return run_files(remote_run_dir(host, state.run_id), manifest, host.workdir, state.run_id)


def metrics_name(state: Any = None) -> str:
    """The file name metrics.jsonl has in a results folder (``collect_raw`` keeps the remote name)."""
    manifest = manifest_of(state) if state is not None else None
    if manifest is None:
        return METRICS_FILE
    name = posixpath.basename(run_files("/run", manifest, "/", getattr(state, "run_id", "") or "run").metrics)
    return name or METRICS_FILE


def collected_metrics(results_dir: str | Path, state: Any = None) -> Path:
    """metrics.jsonl in a local results folder (it may not exist)."""
    return Path(results_dir) / metrics_name(state)
