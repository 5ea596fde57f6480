"""metrics.jsonl, and its one reader (format: docs/contracts.md).

The payload's server appends one JSON object a line: ``round`` lines, ``event`` lines and a final
``summary`` line. The file is read while it is being written and it outlives crashes and resumes, so
reading it follows these rules, wherever it is read (``cost``, ``results``, ``watch``, ``status``, the
budget watchdog):

- a torn last line waits for the rest of it; a line that is not a JSON object is skipped and counted;
- a round repeated after ``start --resume`` counts once: the LAST line for a round number wins;
- a summary line followed by a round line belongs to an attempt that was resumed: it no longer counts;
- no NaN or infinity comes out: a non-finite number reads as absent (None), and a round lists the
  keys that held one in ``nonfinite`` so that a NaN loss can still be reported as such.

Stdlib only and Python >= 3.6 (no dataclasses, no ``from __future__``): the budget watchdog runs on
the hosts, where fedctl is not installed, and ``budget.watchdog_script`` puts this file's source into
the script it pushes. fedctl itself reads it through ``fedctl.contract``.
"""

import json
import math
import re
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

METRICS_FILE = "metrics.jsonl"
#: the round-line keys with a meaning of their own; every other number on the line is a metric
ROUND_KEYS = ("type", "round", "rounds", "start", "end", "sampled", "reported", "dropped", "clients", "strategy",
              "updates", "eval_round")
SUMMARY_KEYS = ("type", "status", "reason", "rounds_completed", "wall_s")
#: a line longer than this without a newline is not waited for any more (a runaway writer)
MAX_PARTIAL = 1 << 20


# -- values -----------------------------------------------------------------------------------------------
def number(value: Any) -> Optional[float]:
    """A finite int or float as a float; anything else (None, bool, text, NaN, infinity) is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def integer(value: Any) -> Optional[int]:
    """An int, an integral float or a decimal string (JSON object keys) as an int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):  # ASCII digits: "²".isdigit()
        return int(value)
    return None


def _nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def ids(values: Any) -> Tuple[int, ...]:
    """The client ids of a JSON list (entries that are no id are left out)."""
    if not isinstance(values, (list, tuple)):
        return ()
    return tuple(i for i in (integer(v) for v in values) if i is not None)


def text_or_none(value: Any) -> Optional[str]:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _clean(obj: Any) -> Any:
    """A JSON value with every non-finite number replaced by None."""
    if _nonfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


# -- metrics.jsonl records ----------------------------------------------------------------------------------
class RoundRecord(NamedTuple):
    """One ``{"type": "round"}`` line, typed. ``values``: every other finite number the line carries
    (``loss``, ``accuracy``, ``bytes_in`` ... whatever the payload reports), by key."""

    round: int
    rounds: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None
    sampled: Tuple[int, ...] = ()
    reported: Tuple[int, ...] = ()
    dropped: Dict[int, str] = {}
    clients: Dict[int, Dict[str, Any]] = {}  # client id -> what it reported (non-finite numbers: None)
    strategy: Optional[str] = None
    values: Dict[str, float] = {}
    nonfinite: Tuple[str, ...] = ()  # keys that held NaN/inf: "loss", "clients.3.loss"
    updates: Tuple[Dict[str, Any], ...] = ()  # an asynchronous server update: one entry per client update
    #: the round (model version) whose model ``loss``/``accuracy`` were measured on; None: not evaluated,
    #: or a payload that does not say (its accuracy then belongs to this round's model)
    eval_round: Optional[int] = None

    @property
    def loss(self) -> Optional[float]:
        return self.values.get("loss")

    @property
    def accuracy(self) -> Optional[float]:
        return self.values.get("accuracy")

    @property
    def duration_s(self) -> Optional[float]:
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    def response(self, cid: int) -> Optional[float]:
        """The client's response time in this round, if it reported one."""
        return number(self.clients.get(cid, {}).get("response_s"))

    def straggler(self) -> Tuple[Optional[int], Optional[float]]:
        """The reporting client that answered last (largest response time); (None, None) when no
        client stands out (fewer than two responses, or all equal)."""
        best: Tuple[Optional[int], Optional[float]] = (None, None)
        values = []
        for cid in self.reported:
            r = self.response(cid)
            if r is None:
                continue
            values.append(r)
            if best[1] is None or r > best[1]:
                best = (cid, r)
        if len(values) < 2 or max(values) == min(values):
            return (None, None)
        return best

    def to_dict(self) -> Dict[str, Any]:
        """The line as strict JSON would hold it (round-trips through ``parse_round``)."""
        out: Dict[str, Any] = {
            "type": "round", "round": self.round, "rounds": self.rounds, "start": self.start, "end": self.end,
            "sampled": list(self.sampled), "reported": list(self.reported),
            "dropped": [{"id": k, "reason": v} for k, v in sorted(self.dropped.items())],
            "clients": {str(k): dict(v) for k, v in sorted(self.clients.items())}, "strategy": self.strategy,
        }
        if self.updates:
            out["updates"] = [dict(u) for u in self.updates]
        if self.eval_round is not None:
            out["eval_round"] = self.eval_round
        out.update(self.values)
        return out


