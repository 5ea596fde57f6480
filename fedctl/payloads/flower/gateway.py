"""The Fleet gateway: the one port of the SuperLink that client hosts can reach (stdlib only).

Since Flower 1.2x the SuperLink serves its Fleet API (SuperNodes), Control API (``flwr run``,
``flwr stop``: submit and stop runs, i.e. run code on this host) and Runtime API (ServerApp) on ONE
HTTP port, and the open-source Control API has no authentication. Exposing that port would let
anyone who reaches it start a run. So the SuperLink listens on 127.0.0.1 only and this gateway,
bound where fedctl's server binds, forwards only ``/v1/fleet/*`` and ``/health`` requests to it;
anything else gets 403 and the connection is closed. It also terminates TLS (the run's server
certificate), answers ``GET /fedctl/state`` (the run's phase) so client wrappers learn when the
run is over, and ``POST /fedctl/hello`` (a client's hello, handed to the server wrapper).

A stranger must not be able to hold the port (docs/flower.md, "Strangers"): every connection gets
``head_deadline_s`` for its TLS handshake and its first complete request head together, then
``head_deadline_s`` per later request head once its first byte came, and ``idle_s`` of silence
between requests; a request body must keep arriving (``idle_s`` per read). At most
``max_connections`` connections are open (fewer when the open-file limit is low); when full, the
oldest that has not yet sent a request makes room. At most ``max_per_source`` come from one
address. Above that a new connection is closed at once, before its handshake, so the gateway's
file descriptors stay bounded whatever arrives.

HTTP/1.1 only, one request at a time per connection (what Flower's httpx client does); request
bodies need a Content-Length (chunked requests get 411). Responses are relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from typing import Callable, Optional

ALLOWED_PREFIXES = ("/v1/fleet/",)
ALLOWED_PATHS = ("/health",)
STATE_PATH = "/fedctl/state"
HELLO_PATH = "/fedctl/hello"
MAX_HEAD = 64 * 1024
MAX_HELLO = 256 * 1024
CHUNK = 1 << 16
HEAD_DEADLINE_S = 5.0
IDLE_S = 60.0
MAX_CONNECTIONS = 512
MAX_PER_SOURCE = 128


def allowed(path: str) -> bool:
    path = path.split("?", 1)[0]
    if ".." in path or "//" in path or "%" in path:
        return False
    return path in ALLOWED_PATHS or any(path.startswith(p) for p in ALLOWED_PREFIXES)


def _response(status: str, body: bytes, close: bool, ctype: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
    return head.encode("latin-1") + body


def _fd_limit() -> int:
    """This process's soft limit on open files (a large number where it cannot be read)."""
    try:
        import resource  # noqa: PLC0415 - Unix only

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1 << 20
    return soft if soft > 0 else 1 << 20


class _Conn:
    """One accepted connection: where from, and whether it has sent a complete request yet."""

    __slots__ = ("source", "raw", "pending")

    def __init__(self, source: str, raw: asyncio.BaseTransport) -> None:
        self.source, self.raw, self.pending = source, raw, True  # raw: the TCP transport under any TLS


