"""An HTTP/1.1 server that a stranger without the run token cannot stall (stdlib only).

http.server gave each connection a thread before reading a byte and timed out per recv: 70
connections sending a byte every 2 s held all 64 slots, and token holders got 503. Here:
- One thread (serve_forever) accepts and reads every request head with a selector. A head must
  be complete within `head_timeout_s` of the accept (kept-alive: of its first byte), however
  slowly it trickles in. No thread is spent before that.
- Connections that have not shown the token yet ("pending") are capped per source address (over
  it, a new one is closed at once) and in total (fd limit; when full, the oldest pending one is
  closed: a real client's head takes milliseconds, so strangers only push each other out).
- The token is checked on the head (`authorize`) before anything else: without it, 401, close,
  and the body is never read.
- With the token, a connection holds one of `max_connections` slots until it closes (none free:
  503). Each request gets a thread that reads the body under one total deadline from its
  Content-Length (body_base_s + length / BODY_MIN_RATE), calls the app, replies, and gives a
  kept-alive connection back to the selector.
"""
from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
import time
import traceback
from typing import Callable

from .httpmsg import (MAX_HEAD, Reply, Request, body_length, parse_head, reply_head, text_reply,
                      wants_close)
from .metrics import log

HEAD_TIMEOUT_S = 5.0        # a whole request head, from accept (or from a kept-alive request's first byte)
PENDING_PER_SOURCE = 64     # connections without the token yet, per source address
BODY_BASE_S = 10.0          # a body may take this long plus length / BODY_MIN_RATE, in total
BODY_MIN_RATE = 64 << 10    # bytes/s (512 kbit/s): slower senders are cut off with a 408
LINGER_S, LINGER_BYTES = 2.0, 16 << 20  # after an error reply: how long / how much to read before closing
SWEEP_S = 0.25              # how often expired heads are looked for


class _Conn:
    __slots__ = ("sock", "addr", "buf", "deadline", "idle", "authed")

    def __init__(self, sock: socket.socket, addr: tuple, deadline: float) -> None:
        self.sock, self.addr, self.deadline, self.buf = sock, addr, deadline, bytearray()
        self.idle = self.authed = False  # idle: kept alive between requests; authed: holds a slot