class Event(NamedTuple):
    """One ``{"type": "event"}`` line (a rejected update, a retried round ...)."""

    message: str
    level: str = "info"
    time: Optional[float] = None
    client: Optional[int] = None
    round: Optional[int] = None


class Summary(NamedTuple):
    """The final ``{"type": "summary"}`` line. ``values``: its other finite numbers (``final_accuracy``,
    ``final_loss``, ``best_accuracy`` ...)."""

    status: str = "finished"  # finished | failed
    reason: Optional[str] = None
    rounds_completed: Optional[int] = None
    wall_s: Optional[float] = None
    values: Dict[str, float] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """A field or a value by its key in the line (``default`` when absent)."""
        if key in self._fields and key != "values":
            got = getattr(self, key)
            return default if got is None else got
        return self.values.get(key, default)

    def to_dict(self) -> Dict[str, Any]:
        """The line as strict JSON would hold it."""
        out: Dict[str, Any] = {"type": "summary", "rounds_completed": self.rounds_completed}
        out.update(self.values)
        out.update({"wall_s": self.wall_s, "status": self.status, "reason": self.reason})
        return out


def _numbers(obj: Dict[str, Any], skip: Iterable[str]) -> Tuple[Dict[str, float], List[str]]:
    """(finite numbers by key, keys holding NaN/inf) of one JSON object's top level."""
    values, bad = {}, []
    for k, v in obj.items():
        if k in skip:
            continue
        if _nonfinite(v):
            bad.append(str(k))
        else:
            n = number(v)
            if n is not None:
                values[str(k)] = v if isinstance(v, int) and not isinstance(v, bool) else n
    return values, bad


def parse_round(obj: Dict[str, Any]) -> Optional[RoundRecord]:
    """A round line's typed record; None when it has no round number."""
    rnd = integer(obj.get("round"))
    if rnd is None:
        return None
    values, bad = _numbers(obj, ROUND_KEYS)
    bad += [k for k in ("start", "end") if _nonfinite(obj.get(k))]
    clients: Dict[int, Dict[str, Any]] = {}
    raw_clients = obj.get("clients")
    for k, v in (raw_clients.items() if isinstance(raw_clients, dict) else ()):
        cid = integer(k)
        if cid is None:
            continue
        info = v if isinstance(v, dict) else {}
        bad += ["clients.%d.%s" % (cid, key) for key, x in info.items() if _nonfinite(x)]
        clients[cid] = _clean(info)
    raw_updates = obj.get("updates")
    updates = tuple(_clean(u) for u in (raw_updates if isinstance(raw_updates, list) else ()) if isinstance(u, dict))
    dropped: Dict[int, str] = {}
    raw_dropped = obj.get("dropped")
    for d in raw_dropped if isinstance(raw_dropped, list) else ():
        cid = integer(d.get("id")) if isinstance(d, dict) else integer(d)
        if cid is not None:
            dropped[cid] = str((d.get("reason") if isinstance(d, dict) else None) or "dropped")
    return RoundRecord(
        round=rnd, rounds=integer(obj.get("rounds")), start=number(obj.get("start")), end=number(obj.get("end")),
        sampled=ids(obj.get("sampled")), reported=ids(obj.get("reported")), dropped=dropped, clients=clients,
        strategy=text_or_none(obj.get("strategy")), values=values, nonfinite=tuple(bad), updates=updates,
        eval_round=integer(obj.get("eval_round")),
    )