class _Paused(asyncio.StreamReaderProtocol):
    """A stream protocol that reads nothing until the handler says so: the client's TLS hello must
    reach the TLS layer that ``start_tls`` puts in, not the plain stream's buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        super().connection_made(transport)


class Gateway:
    """Forward Fleet API requests from ``bind:port`` to ``127.0.0.1:upstream_port``.

    ``upstream_ssl``: the context to reach a SuperLink that itself speaks TLS (node authentication
    needs it); ``hello``: called in a worker thread with a client hello's JSON, returns the answer
    (status code, JSON object)."""

    def __init__(self, bind: str, port: int, upstream_port: int, ssl_context: Optional[ssl.SSLContext],
                 state: Callable[[], dict], log: Callable[[str], None] = lambda m: None, *,
                 upstream_ssl: Optional[ssl.SSLContext] = None,
                 hello: Optional[Callable[[dict], tuple[int, dict]]] = None,
                 head_deadline_s: float = HEAD_DEADLINE_S, idle_s: float = IDLE_S,
                 max_connections: int = MAX_CONNECTIONS, max_per_source: int = MAX_PER_SOURCE) -> None:
        self.bind, self.port, self.upstream_port = bind, port, upstream_port
        self.ssl_context, self.upstream_ssl = ssl_context, upstream_ssl
        self.state, self.hello = state, hello
        self.log = log
        self.head_deadline_s, self.idle_s = head_deadline_s, idle_s
        # each forwarded connection holds two descriptors (client, SuperLink): stay under the limit
        self.max_connections = min(max_connections, max(16, (_fd_limit() - 64) // 2))
        self.max_per_source = max_per_source
        self.loop = asyncio.new_event_loop()
        self.server: Optional[asyncio.base_events.Server] = None
        self.thread: Optional[threading.Thread] = None
        self.conns: dict[int, _Conn] = {}  # insertion order = age
        self.per_source: dict[str, int] = {}
        self.refused = 0
        self.shed = 0  # connections closed by the caps or the deadlines

    def start(self) -> int:
        """Bind and serve in a background thread; return the bound port."""
        async def open_server() -> None:
            # no ssl= here: the handshake happens in _handle, after the caps and under the deadline
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(
                lambda: _Paused(asyncio.StreamReader(limit=MAX_HEAD, loop=loop), self._handle, loop=loop),
                self.bind, self.port, backlog=1024)

        self.loop.run_until_complete(open_server())
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleet-gateway", daemon=True)
        self.thread.start()
        return self.port

    def stop(self) -> None:
        if self.server is None:
            return

        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for c in list(self.conns.values()):
                c.raw.abort()  # type: ignore[attr-defined]

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        except (TimeoutError, RuntimeError, OSError) as exc:  # shutting down; the process exits next
            self.log(f"gateway: stop: {exc!r}")
        self.loop.call_soon_threadsafe(self.loop.stop)

    def open_connections(self) -> int:
        return len(self.conns)

    # -- admission ---------------------------------------------------------------------------------
    def _admit(self, source: str, raw: asyncio.BaseTransport) -> Optional[_Conn]:
        if self.per_source.get(source, 0) >= self.max_per_source:
            return None
        if len(self.conns) >= self.max_connections:
            oldest = next((c for c in self.conns.values() if c.pending), None)
            if oldest is None:
                return None
            oldest.raw.abort()  # type: ignore[attr-defined]  # its handler's finally forgets it
            self._forget(oldest)
        conn = _Conn(source, raw)
        self.conns[id(conn)] = conn
        self.per_source[source] = self.per_source.get(source, 0) + 1
        return conn

    def _forget(self, conn: _Conn) -> None:
        if self.conns.pop(id(conn), None) is None:
            return
        left = self.per_source.get(conn.source, 1) - 1
        if left > 0:
            self.per_source[conn.source] = left
        else:
            self.per_source.pop(conn.source, None)

    def _shed(self, why: str, source: str) -> None:
        self.shed += 1
        if self.shed <= 5 or self.shed % 1000 == 0:
            self.log(f"gateway: closed a connection from {source}: {why} ({self.shed} so far)")

    # -- one connection ----------------------------------------------------------------------------
    async def _read_head(self, reader: asyncio.StreamReader, first: bool, deadline: float) -> bytes:
        """The next request head. The first one must be complete by ``deadline``; a later one may
        wait ``idle_s`` for its first byte, then has ``head_deadline_s`` to complete."""
        loop = asyncio.get_running_loop()
        if not first:
            start = await asyncio.wait_for(reader.read(1), self.idle_s)
            if not start:
                raise asyncio.IncompleteReadError(b"", None)
            deadline = loop.time() + self.head_deadline_s
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.0, deadline - loop.time()))
            return start + rest
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.0, deadline - loop.time()))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        raw = writer.transport
        conn = self._admit(source, raw)
        if conn is None:
            self._shed("connection cap", source)
            raw.abort()
            return
        up_w: Optional[asyncio.StreamWriter] = None
        pump: Optional[asyncio.Task] = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.head_deadline_s
        try:
            if self.ssl_context is not None:
                try:
                    await asyncio.wait_for(writer.start_tls(self.ssl_context), self.head_deadline_s)
                except AttributeError:  # Python 3.11's start_tls when the peer left mid-handshake
                    return
            else:
                raw.resume_reading()  # type: ignore[attr-defined]
            first = True
            while True:
                try:
                    head = await self._read_head(reader, first, deadline)
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response("431 Request Header Fields Too Large", b"", close=True))
                    return
                first = False
                conn.pending = False
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    writer.write(_response("400 Bad Request", b"", close=True))
                    return
                method, target = parts[0], parts[1]
                headers = {}
                for h in lines[1:]:
                    if ":" in h:
                        k, _, v = h.partition(":")
                        headers[k.strip().lower()] = v.strip()
                if target == STATE_PATH and method == "GET":
                    body = json.dumps(self.state()).encode()
                    writer.write(_response("200 OK", body, close=False))
                    await writer.drain()
                    continue
                if "transfer-encoding" in headers:
                    writer.write(_response("411 Length Required", b"", close=True))
                    return
                try:
                    length = int(headers.get("content-length", "0"))
                    if length < 0:
                        raise ValueError
                except ValueError:
                    writer.write(_response("400 Bad Request", b"", close=True))
                    return
                if target == HELLO_PATH and method == "POST" and self.hello is not None:
                    await self._answer_hello(reader, writer, length)
                    return
                if not allowed(target):
                    self.refused += 1
                    if self.refused <= 5:
                        self.log(f"gateway: refused {method} {target[:80]} from {source} "
                                 "(only the Fleet API is exposed)")
                    writer.write(_response("403 Forbidden", b'{"error": "only the Fleet API is reachable here"}',
                                           close=True))
                    return
                if up_w is None or up_w.is_closing():
                    up_r, up_w = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", self.upstream_port, limit=MAX_HEAD, ssl=self.upstream_ssl,
                        server_hostname="127.0.0.1" if self.upstream_ssl else None), self.idle_s)
                    pump = asyncio.ensure_future(self._pump(up_r, writer))
                up_w.write(head)
                while length > 0:
                    chunk = await asyncio.wait_for(reader.read(min(CHUNK, length)), self.idle_s)
                    if not chunk:
                        return
                    up_w.write(chunk)
                    length -= len(chunk)
                    await up_w.drain()
                await up_w.drain()
        except asyncio.TimeoutError:
            self._shed("handshake or request head too slow" if conn.pending else "idle", source)
            return
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            self._forget(conn)
            if up_w is not None:
                up_w.close()
            if pump is not None:
                pump.cancel()
            if conn.pending:
                raw.abort()  # type: ignore[attr-defined]  # a stranger's half-open TLS: no close_notify to wait for
            elif writer.transport is not None:
                writer.close()

    async def _answer_hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> None:
        """Read a client hello (bounded size and time), let the server wrapper answer it."""
        if length > MAX_HELLO:
            writer.write(_response("413 Payload Too Large", b"", close=True))
            return
        body = await asyncio.wait_for(reader.readexactly(length), self.head_deadline_s)
        try:
            data = json.loads(body.decode())
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeError):
            writer.write(_response("400 Bad Request", b'{"error": "not a JSON object"}', close=True))
            return
        assert self.hello is not None
        code, answer = await asyncio.get_running_loop().run_in_executor(None, self.hello, data)
        status = {200: "200 OK", 400: "400 Bad Request", 403: "403 Forbidden", 409: "409 Conflict",
                  503: "503 Service Unavailable"}.get(code, f"{code} Error")
        writer.write(_response(status, json.dumps(answer).encode(), close=True))
        await writer.drain()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Relay the SuperLink's responses; when it closes the connection, so do we."""
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            try:
                dst.close()
            except (ConnectionError, OSError, RuntimeError):  # the transport may already be gone
                pass
