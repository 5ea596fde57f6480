"""Where a run's numbers came from: the inventory as fedctl reached it, the versions, the git commit.

Versions are generic: Python, and every module the payload's manifest requires
(``requirements.imports``) with the version provision found on each host; fedctl knows no payload's
libraries by name.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from fedctl.runtypes import HostFacts
from fedctl.state import RunState


def inventory_dict(state: RunState) -> dict[str, Any]:
    """The resolved inventory of the run (hosts as fedctl reached them), before scrubbing."""
    hosts = []
    for h in state.hosts:
        d = asdict(h.info)
        d["roles"] = list(d["roles"])
        d["extra"] = dict(d["extra"])
        hosts.append({k: v for k, v in d.items() if v not in (None, {}, [])})
    return {"provider": state.provider, "hosts": hosts}


def git_commit(folder: Path | None) -> dict[str, Any] | None:
    """The git commit of ``folder`` (and whether it has uncommitted changes), None if not a repo."""
    if folder is None or not folder.is_dir():
        return None
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"path": str(folder), "commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def host_versions(facts: HostFacts | None) -> dict[str, str]:
    """``python`` and each module provision imported on the host (``facts.imports``), by version."""
    out: dict[str, str] = {}
    if facts is None:
        return out
    if isinstance(facts.python, str):
        out["python"] = facts.python
    for name, imp in (facts.imports or {}).items():
        if isinstance(imp, Mapping) and imp.get("ok", True) and imp.get("version") not in (None, "", "?"):
            out[str(name)] = str(imp["version"])
    return out


def versions(state: RunState, experiment_dir: Path | None) -> dict[str, Any]:
    """fedctl; Python and the payload's required modules per host (from provision facts); this
    machine; the experiment's commit."""
    from fedctl import __version__

    per_host = {h.name: row for h in state.hosts if (row := host_versions(h.facts))}
    names = sorted({k for row in per_host.values() for k in row if k != "python"})
    return {
        "fedctl": __version__,
        "python": sorted({r["python"] for r in per_host.values() if "python" in r}),
        "packages": {n: sorted({r[n] for r in per_host.values() if n in r}) for n in names},
        "hosts": per_host,
        "local": {"python": platform.python_version(), "platform": platform.platform()},
        "experiment_git": git_commit(experiment_dir),
        "payload": state.payload_name or None,
    }
