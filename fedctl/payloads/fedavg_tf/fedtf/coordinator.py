"""The server's shared round state (no TensorFlow, no HTTP here: fedtf.endpoints serves it).

One Coordinator holds the open round (task body, sampled ids, received updates) behind a
condition variable; HTTP handler threads long-poll on it and deliver updates into it, the
server's main loop opens and closes rounds.

An update is checked against the global model of its round (fedtf.robust) before it is accepted;
when the round closes, updates far larger than the round's median are rejected too. Rejected
clients appear in the round's `dropped` with a reason starting "rejected: " and in `rejected`.

SCAFFOLD: a 200 says the server took an update, not that it will aggregate it (the close can still
reject it), and a client whose 200 was lost cannot tell that it was taken. So every task and the
final "finished" answer carry ``counted``: ``{"through": R, "last": {"<id>": r}}``, the last round
whose fate is settled and, per client, the last round in which its update was aggregated (the
server's checkpoint keeps it). A client settles its c_i from that (fedtf/scaffold_state.py).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from .metrics import log
from .robust import UpdateLimits, delta_norm, norm_outliers
from .strategies import Update
from .transport import TransportError, decode, encode

POLL_WAIT_S = 20.0


@dataclass
class RoundState:
    seq: int = 0
    round_no: int = 0
    sampled: list[int] = field(default_factory=list)
    task_body: bytes = b""
    open: bool = False
    opened_at: float = 0.0
    updates: dict[int, Update] = field(default_factory=dict)
    client_metrics: dict[int, dict] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)    # subset of dropped: bad updates
    norms: dict[int, dict[str, float]] = field(default_factory=dict)  # accepted updates' group norms
    global_w: np.ndarray | None = None    # the model this round's updates are measured against
    bytes_in: int = 0
    bytes_out: int = 0

    def reject(self, client: int, reason: str) -> None:
        """Take a client's update out of the round (or record one that never got in)."""
        self.updates.pop(client, None)
        self.client_metrics.pop(client, None)
        self.norms.pop(client, None)
        self.rejected[client] = reason
        self.dropped[client] = f"rejected: {reason}"