def parse_event(obj: Dict[str, Any]) -> Event:
    """An event line's typed record."""
    return Event(message=str(obj.get("message") or ""), level=str(obj.get("level") or "info"),
                 time=number(obj.get("time")), client=integer(obj.get("client")), round=integer(obj.get("round")))


def parse_summary(obj: Dict[str, Any]) -> Summary:
    """The summary line's typed record (no ``status``: finished)."""
    values, _ = _numbers(obj, SUMMARY_KEYS)
    return Summary(status=text_or_none(obj.get("status")) or "finished", reason=text_or_none(obj.get("reason")),
                   rounds_completed=integer(obj.get("rounds_completed")), wall_s=number(obj.get("wall_s")),
                   values=values)


# -- reading metrics.jsonl ---------------------------------------------------------------------------------
class LineBuffer:
    """Split a stream of text into complete lines; hold the trailing partial one until its newline."""

    def __init__(self, max_partial: int = MAX_PARTIAL) -> None:
        self._partial = ""
        self._max = max_partial

    @property
    def partial(self) -> str:
        return self._partial

    def feed(self, chunk: str) -> List[str]:
        """Add ``chunk``; return the lines it completed (without their newlines)."""
        if not chunk:
            return []
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max:  # a runaway line without newline: flush it
            lines.append(self._partial)
            self._partial = ""
        return [ln.rstrip("\r") for ln in lines]

    def reset(self) -> None:
        """Forget the partial line (the file was truncated or replaced)."""
        self._partial = ""


