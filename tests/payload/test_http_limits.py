"""The payload's HTTP server against a token holder that misbehaves at the HTTP level.

Raw sockets on 127.0.0.0/8: bad Content-Length values are answered without reading the body, heads
and bodies have total deadlines, the token is checked on the head before a slot is taken,
token-less connections are capped per source and in total, slots are bounded and the listen
backlog fits the fleet.
"""
import importlib.util
import os
import socket
import threading
import time

import numpy as np
import pytest
from conftest import PAYLOAD_DIR
from fedtf.coordinator import Coordinator
from fedtf.endpoints import fleet_defaults, make_http_server
from fedtf.transport import Connection

from tests.waiting import wait_until

SHAPES = [(4, 3), (3,), (3, 2), (2,)]
TOKEN = b"s3cret-token"
AUTH = "Authorization: Bearer " + TOKEN.decode()


def _coord(clients=3):
    c = Coordinator(TOKEN, SHAPES, [10] * clients, ())
    c.open_round(1, [0, 1, 2], np.zeros(c.size, np.float32), {}, {})
    return c


@pytest.fixture
def serve():
    """Start a server on 127.0.0.1 with the given limits; returns (coordinator, server, port)."""
    servers = []

    def start(coord=None, **kw):
        coord = coord or _coord()
        srv = make_http_server(coord, "127.0.0.1", 0, **kw)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return coord, srv, srv.server_address[1]
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _raw(port, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[bytes, socket.socket]:
    """Send `head` (+ body) and read the reply until the server closes or `wait` passes.
    The socket stays open on our side: a server that waits for more body never sees EOF."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(head.encode() + body)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        pass  # the reply (if any) is in `got`; the caller asserts on it
    return got, s


def _post(length_lines: str, path="/update?seq=1&id=0") -> str:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{length_lines}\r\n"


def test_negative_content_length_is_400_without_reading_the_body(serve, capfd):
    coord, _, port = serve()
    t0 = time.time()
    # 1 MB follows, and the socket stays open: reading "until EOF" would hang here
    got, s = _raw(port, _post("Content-Length: -1\r\n"), b"x" * (1 << 20))
    s.close()
    assert got.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in got, got[:200]
    assert b"Content-Length" in got.split(b"\r\n\r\n", 1)[1]  # the message says what was wrong
    assert time.time() - t0 < 4.0
    assert coord.state.updates == {} and "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("lines", [
    "Content-Length: abc\r\n",
    "Content-Length: 1e3\r\n",
    "Content-Length: +5\r\n",
    "Content-Length: 0x10\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Content-Length: 99999999999999999999999999\r\n",
])
def test_malformed_content_length_is_a_clean_400(serve, capfd, lines):
    _, _, port = serve()
    got, s = _raw(port, _post(lines), b"hello")
    s.close()
    assert got.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in got.split(b"\r\n\r\n", 1)[1], got[:300]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ValueError" not in err


@pytest.mark.parametrize("lines", ["", "Transfer-Encoding: chunked\r\n"])
def test_missing_content_length_is_411(serve, lines):
    coord, _, port = serve()
    got, s = _raw(port, _post(lines), b"5\r\nhello\r\n0\r\n\r\n" if lines else b"")
    s.close()
    assert got.startswith(b"HTTP/1.1 411 "), got[:200]
    assert coord.state.updates == {} and coord.state.dropped == {}


def test_oversize_content_length_is_413_without_reading(serve):
    coord, _, port = serve()
    got, s = _raw(port, _post(f"Content-Length: {coord.max_body + 1}\r\n"))
    s.close()
    assert got.startswith(b"HTTP/1.1 413 ")


def test_valid_requests_still_work_after_the_checks(serve):
    _, _, port = serve()
    got, s = _raw(port, _post("Content-Length: 0\r\nConnection: close\r\n", "/drop?seq=1&id=1"))
    s.close()
    assert got.startswith(b"HTTP/1.1 200 ")


def test_silent_and_stalled_connections_are_closed(serve):
    _, _, port = serve(head_timeout_s=0.5, body_base_s=0.5)
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)       # sends nothing
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(b"POST /update?seq=1&id=0 HTTP/1.1\r\nHost")                 # stalls mid-headers
    t0 = time.time()
    assert silent.recv(100) == b"" and half.recv(100) == b""                 # server hung up
    assert time.time() - t0 < 3.0
    got, s = _raw(port, _post("Content-Length: 100\r\n"), b"x" * 10)         # stalls mid-body
    assert got.startswith(b"HTTP/1.1 408 ")
    for x in (silent, half, s):
        x.close()


def _trickle(sock: socket.socket, data: bytes, every: float, stop: float) -> bytes:
    """Send `data` one byte per `every` seconds until the server hangs up (or `stop` passes);
    returns what the server sent back."""
    got = b""
    sock.settimeout(every)
    for b in data:
        try:
            sock.sendall(bytes([b]))
            chunk = sock.recv(4096)
            if not chunk:
                return got
            got += chunk
        except TimeoutError:
            if time.time() > stop:
                return got
        except OSError:  # reset by the server
            return got
    return got


def test_a_head_that_trickles_in_is_cut_off_at_the_total_deadline(serve):
    """One byte every 0.1 s: each read is quick, so a per-read timeout never fires (that let 70
    such connections hold every slot); the head's total deadline does."""
    _, _, port = serve(head_timeout_s=0.8)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.time()
    _trickle(s, (f"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * 200}\r\n{AUTH}\r\n\r\n").encode(),
             0.1, t0 + 10)
    assert 0.7 < time.time() - t0 < 3.0
    s.close()


def test_a_body_that_trickles_in_is_cut_off_at_the_total_deadline(serve):
    _, _, port = serve(body_base_s=0.8)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(_post("Content-Length: 1000\r\n").encode())
    t0 = time.time()
    got = _trickle(s, b"x" * 1000, 0.1, t0 + 10)
    assert got.startswith(b"HTTP/1.1 408 ") and 0.7 < time.time() - t0 < 3.0, got[:200]
    s.close()


def test_no_token_is_a_401_before_the_body(serve):
    """A token-less POST announcing 1 MB gets its 401 at once: the body is never waited for."""
    coord, srv, port = serve()
    head = f"POST /update?seq=1&id=0 HTTP/1.1\r\nHost: t\r\nContent-Length: {1 << 20}\r\n\r\n"
    t0 = time.time()
    got, s = _raw(port, head)
    s.close()
    assert got.startswith(b"HTTP/1.1 401 ") and time.time() - t0 < 2.0, got[:200]
    assert srv.connection_counts()["authed"] == 0 and coord.state.dropped == {}


def _slow_strangers(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /task?after=0 HTTP/1.1\r\n")  # ... and nothing more, for now
        socks.append(s)
    return socks


def _hung_up(s: socket.socket) -> bool:
    """True when the server closed `s` (a FIN, or a RST because our request bytes were unread)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_token_less_connections_take_no_slot(serve):
    """Every slot of the old server went to whoever connected first, token or not."""
    _, srv, port = serve(max_connections=2)
    strangers = _slow_strangers(port, 20)
    wait_until(lambda: srv.connection_counts()["pending"] == 20, 5, what="20 pending connections")
    c = Connection("127.0.0.1", port, TOKEN, timeout=5)
    t0 = time.time()
    assert c.request("GET", "/health")[0] == 200 and time.time() - t0 < 1.0
    assert srv.connection_counts() == {"pending": 20, "authed": 1}
    for s in strangers:
        s.close()


def test_connections_without_a_token_are_capped_per_source(serve):
    _, srv, port = serve(pending_per_source=5, head_timeout_s=30)
    kept = _slow_strangers(port, 5, "127.0.0.2")
    wait_until(lambda: srv.connection_counts()["pending"] == 5, 5, what="5 pending connections")
    t0 = time.time()
    over = _slow_strangers(port, 3, "127.0.0.2")
    for s in over:                      # closed at once, not after the head deadline
        assert _hung_up(s)
    assert time.time() - t0 < 2.0
    assert srv.refused["source cap"] == 3 and srv.connection_counts()["pending"] == 5
    other = _slow_strangers(port, 1, "127.0.0.3")           # another source is not affected
    wait_until(lambda: srv.connection_counts()["pending"] == 6, 5, what="the other source's connection")
    assert Connection("127.0.0.1", port, TOKEN, timeout=5).request("GET", "/health")[0] == 200
    for s in kept + over + other:
        s.close()


def test_when_the_pending_total_is_full_the_oldest_goes(serve):
    _, srv, port = serve(max_pending=4)
    first = _slow_strangers(port, 1, "127.0.0.2")
    wait_until(lambda: srv.connection_counts()["pending"] == 1, 5, what="the first connection")
    rest = [s for i in range(3, 7) for s in _slow_strangers(port, 1, f"127.0.0.{i}")]
    assert _hung_up(first[0])           # the oldest made room for the newest
    wait_until(lambda: srv.connection_counts()["pending"] == 4, 5, what="4 pending connections")
    assert srv.refused["pending cap"] == 1
    for s in first + rest:
        s.close()


def test_read_timeout_has_a_default(serve):
    _, srv, _ = serve()
    assert 30 <= srv.read_timeout_s <= 60 and srv.head_timeout_s <= 5


def test_slots_are_bounded(serve):
    """A token holder's kept-alive connection holds a slot until it closes; beyond
    max_connections of them, a new one gets a 503 (clients back off and retry)."""
    _, srv, port = serve(max_connections=2)
    held = [Connection("127.0.0.1", port, TOKEN, timeout=5) for _ in range(2)]
    for h in held:
        assert h.request("GET", "/health")[0] == 200
    got, s = _raw(port, f"GET /health HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n\r\n")
    s.close()
    assert got.startswith(b"HTTP/1.1 503 ") and b"busy" in got, got[:200]
    held[0].close()
    wait_until(lambda: srv.connection_counts()["authed"] == 1, 5, what="the slot to be freed")
    assert Connection("127.0.0.1", port, TOKEN, timeout=5).request("GET", "/health")[0] == 200
    held[1].close()


def test_client_retries_a_busy_server(serve):
    """client.py treats 503 like an unreachable server: it backs off and tries again."""
    spec = importlib.util.spec_from_file_location("fedtf_client_script", os.path.join(PAYLOAD_DIR, "client.py"))
    client_mod = importlib.util.module_from_spec(spec)  # TensorFlow is imported only in Client.__init__
    spec.loader.exec_module(client_mod)

    _, _, port = serve(max_connections=1)
    hog = Connection("127.0.0.1", port, TOKEN, timeout=5)
    assert hog.request("GET", "/health")[0] == 200   # kept alive: holds the only slot
    threading.Timer(0.8, hog.close).start()
    cl = client_mod.Client.__new__(client_mod.Client)  # the network half only
    cl.host, cl.port, cl.token, cl.unreachable_s = "127.0.0.1", port, TOKEN, 10.0
    cl._local = threading.local()
    cl.args = type("A", (), {"run_dir": "/nonexistent"})()
    t0 = time.time()
    code, _ = cl.request("GET", "/health", timeout=5)
    assert code == 200 and 0.5 < time.time() - t0 < 8


def test_listen_backlog_fits_the_fleet(serve):
    """A burst of connections while the server is not accepting: with the stdlib's backlog of 5
    the sixth connect already sits in SYN retries; a fleet-sized backlog queues them all."""
    coord = Coordinator(TOKEN, SHAPES, [10] * 150, ())
    srv = make_http_server(coord, "127.0.0.1", 0)  # bound and listening, not accepting yet
    try:
        assert srv.request_queue_size == fleet_defaults(150)[1] == 300
        port = srv.server_address[1]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=0.5) for _ in range(250)]
        for s in socks:
            s.close()
    finally:
        srv.server_close()
    assert fleet_defaults(3) == (64, 128) and fleet_defaults(1000) == (4096, 2000)


def test_connection_recovers_when_the_server_closed_an_idle_keep_alive(serve):
    """Upload threads sit idle while their clients train; the server's read timeout closes those
    connections, and the next upload must not fail because of it."""
    _, _, port = serve(read_timeout_s=0.3)
    c = Connection("127.0.0.1", port, TOKEN, timeout=5)
    assert c.request("GET", "/health")[0] == 200
    time.sleep(0.8)  # the server has hung up on the idle connection by now
    assert c.request("POST", "/drop?seq=1&id=2", b"")[0] == 200


def test_a_handler_bug_is_a_500_and_the_server_keeps_serving():
    """An exception in the app answers 500 and frees the slot; the next request is served."""
    from fedtf.httpmsg import text_reply
    from fedtf.httpserve import GuardedHTTPServer

    def handle(req, body):
        if req.target == "/boom":
            raise KeyError("a bug")
        return text_reply(200, "ok")

    srv = GuardedHTTPServer(("127.0.0.1", 0), lambda req: True, handle, 100, max_connections=1,
                            backlog=8, read_timeout_s=5)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = srv.server_address[1]
        assert Connection("127.0.0.1", port, TOKEN, timeout=5).request("GET", "/boom")[0] == 500
        wait_until(lambda: srv.connection_counts()["authed"] == 0, 5, what="the slot to be freed")
        assert Connection("127.0.0.1", port, TOKEN, timeout=5).request("GET", "/fine")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_every_request_on_a_kept_alive_connection_needs_the_token(serve):
    """A connection that showed the token once holds a slot, but each further request on it is
    checked again: a stranger cannot ride on it."""
    _, srv, port = serve()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /health HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n\r\n".encode())
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first, first
    wait_until(lambda: srv.connection_counts() == {"pending": 0, "authed": 1}, 5, what="the slot held")
    s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 401 ")
    assert _hung_up(s)
    wait_until(lambda: srv.connection_counts()["authed"] == 0, 5, what="the slot to be freed")
    s.close()
