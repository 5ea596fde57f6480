"""Incremental reading of ``metrics.jsonl`` and log files: byte offsets, partial lines, aggregation.

Files are never re-read whole: a ``FileCursor`` remembers the byte offset and inode of one remote
file; the probe (``fedctl.monitor.probe``) sends only the bytes after the offset, and says when the
file shrank or was replaced (truncation / rotation) so the cursor restarts at 0. ``LineBuffer`` keeps
a trailing partial line until its newline arrives. ``MetricsAggregator`` folds the metrics lines
(see docs/contracts.md) into per-round and per-client facts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FileCursor:
    """Where we are in one remote file. ``offset=-1`` means "start near the end" (logs)."""

    path: str
    offset: int = 0
    inode: str = ""
    size: int | None = None
    missing: bool = True
    resets: int = 0  # how many times the file was truncated or replaced under us

    def advance(self, size: int, inode: str, start: int, nbytes: int) -> bool:
        """Record what the probe sent (``nbytes`` from ``start``); True when the file was reset."""
        reset = bool(self.inode) and (inode != self.inode or start < self.offset and self.offset > 0)
        if reset:
            self.resets += 1
        self.inode = inode
        self.size = size
        self.missing = False
        self.offset = start + nbytes
        return reset


class LineBuffer:
    """Split a byte stream (already decoded) into complete lines; hold the trailing partial one."""

    def __init__(self, max_partial: int = 1 << 20) -> None:
        self._partial = ""
        self._max = max_partial

    def feed(self, chunk: str) -> list[str]:
        """Add ``chunk``; return the lines it completed (without newlines)."""
        if not chunk:
            return []
        data = self._partial + chunk
        lines = data.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max:  # a runaway line without newline: flush it
            lines.append(self._partial)
            self._partial = ""
        return [ln.rstrip("\r") for ln in lines]

    def reset(self) -> None:
        """Forget the partial line (the file was truncated or replaced)."""
        self._partial = ""


def _f(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class RoundRecord:
    """One ``{"type": "round"}`` line, normalised."""

    round: int
    rounds: int
    start: float | None
    end: float | None
    sampled: list[int]
    reported: list[int]
    dropped: dict[int, str]
    clients: dict[int, dict[str, Any]]
    loss: float | None
    accuracy: float | None
    strategy: str | None

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    def response(self, cid: int) -> float | None:
        """The client's response time in this round, if it reported one."""
        return _f(self.clients.get(cid, {}).get("response_s"))

    def straggler(self) -> tuple[int | None, float | None]:
        """The reporting client that answered last (largest response time); (None, None) when no
        client stands out (fewer than two responses, or all equal)."""
        best: tuple[int | None, float | None] = (None, None)
        values = []
        for cid in self.reported:
            r = self.response(cid)
            if r is None or not math.isfinite(r):
                continue
            values.append(r)
            if best[1] is None or r > best[1]:
                best = (cid, r)
        if len(values) < 2 or max(values) == min(values):
            return (None, None)
        return best


@dataclass
class ClientStats:
    """Running facts about one client id."""

    rounds_taken: int = 0
    last_response_s: float | None = None
    last_loss: float | None = None
    last_round: int | None = None
    dropped_rounds: int = 0


@dataclass
class MetricsAggregator:
    """Folds metrics.jsonl lines into rounds, client stats, events and the final summary."""

    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    clients: dict[int, ClientStats] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    bad_lines: int = 0
    strategy: str | None = None
    total_rounds: int | None = None
    _buf: LineBuffer = field(default_factory=LineBuffer)

    def feed(self, chunk: str) -> int:
        """Feed new bytes of metrics.jsonl; returns how many complete lines were consumed."""
        lines = self._buf.feed(chunk)
        for line in lines:
            self.add_line(line)
        return len(lines)

    def reset(self) -> None:
        """The file was truncated or replaced: start over (a resumed run rewrites history)."""
        self.__init__()  # type: ignore[misc]

    def add_line(self, line: str) -> None:
        """Consume one JSON line (blank lines ignored; malformed ones counted, not fatal)."""
        line = line.strip()
        if not line:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            self.bad_lines += 1
            return
        if not isinstance(obj, dict):
            self.bad_lines += 1
            return
        kind = obj.get("type")
        if kind == "round":
            self._add_round(obj)
        elif kind == "event":
            self.events.append(obj)
            del self.events[:-200]
        elif kind == "summary":
            self.summary = obj
        else:
            self.bad_lines += 1

    def _add_round(self, obj: dict[str, Any]) -> None:
        try:
            rnd = int(obj["round"])
        except (KeyError, TypeError, ValueError):
            self.bad_lines += 1
            return
        clients: dict[int, dict[str, Any]] = {}
        for k, v in (obj.get("clients") or {}).items():
            try:
                clients[int(k)] = v if isinstance(v, dict) else {}
            except (TypeError, ValueError):
                continue
        dropped: dict[int, str] = {}
        for d in obj.get("dropped") or []:
            if isinstance(d, dict) and "id" in d:
                dropped[int(d["id"])] = str(d.get("reason") or "dropped")
            elif isinstance(d, int):
                dropped[d] = "dropped"
        rec = RoundRecord(
            round=rnd,
            rounds=int(obj.get("rounds") or 0),
            start=_f(obj.get("start")),
            end=_f(obj.get("end")),
            sampled=[int(c) for c in obj.get("sampled") or []],
            reported=[int(c) for c in obj.get("reported") or []],
            dropped=dropped,
            clients=clients,
            loss=_f(obj.get("loss")),
            accuracy=_f(obj.get("accuracy")),
            strategy=obj.get("strategy"),
        )
        self.rounds[rnd] = rec
        if rec.rounds:
            self.total_rounds = rec.rounds
        if rec.strategy:
            self.strategy = rec.strategy
        for cid in rec.reported:
            st = self.clients.setdefault(cid, ClientStats())
            st.rounds_taken += 1
            st.last_round = rnd
            r = rec.response(cid)
            if r is not None:
                st.last_response_s = r
            loss = _f(clients.get(cid, {}).get("loss"))
            if loss is not None:
                st.last_loss = loss
        for cid in dropped:
            self.clients.setdefault(cid, ClientStats()).dropped_rounds += 1
        for cid in rec.sampled:
            self.clients.setdefault(cid, ClientStats())

    @property
    def last_round(self) -> RoundRecord | None:
        return self.rounds[max(self.rounds)] if self.rounds else None

    def recent(self, n: int) -> list[RoundRecord]:
        """The last ``n`` completed rounds, oldest first."""
        return [self.rounds[k] for k in sorted(self.rounds)[-n:]] if n > 0 else []

    def nan_rounds(self) -> list[int]:
        """Rounds whose global loss (or a client's loss) is NaN or infinite."""
        out = []
        for k, r in self.rounds.items():
            losses = [r.loss] + [_f(c.get("loss")) for c in r.clients.values()]
            if any(x is not None and not math.isfinite(x) for x in losses):
                out.append(k)
        return sorted(out)


def parse_status(text: str) -> dict[str, Any] | None:
    """Parse ``status.json`` (None when empty or unreadable: it is optional and may be mid-write)."""
    text = text.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
