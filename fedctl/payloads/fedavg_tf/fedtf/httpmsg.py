"""HTTP/1.1 messages for fedtf.httpserve: a parsed request head, a reply, and the framing rules
(stdlib only).
"""
from __future__ import annotations

import http.client
import io
import json
import re
from dataclasses import dataclass, field

MAX_HEAD = 32 << 10         # bytes; ours are a few hundred
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # digits only: no sign, no spaces inside, no hex


@dataclass
class Request:
    """One parsed request head."""
    method: str
    target: str
    version: str
    headers: http.client.HTTPMessage
    client: tuple


@dataclass
class Reply:
    """What the app answers; `close` ends the connection after the reply."""
    code: int
    body: bytes
    ctype: str = "application/json"
    close: bool = False
    headers: dict = field(default_factory=dict)


def text_reply(code: int, message: str, close: bool = False) -> Reply:
    """A JSON {"message": ...} reply."""
    return Reply(code, json.dumps({"message": message}).encode(), close=close)


def parse_head(head: bytes, client: tuple) -> Request | Reply:
    """A complete head (request line, fields, blank line) as a Request, or the 400 to send."""
    line, _, fields = head.partition(b"\r\n")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return text_reply(400, "bad request line", True)
    try:
        headers = http.client.parse_headers(io.BytesIO(fields))
    except http.client.HTTPException as e:  # too many fields, a field line too long
        return text_reply(400, f"bad headers: {type(e).__name__}", True)
    return Request(parts[0], parts[1], parts[2], headers, client)


def body_length(req: Request, max_body: int) -> int | Reply:
    """The declared body length, or the error reply. Checked before a byte of the body is read:
    `Content-Length: -1` once read until EOF past the body cap."""
    if req.headers.get("Transfer-Encoding") is not None:
        return text_reply(411, "send a Content-Length; chunked bodies are not accepted", True)
    values = [v.strip() for v in req.headers.get_all("Content-Length") or []]
    if not values:
        if req.method in ("POST", "PUT"):
            return text_reply(411, "Content-Length required", True)
        return 0
    if len(set(values)) != 1 or not _CONTENT_LENGTH.fullmatch(values[0]):
        shown = ", ".join(values)[:40]
        return text_reply(400, f"bad Content-Length {shown!r}: expected one non-negative integer", True)
    length = int(values[0])
    if length > max_body:
        return text_reply(413, f"body of {length} bytes exceeds the limit of {max_body}", True)
    return length


def reply_head(reply: Reply, close: bool) -> bytes:
    """Status line and header fields of `reply`, with `Connection: close` when the connection ends."""
    reason = http.client.responses.get(reply.code, "")
    lines = [f"HTTP/1.1 {reply.code} {reason}", f"Content-Type: {reply.ctype}",
             f"Content-Length: {len(reply.body)}"]
    lines += [f"{k}: {v}" for k, v in reply.headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def wants_close(req: Request) -> bool:
    """Whether the client asked to close after this request (HTTP/1.0 closes unless keep-alive)."""
    conn = (req.headers.get("Connection") or "").lower()
    if req.version == "HTTP/1.0":
        return "keep-alive" not in conn
    return "close" in conn