def listen(address: tuple[str, int], backlog: int) -> socket.socket:
    """A TCP socket bound to `address` and listening; raises OSError when the port is taken.
    Connections made before anyone accepts wait in the kernel's queue (at most `backlog`): they
    cost this process nothing until the server serves them, with all its limits."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # server.bind may be "::"
    return socket.create_server(address, family=family, backlog=backlog)


class GuardedHTTPServer:
    """The server: `serve_forever()` on a thread, `shutdown()` from another, then `server_close()`.

    `authorize(request)` decides on the head alone. `handle(request, body)` returns a Reply (it
    may block, e.g. a long poll). `max_body` caps Content-Length (413 above it).
    """

    def __init__(self, address: tuple[str, int], authorize: Callable[[Request], bool],
                 handle: Callable[[Request, bytes], Reply], max_body: int, *, max_connections: int,
                 backlog: int, read_timeout_s: float, head_timeout_s: float = HEAD_TIMEOUT_S,
                 pending_per_source: int = PENDING_PER_SOURCE, max_pending: int = 1024,
                 body_base_s: float = BODY_BASE_S, listener: socket.socket | None = None) -> None:
        self.authorize, self.handle, self.max_body = authorize, handle, max_body
        self.max_connections, self.request_queue_size = max_connections, backlog
        self.read_timeout_s, self.head_timeout_s = read_timeout_s, head_timeout_s
        self.pending_per_source, self.max_pending = pending_per_source, max_pending
        self.body_base_s = body_base_s
        # `listener`: a socket bound (and listening) before this object could be made, e.g. by
        # server.py before it imports TensorFlow; `address` is then not bound again
        self._listener = listener if listener is not None else listen(address, backlog)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a handler thread must never block on a wake-up
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: dict[_Conn, None] = {}          # insertion order: oldest first
        self._per_source: collections.Counter = collections.Counter()
        self._authed: set[_Conn] = set()               # idle in the selector or busy in a handler
        self._returned: collections.deque = collections.deque()
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._accept_paused_until = 0.0
        self._warned: dict[str, float] = {}
        self.refused: collections.Counter = collections.Counter()  # why -> count, for logs and tests

    # -- lifecycle -----------------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and read heads until shutdown()."""
        self._stopped.clear()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_sweep = time.monotonic() + SWEEP_S
        try:
            while not self._stop:
                now = time.monotonic()
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._sel.register(self._listener, selectors.EVENT_READ, "listen")
                events = self._sel.select(max(0.0, min(poll_interval, next_sweep - now)))
                # heads first, then new connections: a burst from one host is read (and leaves
                # the pending count) before more of it is accepted against the per-source cap
                for key, _ in sorted(events, key=lambda e: e[0].data == "listen"):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._take_returned()
                    else:
                        try:
                            self._read_head(key.data)
                        except Exception:  # noqa: BLE001 - one connection must not stop the loop
                            log("server", f"dropped a connection:\n{traceback.format_exc()}", "error")
                            self._drop(key.data)
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + SWEEP_S
        finally:
            for key in list(self._sel.get_map().values()):
                self._sel.unregister(key.fileobj)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait for it (call from another thread)."""
        self._stop = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket and every connection."""
        with self._lock:
            conns = list(self._pending) + list(self._authed)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)  # a handler blocked on it wakes up
            except OSError:
                pass
            self._close(c)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def connection_counts(self) -> dict[str, int]:
        """Open connections: "pending" (no token shown yet) and "authed" (holding a slot)."""
        with self._lock:
            return {"pending": len(self._pending), "authed": len(self._authed)}

    # -- selector side -------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch: reads of heads must not starve behind a SYN flood
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log("server", f"accept failed: {e}", "debug")
                    return
                self._warn("fds", f"out of file descriptors ({e.strerror}): closing pending connections")
                if not self._evict_oldest("fd limit"):  # nothing to give up: stop accepting briefly
                    self._sel.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + 0.1
                return
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        src = addr[0]
        if self._per_source[src] >= self.pending_per_source:
            self.refused["source cap"] += 1
            self._warn("source", f"{src} has {self.pending_per_source} connections without a token "
                                 f"open: further ones are closed at once ({self.refused['source cap']} so far)")
            sock.close()
            return
        while len(self._pending) >= self.max_pending and self._evict_oldest("pending cap"):
            pass
        try:  # a connection reset before we got to it fails here: it is just gone
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        c = _Conn(sock, addr, time.monotonic() + self.head_timeout_s)
        with self._lock:
            self._pending[c] = None
            self._per_source[src] += 1
        self._sel.register(sock, selectors.EVENT_READ, c)

    def _evict_oldest(self, why: str) -> bool:
        with self._lock:
            oldest = next(iter(self._pending), None)
        if oldest is None:
            return False
        self.refused[why] += 1
        self._warn("evict", f"{why}: closed the oldest connection without a token "
                            f"({self.refused[why]} so far)")
        self._drop(oldest)
        return True

    def _read_head(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        if c.idle:  # a kept-alive connection's next request starts: its head has the usual time
            c.idle, c.deadline = False, time.monotonic() + self.head_timeout_s
        c.buf += data
        self._try_head(c)

    def _try_head(self, c: _Conn) -> None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if len(c.buf) > MAX_HEAD:
                self._refuse(c, text_reply(431, "request head too large", True))
            return
        head, rest = bytes(c.buf[:end + 4]), bytes(c.buf[end + 4:])
        c.buf = bytearray()
        req = parse_head(head, c.addr)
        if isinstance(req, Reply):
            self._refuse(c, req)
            return
        if not self.authorize(req):  # before a slot, a thread or a byte of the body
            self.refused["no token"] += 1
            self._refuse(c, text_reply(401, "unauthorized", True))
            return
        with self._lock:
            if not c.authed and len(self._authed) < self.max_connections:
                del self._pending[c]
                self._release_source(c)
                self._authed.add(c)
                c.authed = True
        if not c.authed:
            self.refused["busy"] += 1
            self._warn("busy", f"all {self.max_connections} connection slots busy: answered 503 "
                               f"({self.refused['busy']} so far; robustness.max_connections raises the limit)")
            self._refuse(c, Reply(503, b'{"message": "server busy: too many connections"}', close=True,
                                  headers={"Retry-After": "1"}))
            return
        self._sel.unregister(c.sock)
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(self.read_timeout_s)
            threading.Thread(target=self._serve_request, args=(c, req, rest), daemon=True,
                             name="http-req").start()
        except (RuntimeError, OSError) as e:  # no thread (or a dead socket): same as a full pool
            self._warn("thread", f"cannot serve a request: {e}")
            self._close(c)

    def _take_returned(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._returned:
            c = self._returned.popleft()
            try:
                c.sock.setblocking(False)
                self._sel.register(c.sock, selectors.EVENT_READ, c)
            except (OSError, ValueError):
                self._close(c)
                continue
            if c.buf:  # a pipelined request arrived with the last body
                self._try_head(c)

    def _sweep(self) -> None:
        now = time.monotonic()
        expired = [key.data for key in self._sel.get_map().values()
                   if isinstance(key.data, _Conn) and key.data.deadline <= now]
        for c in expired:
            if not c.idle:
                self.refused["head timeout"] += 1
            self._drop(c)

    def _refuse(self, c: _Conn, reply: Reply) -> None:
        """An error reply from the selector thread (never blocks), then close."""
        try:
            c.sock.send(reply_head(reply, True) + reply.body)
            # Closing with unread bytes sends a RST that can destroy the reply before the client
            # reads it: take what has arrived already (never wait for more).
            for _ in range(16):
                if not c.sock.recv(1 << 16, socket.MSG_DONTWAIT):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log("server", f"could not answer {c.addr[0]} with {reply.code}: {e}", "debug")
        self._drop(c)

    def _drop(self, c: _Conn) -> None:
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self._close(c)

    # -- handler side --------------------------------------------------------------------------
    def _serve_request(self, c: _Conn, req: Request, rest: bytes) -> None:
        try:
            leftover = self._one_request(c, req, rest)
        except OSError as e:  # the peer's doing: a reset, a timeout mid-reply
            log("server", f"connection from {c.addr[0]}: {type(e).__name__}: {e}")
            leftover = None
        except Exception:  # noqa: BLE001 - a bug here must not leak the slot or kill the server
            log("server", f"error serving {req.method} {req.target[:80]}:\n{traceback.format_exc()}", "error")
            leftover = None
        if leftover is None:
            self._linger_close(c)
            return
        c.buf, c.idle = bytearray(leftover), not leftover
        c.deadline = time.monotonic() + (self.head_timeout_s if leftover else self.read_timeout_s)
        self._returned.append(c)
        self._wake()

    def _one_request(self, c: _Conn, req: Request, rest: bytes) -> bytes | None:
        """Serve one request; the bytes after it when the connection stays open, else None."""
        length = body_length(req, self.max_body)
        if isinstance(length, Reply):
            self._send(c, length, True)
            return None
        body = bytearray(length)
        got = min(length, len(rest))
        body[:got] = rest[:got]
        leftover = rest[got:]
        allowed = self.body_base_s + length / BODY_MIN_RATE
        deadline = time.monotonic() + allowed
        view = memoryview(body)
        while got < length:
            left = deadline - time.monotonic()
            if left <= 0:
                self._send(c, text_reply(408, f"body of {length} bytes not received within {allowed:.3g}s",
                                         True), True)
                return None
            c.sock.settimeout(left)
            try:
                n = c.sock.recv_into(view[got:], min(1 << 20, length - got))
            except TimeoutError:
                continue  # the deadline check above answers
            if n == 0:  # the client hung up mid-body: nobody to answer
                return None
            got += n
        c.sock.settimeout(self.read_timeout_s)
        try:
            reply = self.handle(req, body)
        except Exception:  # noqa: BLE001 - a bug in the app: answer, log it, keep serving
            log("server", f"error serving {req.method} {req.target[:80]}:\n{traceback.format_exc()}", "error")
            reply = text_reply(500, "internal error (see the server log)", True)
        close = reply.close or wants_close(req)
        self._send(c, reply, close)
        return None if close else leftover

    def _send(self, c: _Conn, reply: Reply, close: bool) -> None:
        head = reply_head(reply, close)
        if len(reply.body) < (1 << 16):  # one write: no Nagle/delayed-ACK stall on keep-alive
            c.sock.sendall(head + reply.body)
        else:
            c.sock.sendall(head)
            c.sock.sendall(reply.body)

    def _linger_close(self, c: _Conn) -> None:
        """Close after a reply, reading (and dropping) what the client still sends for a moment:
        closing with unread bytes sends a RST that can destroy the reply before it is read (a 400
        for a bad Content-Length is sent while the body is still on its way)."""
        try:
            c.sock.shutdown(socket.SHUT_WR)
            end, budget = time.monotonic() + LINGER_S, LINGER_BYTES
            while budget > 0 and (left := end - time.monotonic()) > 0:
                c.sock.settimeout(left)
                chunk = c.sock.recv(1 << 16)
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass  # reset, timed out or already gone: closing is all that is left
        self._close(c)

    # -- shared --------------------------------------------------------------------------------
    def _close(self, c: _Conn) -> None:
        with self._lock:
            if c in self._pending:
                del self._pending[c]
                self._release_source(c)
            self._authed.discard(c)
        try:
            c.sock.close()
        except OSError:
            pass

    def _release_source(self, c: _Conn) -> None:
        self._per_source[c.addr[0]] -= 1
        if self._per_source[c.addr[0]] <= 0:
            del self._per_source[c.addr[0]]

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # closed (shutting down) or the pipe is full: a wake-up is pending anyway

    def _warn(self, kind: str, message: str) -> None:
        """Log a warning at most every 10 s per kind: a storm of strangers must not flood server.log."""
        now = time.monotonic()
        if now - self._warned.get(kind, -1e9) >= 10.0:
            self._warned[kind] = now
            log("server", message, "warning")
