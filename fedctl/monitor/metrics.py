"""Incremental reading of ``metrics.jsonl`` and log files: byte offsets, partial lines, aggregation.

Files are never re-read whole: a ``FileCursor`` remembers the byte offset and inode of one remote
file; the probe (``fedctl.monitor.probe``) sends only the bytes after the offset, and says when the
file shrank or was replaced (truncation / rotation) so the cursor restarts at 0. ``LineBuffer`` keeps
a trailing partial line until its newline arrives. ``MetricsAggregator`` is the payload contract's
metrics reader (``fedctl.contract``: rounds de-duplicated after a resume, bad lines skipped) with the
per-client facts the dashboard derives from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# LineBuffer is the contract's line framing; monitor.collect splits log files with it too
from fedctl.contract import LineBuffer, MetricsLog, RoundRecord, number

__all__ = ["ClientStats", "FileCursor", "LineBuffer", "MetricsAggregator", "client_stats"]


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


@dataclass
class ClientStats:
    """Running facts about one client id."""

    rounds_taken: int = 0
    last_response_s: float | None = None
    last_loss: float | None = None
    last_round: int | None = None
    dropped_rounds: int = 0


def client_stats(rounds: Iterable[RoundRecord]) -> dict[int, ClientStats]:
    """Per client id: rounds it reported in, its latest response time and loss, rounds it was
    dropped from. ``rounds`` in round order, each once (a ``MetricsLog``'s ``ordered``)."""
    out: dict[int, ClientStats] = {}
    for rec in rounds:
        for cid in rec.reported:
            st = out.setdefault(cid, ClientStats())
            st.rounds_taken += 1
            st.last_round = rec.round
            r = rec.response(cid)
            if r is not None:
                st.last_response_s = r
            loss = number(rec.clients.get(cid, {}).get("loss"))
            if loss is not None:
                st.last_loss = loss
        for cid in rec.dropped:
            out.setdefault(cid, ClientStats()).dropped_rounds += 1
        for cid in rec.sampled:
            out.setdefault(cid, ClientStats())
    return out


class MetricsAggregator(MetricsLog):
    """The payload contract's metrics.jsonl reader, fed incrementally, plus the per-client facts the
    dashboard shows (derived from the de-duplicated rounds, recomputed only when a line arrived)."""

    def reset(self) -> None:
        super().reset()
        self._clients: tuple[int, dict[int, ClientStats]] = (-1, {})

    @property
    def clients(self) -> dict[int, ClientStats]:
        if self._clients[0] != self.version:
            self._clients = (self.version, client_stats(self.ordered))
        return self._clients[1]
