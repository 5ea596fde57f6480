"""The asynchronous server's bookkeeping (fedbuff, fedasync): tickets, versions, arrivals.

The server keeps `concurrency` clients at work. Each piece of work is a ticket: (seq, client, model
version). A free slot is filled at once by a client drawn uniformly (seeded) from the idle ones;
the ticket's model is that version's weights. An update is measured against the weights of its
ticket's version (kept for the last max_staleness + 1 versions) and goes to the server loop with
its staleness s = version now - its version; one older than max_staleness is dropped and counted.

Same HTTP endpoints as the sync Coordinator: a poll returns the lowest-seq ticket after `after`
for one of the asking process's ids (a task for that one client, ``mode: async``); a ticket not
answered within round_timeout_s is dropped ("timeout") and its slot refilled.

After a restart (a new `instance`), an update from a ticket of the old server process is judged
by its version alone: only one trained on the restored version can be measured (older versions'
weights are gone), each such ticket is taken once, and it cannot already be in the model (the
checkpoint holds only updates applied to earlier versions). Anything else is dropped as stale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .coordinator import POLL_WAIT_S, Coordinator, _split
from .strategies import Update
from .transport import TransportError, decode, encode


#: a client whose process has not polled for this long is not given work
LIVE_S = POLL_WAIT_S + 40.0


@dataclass
class Ticket:
    seq: int
    client: int
    version: int
    issued: float


@dataclass
class Arrival:
    update: Update
    version: int
    staleness: int
    metrics: dict


class AsyncCoordinator(Coordinator):
    def __init__(self, *args, concurrency: int, max_staleness: int, ticket_timeout_s: float,
                 **kw) -> None:
        super().__init__(*args, **kw)
        self.concurrency, self.max_staleness = concurrency, max_staleness
        self.ticket_timeout_s = ticket_timeout_s
        self.version = 0
        self.history: dict[int, np.ndarray] = {}
        self.groups: dict[int, dict] = {}         # version -> the weights split for encoding
        self.tickets: dict[int, Ticket] = {}      # client -> its open ticket
        self.arrived: list[Arrival] = []          # accepted, not yet taken by the server loop
        self.restored: int | None = None          # the version a resumed server started from
        self.old_taken: set[tuple[str, int]] = set()
        self.counts = {"dropped_stale": 0, "timeouts": 0, "dropouts": 0, "rejected": 0}
        self.dropped: list[tuple[int, str]] = []  # since the last server update: (client, reason)
        self.meta: dict = {}

    # -- server-loop side ---------------------------------------------------------------------
    def publish(self, version: int, weights: np.ndarray, meta: dict) -> None:
        """The model is now `version`; tickets from now on carry it."""
        if weights.shape != (self.size,):
            raise ValueError(f"global weights have shape {weights.shape}, the model has {self.size}")
        with self.cv:
            self.version, self.meta = version, meta
            self.history[version] = weights
            self.groups[version] = {"w": _split(weights, self.shapes)}
            for v in [v for v in self.history if v < version - self.max_staleness]:
                del self.history[v], self.groups[v]
            self.state.round_no = version
            self.cv.notify_all()

    def dispatch(self, rng: np.random.Generator) -> list[Ticket]:
        """Fill the free slots with idle clients drawn uniformly by `rng`; the new tickets."""
        new = []
        with self.cv:
            self._expire()
            while len(self.tickets) < self.concurrency:
                idle = self._idle()
                if not idle:
                    break
                k = idle[int(rng.integers(len(idle)))]
                self.state.seq += 1
                t = Ticket(self.state.seq, k, self.version, time.time())
                self.tickets[k] = t
                new.append(t)
            if new:
                self.cv.notify_all()
        return new

    def take(self, deadline: float) -> list[Arrival]:
        """Wait until an update arrived, a slot freed, or `deadline`; the arrived updates."""
        with self.cv:
            self._expire()
            while not self.arrived and time.time() < deadline and (
                    len(self.tickets) >= self.concurrency or not self._idle()):
                self.cv.wait(min(1.0, max(0.0, deadline - time.time())))
                self._expire()
            got, self.arrived = self.arrived, []
            return got

    def _idle(self) -> list[int]:
        """Clients without a ticket whose process polled lately (a poll is answered within
        POLL_WAIT_S, and an async client polls while it trains): a dead process's ids are not drawn."""
        now = time.time()
        return [k for k in range(len(self.shard_sizes))
                if k not in self.tickets and now - self.seen.get(k, -LIVE_S) < LIVE_S]

    def in_flight(self) -> list[int]:
        with self.cv:
            return sorted(self.tickets)

    def _expire(self) -> None:
        now = time.time()
        for k, t in list(self.tickets.items()):
            if now - t.issued > self.ticket_timeout_s:
                del self.tickets[k]
                self.note_drop("timeouts", k, "timeout")
                self._event("warning", f"client {k}: no update within {self.ticket_timeout_s:g}s "
                                       f"(ticket {t.seq}, version {t.version}); slot refilled", k)

    def note_drop(self, count: str, client: int, reason: str) -> None:
        """Count a ticket or update that will not reach the model (the caller holds the lock);
        the next round line lists it under `dropped`."""
        self.counts[count] += 1
        self.dropped.append((client, reason))

    def take_dropped(self) -> list[tuple[int, str]]:
        """The drops since the last call."""
        with self.cv:
            got, self.dropped = self.dropped, []
            return got

    def _event(self, level: str, msg: str, client: int | None) -> None:
        if self.events is not None:
            self.events.event(level, msg, client, self.version)

    # -- handler side -------------------------------------------------------------------------
    def poll(self, after: int, ids: list[int], proc: str, instance: str = "") -> bytes:
        if instance != self.instance:
            after = -1
        now = time.time()
        end = now + POLL_WAIT_S
        with self.cv:
            self._check_in(ids, proc, now)
            while True:
                if self.finished:
                    return self._finished_reply(proc)  # no SCAFFOLD count: async refuses scaffold
                mine = sorted((t for k, t in self.tickets.items() if k in ids and t.seq > after),
                              key=lambda t: t.seq)
                for t in mine:
                    if t.version not in self.groups:  # older than max_staleness already
                        del self.tickets[t.client]
                        self.note_drop("dropped_stale", t.client, "stale: its model version is gone")
                        continue
                    body = encode({"status": "train", "mode": "async", "seq": t.seq,
                                   "instance": self.instance, "round": t.version, "version": t.version,
                                   "sampled": [t.client], "attempt": 0, **self.meta},
                                  self.groups[t.version])
                    self.state.bytes_out += len(body)
                    return body
                left = end - time.time()
                if left <= 0:
                    return encode({"status": "wait", "seq": after, "instance": self.instance}, {})
                self.cv.wait(left)

    def deliver(self, seq: int, client: int, body: bytes) -> tuple[int, str]:
        received = time.time()
        try:
            msg = decode(body, max_elements=self.size)
        except TransportError as e:
            return self._bad(client, str(e))
        inst, version = msg.meta.get("instance"), msg.meta.get("round")
        if not isinstance(version, int) or isinstance(version, bool):
            return self._bad(client, "the update names no model version")
        with self.cv:
            if inst == self.instance:
                t = self.tickets.get(client)
                if t is None or t.seq != seq or t.version != version:
                    return 409, "no open ticket for this update"
            elif (inst, seq) in self.old_taken:  # a retried upload: taken or dropped already
                return 409, "already taken"
            elif self.restored is not None and version == self.restored:
                t = Ticket(seq, client, version, received)  # from before the restart: judged by version
            else:
                self.old_taken.add((inst, seq))
                self.note_drop("dropped_stale", client, "stale: from before the server restarted")
                return 409, "stale: trained on a model version from before the server restarted"
            s = self.version - version
            if s > self.max_staleness or version not in self.history:
                self._close(t, inst)
                self.note_drop("dropped_stale", client, f"stale: {s} versions old")
                self.cv.notify_all()
                return 409, f"stale: {s} versions old (strategy.max_staleness {self.max_staleness})"
            base = self.history[version]
        try:
            upd, cm, _ = self._check(msg, client, base)
        except TransportError as e:
            with self.cv:
                self._close(t, inst)
                self.note_drop("rejected", client, f"rejected: {e}")
                self.cv.notify_all()
            return self._bad(client, str(e))
        with self.cv:
            if inst == self.instance and self.tickets.get(client) is not t:
                return 409, "ticket closed meanwhile"
            if inst != self.instance and (inst, seq) in self.old_taken:
                return 409, "already taken"
            self._close(t, inst)
            upd.base, upd.staleness = base, self.version - version
            cm.update(upload_bytes=len(body), response_s=round(received - t.issued, 4),
                      version=version, staleness=upd.staleness)
            self.arrived.append(Arrival(upd, version, upd.staleness, cm))
            self.state.bytes_in += len(body)
            self.cv.notify_all()
        if self.on_progress is not None:
            self.on_progress()
        return 200, "accepted"

    def _close(self, t: Ticket, inst) -> None:
        if inst == self.instance:
            self.tickets.pop(t.client, None)
        else:
            self.old_taken.add((inst, t.seq))

    def _bad(self, client: int, reason: str) -> tuple[int, str]:
        self.note_rejection(client, reason, self.version)
        return 400, reason

    def drop(self, seq: int, client: int, reason: str) -> tuple[int, str]:
        with self.cv:
            t = self.tickets.get(client)
            if t is None or t.seq != seq:
                return 409, "not droppable"
            del self.tickets[client]
            self.note_drop("dropouts", client, reason)
            self.cv.notify_all()
        return 200, "dropped"

    def progress(self, seq: int, ids: list[int]) -> bool:
        with self.cv:
            ok = any(k in self.tickets for k in ids)
        if ok and self.on_progress is not None:
            self.on_progress()
        return ok