class MetricsLog:
    """metrics.jsonl read so far: rounds (one record per round number), events, the summary.

    Feed it a whole file (``parse_metrics``/``read_metrics``) or the new bytes of a growing one
    (``feed``, as ``watch`` does); both follow the rules of this module's docstring.
    """

    def __init__(self, max_events: int = 1000) -> None:
        self.max_events = max_events
        self.reset()

    def reset(self) -> None:
        """Start over (the file was truncated or replaced)."""
        self.rounds: Dict[int, RoundRecord] = {}
        self.events: List[Event] = []
        self.summary: Optional[Summary] = None
        self.bad_lines = 0
        self.repeated = 0  # round lines that replaced an earlier line for the same round (resumes)
        self.version = 0  # grows with every line taken in (for callers that cache what they derive)
        self._buf = LineBuffer()

    def feed(self, chunk: str) -> int:
        """Take new text of the file; returns how many complete lines it held."""
        lines = self._buf.feed(chunk)
        for line in lines:
            self.add_line(line)
        return len(lines)

    def finish(self) -> None:
        """The whole file was fed: a last line without its newline counts if it is a whole object
        (a JSON object is never a prefix of another line), else it is torn and left out."""
        tail = self._buf.partial.strip()
        self._buf.reset()
        if tail:
            obj = json_object(tail)
            if obj is not None:
                self.add_object(obj)

    def add_line(self, line: str) -> None:
        """Take one line (blank lines are ignored; one that is not a JSON object is counted)."""
        line = line.strip()
        if not line:
            return
        obj = json_object(line)
        if obj is None:
            self.bad_lines += 1
        else:
            self.add_object(obj)

    def add_object(self, obj: Dict[str, Any]) -> None:
        """Take one parsed line: a round, an event or the summary (any other type is counted bad)."""
        kind = obj.get("type")
        self.version += 1
        if kind == "round":
            rec = parse_round(obj)
            if rec is None:
                self.bad_lines += 1
                return
            if rec.round in self.rounds:
                self.repeated += 1
            self.rounds[rec.round] = rec
            self.summary = None  # rounds after a summary: the run was resumed
        elif kind == "event":
            self.events.append(parse_event(obj))
            del self.events[:-self.max_events]
        elif kind == "summary":
            self.summary = parse_summary(obj)
        else:
            self.bad_lines += 1

    # -- what the rounds say ----------------------------------------------------------------------------
    @property
    def ordered(self) -> List[RoundRecord]:
        """The rounds in round order."""
        return [self.rounds[k] for k in sorted(self.rounds)]

    @property
    def last_round(self) -> Optional[RoundRecord]:
        """The round with the highest number."""
        return self.rounds[max(self.rounds)] if self.rounds else None

    def _latest(self, field: str) -> Any:
        """``field`` of the latest round that has it (None when no round does)."""
        return next((getattr(r, field) for r in reversed(self.ordered) if getattr(r, field)), None)

    @property
    def total_rounds(self) -> Optional[int]:
        """How many rounds the run is to have, as the latest round line that says it."""
        return self._latest("rounds")

    @property
    def strategy(self) -> Optional[str]:
        """The strategy the latest round that names one says."""
        return self._latest("strategy")

    def recent(self, n: int) -> List[RoundRecord]:
        """The last ``n`` rounds, oldest first."""
        return self.ordered[-n:] if n > 0 else []

    def nan_rounds(self) -> List[int]:
        """Rounds whose global loss or a client's loss was NaN or infinite."""
        return sorted(k for k, r in self.rounds.items()
                      if any(key == "loss" or key.endswith(".loss") for key in r.nonfinite))

    def metric_names(self) -> List[str]:
        """Every metric some round reports (the keys of ``RoundRecord.values``), sorted."""
        names: set = set()
        for r in self.rounds.values():
            names.update(r.values)
        return sorted(names)

    def series(self, key: str) -> Tuple[List[int], List[float]]:
        """(round numbers, values) of one metric, in round order, where the round reports it."""
        xs, ys = [], []
        for r in self.ordered:
            if key in r.values:
                xs.append(r.round)
                ys.append(float(r.values[key]))
        return xs, ys

    def round_times(self) -> List[Tuple[float, float]]:
        """(start, end) of every round that has both, in round order."""
        return [(r.start, r.end) for r in self.ordered if r.start is not None and r.end is not None]

    def last_round_end(self) -> Optional[float]:
        """When the latest round ended (the idle guard's clock), None before the first."""
        ends = [r.end for r in self.rounds.values() if r.end is not None]
        return max(ends) if ends else None

    @property
    def wall_s(self) -> Optional[float]:
        """The run's wall time: the summary's, else first round start to last round end."""
        if self.summary is not None and self.summary.wall_s is not None:
            return self.summary.wall_s
        times = self.round_times()
        if not times:
            return None
        return max(e for _, e in times) - min(s for s, _ in times)


def json_object(text: str) -> Optional[Dict[str, Any]]:
    """``text`` as a JSON object, None when it is anything else (or no JSON at all)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested brackets
        return None
    return obj if isinstance(obj, dict) else None


def parse_metrics(text: str) -> MetricsLog:
    """The whole of a metrics.jsonl text (or a tail of whole lines)."""
    log = MetricsLog()
    log.feed(text)
    log.finish()
    return log


def read_metrics(path: str, tail_bytes: Optional[int] = None) -> MetricsLog:
    """metrics.jsonl at ``path`` (a missing or unreadable file has no lines). ``tail_bytes``: read
    only that much of the file's end, without the line it cuts (the watchdog's cheap poll)."""
    try:
        with open(str(path), "rb") as f:
            start = 0
            if tail_bytes is not None:
                f.seek(0, 2)
                start = max(0, f.tell() - tail_bytes)
                f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return MetricsLog()
    if start > 0:
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return parse_metrics(text)
