"""Resolve a ``fedctl logs`` / ``watch --logs`` TARGET to the processes it names.

TARGET is ``server``, ``client`` (the role), ``client-07`` (the process holding client id 7), a
client process's name (``clients-4-7``: the one holding clients 4 to 7), a host name, or ``all``.
An unknown target is a UsageError that lists the valid ones.

One numbering: a client process is named after the client ids it holds (``process_name``), the
same ids ``--set clients=N`` numbers, the dashboard shows and ``logs client-<id>`` takes.
"""

from __future__ import annotations

import re
from typing import Sequence

from fedctl.errors import UsageError
from fedctl.model import HostStatus
from fedctl.monitor.snapshot import LogLine
from fedctl.state import HostRecord, ProcessRecord, RunState

_CLIENT = re.compile(r"^client-0*(\d+)$")
_CLIENTS = re.compile(r"^clients-(\d+(?:[-_]\d+)+)$")


def process_name(client_ids: Sequence[int]) -> str:
    """A client process's name from the client ids it holds: ``client-7`` (one), ``clients-4-7``
    (a range, as the plan gives), ``clients-1_4_9`` (any other set). Unique in a run, since each
    client id is held by one process."""
    ids = sorted(client_ids)
    if len(ids) == 1:
        return f"client-{ids[0]}"
    if ids and ids == list(range(ids[0], ids[-1] + 1)):
        return f"clients-{ids[0]}-{ids[-1]}"
    return "clients-" + "_".join(map(str, ids))


def display_name(proc: ProcessRecord) -> str:
    """What ``fedctl logs`` calls a process: ``server`` or its ``process_name``."""
    return proc.label if proc.role == "server" or not proc.client_ids else process_name(proc.client_ids)


def resolve_targets(state: RunState, target: str | None) -> list[tuple[HostRecord, ProcessRecord]]:
    """The (host, process) pairs whose logs ``target`` selects (all of them for None / ``all``)."""
    live = [h for h in state.hosts if h.status not in (HostStatus.TORN_DOWN, HostStatus.TEARING_DOWN)]
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
    named = [(h, p) for h, p in pairs if p.role == "client" and _CLIENTS.fullmatch(target)
             and _same_name(process_name(p.client_ids), target)]
    if named:
        return named
    hosts = [(h, p) for h, p in pairs if h.name == target]
    if hosts:
        return hosts
    if any(h.name == target for h in live):
        raise UsageError(f"host {target} runs no payload process in run {state.run_id}")
    valid = ["all", "server", "client", "client-<id>", "clients-<first>-<last>", *[h.name for h in live]]
    raise UsageError(f"unknown log target {target!r}", hint=f"valid: {', '.join(valid)}")


def _same_name(name: str, target: str) -> bool:
    """``clients-04-07`` names ``clients-4-7``: leading zeros of the ids do not matter."""
    def norm(text: str) -> str:
        return re.sub(r"(?<=[-_])0+(?=\d)", "", text)
    return norm(name) == norm(target)


def client_hosts(state: RunState) -> dict[int, tuple[str, str]]:
    """client id -> (host name, process label) from the processes recorded in the state."""
    out: dict[int, tuple[str, str]] = {}
    for h in state.hosts:
        for p in h.processes:
            for cid in p.client_ids:
                out[int(cid)] = (h.name, p.label)
    return out


def log_filter_matches(line: LogLine, target: str | None, clients: dict[int, tuple[str, str]]) -> bool:
    """Does ``line`` belong to ``target`` (host name, role, process label, or ``client-07`` = client id 7)?"""
    if not target or target == "all":
        return True
    if target in (line.host, line.role, line.label, line.name):
        return True
    m = _CLIENT.fullmatch(target)
    if m and int(m.group(1)) in clients:
        return clients[int(m.group(1))] == (line.host, line.label)
    return line.role == "server+client" and target in ("server", "client")
