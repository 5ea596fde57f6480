"""The payload's HTTP server against a token holder that misbehaves at the HTTP level.

Raw sockets on 127.0.0.1: bad Content-Length values are answered without reading the body, silent
connections time out, handler threads are bounded and the listen backlog fits the fleet.
"""
import importlib.util
import os
import socket
import threading
import time

import numpy as np
import pytest
from conftest import PAYLOAD_DIR
from fedtf.coordinator import Coordinator, fleet_defaults, make_http_server
from fedtf.transport import Connection

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


def test_silent_connections_are_closed_after_the_read_timeout(serve):
    _, _, port = serve(read_timeout_s=0.5)
    base = threading.active_count()
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
    end = time.time() + 3
    while threading.active_count() > base and time.time() < end:
        time.sleep(0.05)
    assert threading.active_count() <= base  # the handler threads are gone


def test_read_timeout_has_a_default(serve):
    _, srv, _ = serve()
    assert 30 <= srv.RequestHandlerClass.timeout <= 60


def test_handler_threads_are_bounded(serve):
    _, _, port = serve(max_connections=2, slot_wait_s=0.2)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    time.sleep(0.3)  # both accepted: every slot is held by a connection that says nothing
    got, s = _raw(port, f"GET /health HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n\r\n")
    s.close()
    assert got.startswith(b"HTTP/1.1 503 ") and b"busy" in got, got[:200]
    idle[0].close()
    c = Connection("127.0.0.1", port, TOKEN, timeout=5)
    end = time.time() + 3
    while True:
        try:
            code = c.request("GET", "/health")[0]
        except ConnectionResetError:  # refused while the slot was still being freed
            code = 503
        if code != 503 or time.time() > end:
            break
        time.sleep(0.05)
    assert code == 200
    idle[1].close()


def test_client_retries_a_busy_server(serve):
    """client.py treats 503 like an unreachable server: it backs off and tries again."""
    spec = importlib.util.spec_from_file_location("fedtf_client_script", os.path.join(PAYLOAD_DIR, "client.py"))
    client_mod = importlib.util.module_from_spec(spec)  # TensorFlow is imported only in Client.__init__
    spec.loader.exec_module(client_mod)

    _, _, port = serve(max_connections=1, slot_wait_s=0.1)
    hog = socket.create_connection(("127.0.0.1", port), timeout=5)
    time.sleep(0.2)
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
