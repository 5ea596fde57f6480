"""status.json and the ready file, and their readers (formats: docs/contracts.md).

    status.json     the server's live state (round, phase, who is sampled / waiting / uploading),
                    rewritten atomically on every change; optional
    server.ready    ``{"port": int, "pid": int}``, written atomically once the server serves (the
                    manifest's ``server.ready_file`` says where)

Both are read while they may be replaced: an empty or unreadable file reads as None, never an error.
"""

from typing import NamedTuple, Optional, Tuple

from fedctl.contract.metrics import ids, integer, json_object, number, text_or_none

STATUS_FILE = "status.json"
READY_FILE = "server.ready"


class ServerStatus(NamedTuple):
    """status.json: where the server is right now."""

    phase: Optional[str] = None  # training | finished | failed
    round: Optional[int] = None
    rounds: Optional[int] = None
    sampled: Tuple[int, ...] = ()
    reported: Tuple[int, ...] = ()
    waiting: Tuple[int, ...] = ()
    uploading: Tuple[int, ...] = ()
    time: Optional[float] = None
    connected: Optional[int] = None  # clients the server has heard from (manifest: server.reports_clients)


def parse_status(text: Optional[str]) -> Optional[ServerStatus]:
    """status.json's content; None when empty, unreadable (it is optional and read while it may be
    replaced) or saying nothing this contract knows."""
    obj = json_object(text.strip()) if text and text.strip() else None
    if obj is None or not any(k in obj for k in ServerStatus._fields):
        return None
    return ServerStatus(phase=text_or_none(obj.get("phase")), round=integer(obj.get("round")),
                        rounds=integer(obj.get("rounds")), sampled=ids(obj.get("sampled")),
                        reported=ids(obj.get("reported")), waiting=ids(obj.get("waiting")),
                        uploading=ids(obj.get("uploading")), time=number(obj.get("time")),
                        connected=integer(obj.get("connected")))


class ReadyInfo(NamedTuple):
    """The ready file: the port the server listens on (it may have picked it) and its pid."""

    port: int
    pid: Optional[int] = None


def parse_ready(text: Optional[str]) -> Optional[ReadyInfo]:
    """The ready file's content; None until it names a port (absent, being written, or port 0)."""
    obj = json_object(text.strip()) if text and text.strip() else None
    port = integer(obj.get("port")) if obj is not None else None
    if port is None or port <= 0:
        return None
    return ReadyInfo(port, integer(obj.get("pid")))
