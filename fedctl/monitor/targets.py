"""Resolve a ``fedctl logs`` / ``watch --logs`` TARGET to the processes it names.

TARGET is ``server``, ``client`` (the role), ``client-07`` (the host process serving client id 7), a
host name, or ``all``. An unknown target is a UsageError that lists the valid ones.
"""

from __future__ import annotations

import re

from fedctl.errors import UsageError
from fedctl.state import HostRecord, ProcessRecord, RunState

_CLIENT = re.compile(r"^client-0*(\d+)$")


def resolve_targets(state: RunState, target: str | None) -> list[tuple[HostRecord, ProcessRecord]]:
    """The (host, process) pairs whose logs ``target`` selects (all of them for None / ``all``)."""
    live = [h for h in state.hosts if h.status not in ("torn_down", "tearing_down")]
    pairs = [(h, p) for h in live for p in h.processes]
    if target is None or target == "all":
        return pairs
    if target in ("server", "client"):
        return [(h, p) for h, p in pairs if p.role == target]
    m = _CLIENT.fullmatch(target)
    if m:
        cid = int(m.group(1))
        hits = [(h, p) for h, p in pairs if cid in p.client_ids]
        if hits:
            return hits
        known = sorted(c for _, p in pairs for c in p.client_ids)
        raise UsageError(
            f"no process serves client {cid} in run {state.run_id}",
            hint=f"client ids: {', '.join(map(str, known)) or 'none (no process started yet)'}",
        )
    hosts = [(h, p) for h, p in pairs if h.name == target]
    if hosts:
        return hosts
    if any(h.name == target for h in live):
        raise UsageError(f"host {target} runs no payload process in run {state.run_id}")
    valid = ["all", "server", "client", "client-<id>", *[h.name for h in live]]
    raise UsageError(f"unknown log target {target!r}", hint=f"valid: {', '.join(valid)}")
