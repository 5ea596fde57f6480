"""The run's HTTP endpoints on a Coordinator (no TensorFlow here).

Endpoints (all need `Authorization: Bearer <run token>`, else 401 before the body is read):
    GET  /task?after=SEQ&ids=0,1,2&proc=P&inst=I   long poll: the next round that samples one of `ids`
    POST /update?seq=SEQ&id=K                      one client update (binary message)
    POST /drop?seq=SEQ&id=K                        a sampled client announces a simulated dropout
    GET  /progress?seq=SEQ&ids=0,1                 a client process still trains (or uploads) these
                                                   ids in run SEQ (200 noted, 409 not in the open run)
    GET  /health                                   JSON status

Connection handling, deadlines and caps are fedtf.httpserve's. A POST needs a valid Content-Length
(411 / 400 / 413 otherwise, answered without reading the body).
"""
from __future__ import annotations

import json
import resource
from urllib.parse import parse_qs, urlparse

from .coordinator import Coordinator
from .httpmsg import Reply, Request, text_reply
from .httpserve import BODY_BASE_S, HEAD_TIMEOUT_S, PENDING_PER_SOURCE, GuardedHTTPServer
from .metrics import log
from .transport import token_ok

READ_TIMEOUT_S = 60.0  # default: a kept-alive connection silent this long between requests is closed


def fleet_defaults(clients: int) -> tuple[int, int]:
    """(max_connections, listen backlog) for a fleet of `clients` virtual clients.

    A client process keeps one long-poll connection, up to four upload connections and one for its
    progress reports, and there are at most `clients` processes. The backlog must absorb every
    process connecting at once: with the stdlib's 5, 200 clients starting together sat in SYN
    retries and timed out.
    """
    return min(4096, max(64, 6 * clients + 16)), max(128, 2 * clients)


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to the hard one. Returns the soft limit now in force.

    Pending connections cost one descriptor each, and 1024 is a common default.
    """
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == inf:
        return 1 << 20
    want = max(soft, 1 << 16) if hard == inf else hard
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log("server", f"could not raise the open-file limit from {soft}: {e}", "debug")
    return soft


def pending_cap(max_connections: int) -> int:
    """How many token-less connections may be open at once: what the fd limit leaves after the
    fleet's connections and some headroom (files, the log, TensorFlow), between 64 and 4096."""
    soft = raise_fd_limit()
    return max(64, min(4096, soft - max_connections - 256))


def make_http_server(coord: Coordinator, host: str, port: int, read_timeout_s: float = READ_TIMEOUT_S,
                     max_connections: int | None = None, backlog: int | None = None, *,
                     head_timeout_s: float = HEAD_TIMEOUT_S, pending_per_source: int = PENDING_PER_SOURCE,
                     max_pending: int | None = None, body_base_s: float = BODY_BASE_S,
                     listener=None) -> GuardedHTTPServer:
    """The run's HTTP server (bound, not yet serving). None sizes a limit from the fleet.
    `listener`: an already listening socket to serve (see `fedtf.httpserve.listen`), else
    (host, port) is bound here."""
    auto_conns, auto_backlog = fleet_defaults(len(coord.shard_sizes))
    conns = max_connections or auto_conns

    def authorize(req: Request) -> bool:
        return token_ok(req.headers.get("Authorization"), coord.token)

    def handle(req: Request, body: bytes) -> Reply:
        u = urlparse(req.target)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        try:
            if req.method == "GET":
                return _get(coord, u.path, q)
            if req.method == "POST":
                return _post(coord, u.path, q, body)
        except ValueError as e:
            return text_reply(400, f"bad query: {e}")
        return text_reply(405, f"method {req.method[:16]} not allowed", close=True)

    return GuardedHTTPServer((host, port), authorize, handle, coord.max_body, max_connections=conns,
                             backlog=backlog or auto_backlog, read_timeout_s=read_timeout_s,
                             head_timeout_s=head_timeout_s, pending_per_source=pending_per_source,
                             max_pending=max_pending or pending_cap(conns), body_base_s=body_base_s,
                             listener=listener)


def _get(coord: Coordinator, path: str, q: dict) -> Reply:
    if path == "/task":
        ids = [int(i) for i in q.get("ids", "").split(",") if i != ""]
        body = coord.poll(int(q.get("after", "0")), ids, q.get("proc", "?"), q.get("inst", ""))
        return Reply(200, body, "application/octet-stream")
    if path == "/progress":
        ids = [int(i) for i in q.get("ids", "").split(",") if i != ""]
        if coord.progress(int(q.get("seq", "0")), ids):
            return text_reply(200, "noted")
        return text_reply(409, "not training in the open round")
    if path == "/health":
        st = coord.state
        return Reply(200, json.dumps({"round": st.round_no, "seq": st.seq, "finished": coord.finished}).encode())
    return text_reply(404, "no such endpoint")


def _post(coord: Coordinator, path: str, q: dict, body: bytes) -> Reply:
    try:
        seq, client = int(q["seq"]), int(q["id"])
    except (KeyError, ValueError):
        return text_reply(400, "seq and id query parameters are required")
    if path == "/update":
        code, reason = coord.deliver(seq, client, body)
    elif path == "/drop":
        code, reason = coord.drop(seq, client, "dropout (simulated)")
    else:
        code, reason = 404, "no such endpoint"
    return text_reply(code, reason)
