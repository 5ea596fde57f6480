"""The Fleet gateway: the one port of the SuperLink that client hosts can reach (stdlib only).

Since Flower 1.2x the SuperLink serves its Fleet API (SuperNodes), Control API (``flwr run``,
``flwr stop``: submit and stop runs, i.e. run code on this host) and Runtime API (ServerApp) on ONE
HTTP port, and the open-source Control API has no authentication. Exposing that port would let
anyone who reaches it start a run. So the SuperLink listens on 127.0.0.1 only and this gateway,
bound where fedctl's server binds, forwards only ``/v1/fleet/*`` and ``/health`` requests to it;
anything else gets 403 and the connection is closed. It also terminates TLS (the run's server
certificate), and answers ``GET /fedctl/state`` (the run's phase) so client wrappers learn when the
run is over.

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
MAX_HEAD = 64 * 1024
CHUNK = 1 << 16


def allowed(path: str) -> bool:
    path = path.split("?", 1)[0]
    if ".." in path or "//" in path or "%" in path:
        return False
    return path in ALLOWED_PATHS or any(path.startswith(p) for p in ALLOWED_PREFIXES)


def _response(status: str, body: bytes, close: bool, ctype: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
    return head.encode("latin-1") + body


class Gateway:
    """Forward Fleet API requests from ``bind:port`` to ``127.0.0.1:upstream_port``."""

    def __init__(self, bind: str, port: int, upstream_port: int, ssl_context: Optional[ssl.SSLContext],
                 state: Callable[[], dict], log: Callable[[str], None] = lambda m: None) -> None:
        self.bind, self.port, self.upstream_port = bind, port, upstream_port
        self.ssl_context = ssl_context
        self.state = state
        self.log = log
        self.loop = asyncio.new_event_loop()
        self.server: Optional[asyncio.base_events.Server] = None
        self.thread: Optional[threading.Thread] = None
        self.refused = 0

    def start(self) -> int:
        """Bind and serve in a background thread; return the bound port."""
        async def open_server() -> None:
            self.server = await asyncio.start_server(self._handle, self.bind, self.port, ssl=self.ssl_context,
                                                     limit=MAX_HEAD, backlog=1024)

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

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - shutting down; the process exits next
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_w: Optional[asyncio.StreamWriter] = None
        pump: Optional[asyncio.Task] = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response("431 Request Header Fields Too Large", b"", close=True))
                    return
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
                if not allowed(target):
                    self.refused += 1
                    if self.refused <= 5:
                        peer = writer.get_extra_info("peername")
                        self.log(f"gateway: refused {method} {target[:80]} from {peer} (only the Fleet API is exposed)")
                    writer.write(_response("403 Forbidden", b'{"error": "only the Fleet API is reachable here"}',
                                           close=True))
                    return
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
                if up_w is None or up_w.is_closing():
                    up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=MAX_HEAD)
                    pump = asyncio.ensure_future(self._pump(up_r, writer))
                up_w.write(head)
                while length > 0:
                    chunk = await reader.read(min(CHUNK, length))
                    if not chunk:
                        return
                    up_w.write(chunk)
                    length -= len(chunk)
                    await up_w.drain()
                await up_w.drain()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            if up_w is not None:
                up_w.close()
            if pump is not None:
                pump.cancel()
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the transport may already be gone
                pass

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
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            try:
                dst.close()
            except Exception:  # noqa: BLE001
                pass