class Coordinator:
    def __init__(self, token: bytes, shapes: list[tuple], shard_sizes: list[int],
                 extras: tuple[str, ...], events=None, limits: UpdateLimits | None = None) -> None:
        self.token = token
        self.limits = limits or UpdateLimits()
        self.shapes = shapes
        self.shard_sizes = shard_sizes
        self.extras = extras
        self.events = events            # MetricsWriter for warning events (or None)
        self.size = int(sum(int(np.prod(s, dtype=np.int64)) for s in shapes))
        self.max_body = self.size * 4 * (1 + len(extras)) + (1 << 16)
        self.cv = threading.Condition()
        self.state = RoundState()
        self.finished: str | None = None     # "finished" | "failed" once the run is over
        self.seen: dict[int, float] = {}      # client id -> last poll
        self.procs: dict[str, float] = {}     # client process -> last poll
        self.told: set[str] = set()           # processes told that the run is over
        self.instance = uuid.uuid4().hex[:12]  # a restarted (resumed) server counts seq anew
        #: which updates were aggregated (sent to SCAFFOLD clients); None: unknown (an old checkpoint)
        self.counted: dict | None = {"through": 0, "last": {}} if "dc" in extras else None
        self.on_progress = None  # called (no arguments) when a sampled client reported progress

    def settle(self, round_no: int, aggregated: list[int]) -> None:
        """Round `round_no` is over for good: `aggregated` are the clients whose updates are in the
        model (empty when the round failed). Later tasks tell the clients (``counted``)."""
        if self.counted is None:
            return
        with self.cv:
            last = dict(self.counted["last"])
            last.update({str(k): int(round_no) for k in aggregated})
            self.counted = {"through": int(round_no), "last": last}

    def progress(self, seq: int, ids: list[int]) -> bool:
        """A client process says it is still training `ids` in run `seq` of the round. It counts
        (``on_progress``) only while that run is open and one of `ids` is sampled and has not
        reported: a stale or stray report keeps nothing alive."""
        with self.cv:
            st = self.state
            ok = st.open and seq == st.seq and any(
                k in st.sampled and k not in st.updates and k not in st.dropped for k in ids)
        if ok and self.on_progress is not None:
            self.on_progress()
        return ok

    def _counted_meta(self) -> dict:
        return {} if self.counted is None else {"counted": self.counted}

    def _finished_reply(self, proc: str) -> bytes:
        """The run is over: note that ``proc`` was told (the caller holds ``self.cv``) and answer
        its poll with the final status (and SCAFFOLD's count, when the run keeps one)."""
        self.told.add(proc)
        self.cv.notify_all()
        return encode({"status": self.finished, **self._counted_meta()}, {})

    # -- main-loop side -----------------------------------------------------------------------
    def open_round(self, round_no: int, sampled: list[int], weights: np.ndarray,
                   broadcast: dict[str, np.ndarray], meta: dict) -> None:
        if weights.shape != (self.size,):  # updates are measured against it: a wrong size rejects all
            raise ValueError(f"global weights have shape {weights.shape}, the model has {self.size}")
        groups = {"w": _split(weights, self.shapes)}
        for k, v in broadcast.items():
            groups[k] = _split(v, self.shapes)
        with self.cv:
            seq = self.state.seq + 1
            body = encode({"status": "train", "seq": seq, "instance": self.instance, "round": round_no,
                           "sampled": sampled, **meta, **self._counted_meta()}, groups)
            self.state = RoundState(seq=seq, round_no=round_no, sampled=list(sampled), task_body=body,
                                    open=True, opened_at=time.time(), global_w=weights)
            self.cv.notify_all()

    def wait_round(self, deadline: float) -> None:
        """Block until every sampled client reported or dropped, or the deadline passes."""
        with self.cv:
            while True:
                st = self.state
                if all(k in st.updates or k in st.dropped for k in st.sampled):
                    return
                left = deadline - time.time()
                if left <= 0:
                    return
                self.cv.wait(left)

    def close_round(self) -> RoundState:
        """Close the open round: missing clients time out, outsized updates are rejected."""
        with self.cv:
            st = self.state
            st.open = False
            for k in st.sampled:
                if k not in st.updates and k not in st.dropped:
                    st.dropped[k] = "timeout"
            for g in ("w",) + self.extras:
                bad = norm_outliers({k: st.norms[k][g] for k in st.updates}, self.limits.max_norm_ratio)
                for k, why in sorted(bad.items()):
                    why = why if g == "w" else f"group {g}: {why}"
                    self.note_rejection(k, why, st.round_no)
                    st.reject(k, why)
            return st

    def note_rejection(self, client: int, reason: str, round_no: int | None) -> None:
        """Log a rejected update (naming the client) and record a warning event."""
        log("server", f"rejected update from client {client}: {reason}", "warning")
        if self.events is not None:
            self.events.event("warning", f"rejected update: {reason}", client, round_no)

    def finish(self, status: str) -> None:
        with self.cv:
            self.finished = status
            self.cv.notify_all()

    def wait_clients_told(self, timeout: float) -> None:
        """After the run: give polling client processes a moment to hear that it is over."""
        end = time.time() + timeout
        with self.cv:
            while time.time() < end:
                active = {p for p, t in self.procs.items() if time.time() - t < POLL_WAIT_S + 30}
                if active <= self.told:
                    return
                self.cv.wait(min(0.2, max(0.0, end - time.time())))

    def wait_for_clients(self, clients: int, timeout: float) -> int:
        """Before the first round: wait until every client id has polled once (or timeout)."""
        end = time.time() + timeout
        with self.cv:
            while len(self.seen) < clients and time.time() < end:
                self.cv.wait(min(1.0, max(0.0, end - time.time())))
            return len(self.seen)

    # -- handler side -------------------------------------------------------------------------
    def _check_in(self, ids: list[int], proc: str, now: float) -> None:
        """A client process polled for its virtual clients ``ids``: they and it are alive (the
        caller holds ``self.cv``); whoever waits on the count of clients seen is woken."""
        for k in ids:
            self.seen[k] = now
        self.procs[proc] = now
        self.cv.notify_all()

    def poll(self, after: int, ids: list[int], proc: str, instance: str = "") -> bytes:
        if instance != self.instance:
            after = -1  # the client's last task came from an earlier server process
        now = time.time()
        end = now + POLL_WAIT_S
        with self.cv:
            self._check_in(ids, proc, now)
            while True:
                if self.finished:
                    return self._finished_reply(proc)
                st = self.state
                if st.open and st.seq > after and any(
                        k in st.sampled and k not in st.updates and k not in st.dropped for k in ids):
                    st.bytes_out += len(st.task_body)
                    return st.task_body
                left = end - time.time()
                if left <= 0:
                    return encode({"status": "wait", "seq": st.seq, "instance": self.instance}, {})
                self.cv.wait(left)

    def deliver(self, seq: int, client: int, body: bytes) -> tuple[int, str]:
        """Validate and store one update. Returns (http status, reason)."""
        received = time.time()
        measured = self.state  # the update is checked against this round's global model
        try:
            # a message holds at most one model-sized tensor set per group: a shape larger than
            # that is refused before numpy sees it
            msg = decode(body, max_elements=self.size * (1 + len(self.extras)))
            upd, cm, norms = self._check(msg, client, measured.global_w)
        except TransportError as e:
            return self._reject(seq, client, str(e))
        with self.cv:
            st = self.state
            if seq != st.seq or not st.open or st is not measured:  # the round moved on meanwhile
                return 409, f"round {seq} is closed"
            if client not in st.sampled:
                return self._reject(seq, client, "client not sampled this round", locked=True)
            if client in st.updates or client in st.dropped:
                return 409, "client already reported or dropped this round"
            cm.update(upload_bytes=len(body), response_s=round(received - st.opened_at, 4))
            st.updates[client] = upd
            st.client_metrics[client] = cm
            st.norms[client] = norms
            st.bytes_in += len(body)
            self.cv.notify_all()
        if self.on_progress is not None:  # an update is progress too
            self.on_progress()
        return 200, "accepted"

    def drop(self, seq: int, client: int, reason: str) -> tuple[int, str]:
        with self.cv:
            st = self.state
            if seq != st.seq or not st.open or client not in st.sampled or client in st.updates:
                return 409, "not droppable"
            st.dropped.setdefault(client, reason)
            self.cv.notify_all()
        return 200, "dropped"

    def _reject(self, seq: int, client: int, reason: str, locked: bool = False) -> tuple[int, str]:
        """Drop a bad update with a logged reason; the model is untouched."""
        self.note_rejection(client, reason, self.state.round_no)
        if not locked:
            self.cv.acquire()
        try:
            st = self.state
            if (seq == st.seq and st.open and client in st.sampled and client not in st.updates
                    and client not in st.dropped):
                st.reject(client, reason)
                self.cv.notify_all()
        finally:
            if not locked:
                self.cv.release()
        return 400, reason

    def _check(self, msg, client: int,
                ref: np.ndarray | None) -> tuple[Update, dict, dict[str, float]]:
        """Validate one decoded update against the round's global model `ref`.

        Returns the update, its per-client metrics and the norm of each group ("w" as the change
        from `ref`); raises TransportError with a reason safe to send back.
        """
        meta = msg.meta
        if meta.get("client") != client:
            raise TransportError("client id in the message does not match the request")
        ex = meta.get("examples")
        if not isinstance(ex, int) or isinstance(ex, bool) or ex <= 0:
            raise TransportError(f"example count must be a positive integer, got {ex!r}")
        if not 0 <= client < len(self.shard_sizes):
            raise TransportError(f"unknown client id {client}")
        if ex > self.shard_sizes[client]:
            raise TransportError(f"example count {ex} exceeds the client's shard of {self.shard_sizes[client]}")
        groups = ("w",) + self.extras
        expected = len(self.shapes) * len(groups)
        if len(msg.tensors) != expected:
            raise TransportError(f"expected {expected} tensors, got {len(msg.tensors)}")
        flats = {}
        for g in groups:
            ts = msg.group(g)
            if len(ts) != len(self.shapes):
                raise TransportError(f"group {g}: expected {len(self.shapes)} tensors, got {len(ts)}")
            for i, (t, s) in enumerate(zip(ts, self.shapes)):
                if t.dtype != np.float32:
                    raise TransportError(f"{g}/{i}: dtype {t.dtype}, expected float32")
                if tuple(t.shape) != tuple(s):
                    raise TransportError(f"{g}/{i}: shape {tuple(t.shape)}, expected {tuple(s)}")
            flat = msg.flat(g)
            if not np.isfinite(flat).all():
                raise TransportError(f"group {g}: non-finite values")
            flats[g] = flat
        # Finite is not enough: 1e30 everywhere passes the check above and still wrecks the mean.
        norms = {g: delta_norm(flats[g], ref if g == "w" else None) for g in groups}
        for g, n in norms.items():
            if not n <= self.limits.max_norm:  # also catches an overflowing (inf) norm
                what = "update delta norm" if g == "w" else f"group {g}: norm"
                raise TransportError(f"{what} {n:.3g} exceeds robustness.max_update_norm "
                                     f"{self.limits.max_norm:.3g}")
        cm = {"examples": ex, "update_norm": float(f"{norms['w']:.4g}")}
        for k in ("train_s", "simulated_delay_s", "loss"):
            v = meta.get(k)
            cm[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        return Update(client, ex, flats["w"], {g: flats[g] for g in self.extras}), cm, norms


def _split(flat: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(flat[pos:pos + n].reshape(s))
        pos += n
    return out
