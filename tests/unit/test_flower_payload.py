"""The flower payload's host-side pieces that need no Flower: config validation, the log-to-metrics
translation, the Fleet gateway's filter, the run CA, and shipping an app folder."""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.payload import load_manifest, repo_payloads_dir
from fedctl.shipping import config_for_host, find_files
from fedctl.state import HostRecord
from tests.waiting import wait_until

PAYLOAD = repo_payloads_dir() / "flower"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower-numpy"


def _load(name: str):
    """A payload file as a module under a name no other test uses (``client`` is a common name)."""
    spec = importlib.util.spec_from_file_location(f"_flower_payload_{name}", PAYLOAD / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    before = list(sys.path)
    sys.path.insert(0, str(PAYLOAD))  # the wrappers import their siblings
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = before
    return module


@pytest.fixture(scope="module")
def mods():
    return {n: _load(n) for n in ("flower_config", "flower_progress", "gateway", "flower_common", "flower_trust")}


def test_manifest_loads_and_lists_the_wrappers():
    m = load_manifest(PAYLOAD)
    assert m.name == "flower" and m.config_files == ("app",)
    assert {f.rel_path for f in m.files()} >= {"server.py", "client.py", "gateway.py", "payload.yaml"}


def test_validator(mods, tmp_path):
    v = mods["flower_config"].validate
    out = v({"app": str(EXAMPLE)}, core={"clients": 4, "rounds": 3})
    assert out["flower"]["insecure"] is False and out["flower"]["connect_timeout_s"] == 60.0
    with pytest.raises(ValueError, match="app: is required"):
        v({}, core={"clients": 2})
    (tmp_path / "notflower").mkdir()
    (tmp_path / "notflower" / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(ValueError, match=r"no \[tool.flwr.app\]"):
        v({"app": "notflower"}, base_dir=str(tmp_path))
    with pytest.raises(ValueError, match="flower.insecur: unknown key"):
        v({"app": str(EXAMPLE), "flower": {"insecur": True}})
    with pytest.raises(ValueError, match="comes from fedctl's `rounds`"):
        v({"app": str(EXAMPLE), "flower": {"run_config": {"num-server-rounds": 5}}})
    with pytest.raises(ValueError, match="string, number or bool"):
        v({"app": str(EXAMPLE), "flower": {"run_config": {"lr": [1, 2]}}})
    # a path that is not here is left for the hosts (fedctl notes it when shipping)
    assert v({"app": "/srv/apps/mine"})["app"] == "/srv/apps/mine"


LOG = """\x1b[92mINFO \x1b[0m:      Starting FedAvg strategy:
\x1b[92mINFO \x1b[0m:      [ROUND 1/2]
\x1b[92mINFO \x1b[0m:      configure_train: Sampled 4 nodes (out of 5)
\x1b[92mINFO \x1b[0m:      aggregate_train: Received 3 results and 1 failures
\x1b[92mINFO \x1b[0m:      \t> Received error in reply from node 1234: ClientApp crashed
\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'train_loss': 0.6, 'train_accuracy': 0.8}
\x1b[92mINFO \x1b[0m:      configure_evaluate: Sampled 4 nodes (out of 5)
\x1b[92mINFO \x1b[0m:      aggregate_evaluate: Received 4 results and 0 failures
\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'eval_loss': 0.7, 'eval_accuracy': 0.75}
\x1b[92mINFO \x1b[0m:      [ROUND 2/2]
\x1b[92mINFO \x1b[0m:      configure_train: Sampled 5 nodes (out of 5)
\x1b[92mINFO \x1b[0m:      aggregate_train: Received 5 results and 0 failures
\x1b[92mINFO \x1b[0m:      \t└──> Aggregated MetricRecord: {'train_loss': nan, 'train_accuracy': 0.9}
\x1b[92mINFO \x1b[0m:      Global evaluation
\x1b[92mINFO \x1b[0m:      \t└──> MetricRecord: {'accuracy': 0.91, 'loss': 0.3}
\x1b[92mINFO \x1b[0m:      Strategy execution finished in 12.00s
"""


def test_round_tracker_translates_flowers_strategy_log(mods):
    lines: list[dict] = []
    clock = iter(range(100, 200))
    t = mods["flower_progress"].RoundTracker(lines.append, clock=lambda: float(next(clock)))
    for raw in LOG.splitlines():
        t.feed(raw)
    assert [ln["round"] for ln in lines] == [1, 2] and t.finished
    r1, r2 = lines
    assert (r1["clients_sampled"], r1["clients_available"], r1["clients_reported"], r1["client_failures"]) == (4, 5, 3, 1)
    assert r1["accuracy"] == 0.75 and r1["loss"] == 0.7  # the clients' evaluation wins over training
    assert r1["errors"] == [{"node": "1234", "reason": "ClientApp crashed"}]
    assert r1["start"] < r1["end"] <= r2["start"]
    assert r2["accuracy"] == 0.91 and r2["server_accuracy"] == 0.91  # the server's evaluation wins
    assert "train_loss" not in r2  # NaN: absent, never written as NaN
    json.dumps(lines, allow_nan=False)


def test_gateway_forwards_only_the_fleet_api(mods):
    seen: list[str] = []

    class Upstream(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            out = b"echo:" + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    up = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    gw = mods["gateway"].Gateway("127.0.0.1", 0, up.server_address[1], None, lambda: {"phase": "training"})
    port = gw.start()
    try:
        base = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(base + "/v1/fleet/pull-messages", data=b"abc", method="POST")
        assert urllib.request.urlopen(req, timeout=5).read() == b"echo:abc"
        for path in ("/v1/control/start-run", "/v1/runtime/acquire-task", "/v1/fleet/../control/stop-run"):
            req = urllib.request.Request(base + path, data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 403
        assert json.loads(urllib.request.urlopen(base + "/fedctl/state", timeout=5).read()) == {"phase": "training"}
        assert seen == ["/v1/fleet/pull-messages"]
    finally:
        gw.stop()
        up.shutdown()


def _tls_server(cert: bytes, key: bytes, tmp_path: Path, accepts: int):
    """A TLS listener with ``cert`` on 127.0.0.1 that completes ``accepts`` handshakes; its port."""
    (tmp_path / "s.pem").write_bytes(cert)
    (tmp_path / "s.key").write_bytes(key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        for _ in range(accepts):
            conn, _ = lsock.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass
        lsock.close()

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def test_the_run_ca_is_random_per_run_and_signs_the_server(mods, tmp_path):
    """Finding: the CA key was derived from the run token, which every client host holds. Now two
    runs with the same token get different CAs, and only the CA's own certificate verifies."""
    from cryptography import x509

    c = mods["flower_common"]
    trusts = []
    for k in (1, 2):
        run_dir = tmp_path / f"run{k}"
        run_dir.mkdir()
        t = mods["flower_trust"].RunTrust(str(run_dir), b"the same token", 2, lambda p, n: "1")
        t.setup([])
        trusts.append(t)
    a, b = (x509.load_pem_x509_certificate(t.ca_pem) for t in trusts)
    assert a.public_key().public_numbers() != b.public_key().public_numbers()
    assert (tmp_path / "run1" / "flower-ca.pem").read_bytes() == trusts[0].ca_pem  # for a client on this host
    assert oct((tmp_path / "run1" / "flower" / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    cert, key = c.server_certificate_pem(trusts[0].ca_pem, trusts[0].ca_key, ["127.0.0.1", "localhost"])
    port = _tls_server(cert, key, tmp_path, accepts=2)
    client_mod = _client_module()
    (tmp_path / "ca1.pem").write_bytes(trusts[0].ca_pem)
    (tmp_path / "ca2.pem").write_bytes(trusts[1].ca_pem)
    ok_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca1.pem"))
    assert client_mod.preflight("127.0.0.1", port, ok_ctx, 5) is None
    bad = client_mod.preflight("127.0.0.1", port, ssl.create_default_context(cafile=str(tmp_path / "ca2.pem")), 5)
    assert bad is not None and "TLS" in bad
    wait_until(lambda: client_mod.preflight("127.0.0.1", port, None, 2) is not None, 10, what="the listener to close")
    assert "refused" in client_mod.preflight("127.0.0.1", port, None, 2)


def _hello(c, token: bytes, dial: str, nodes: dict, nonce: str = "n" * 32) -> dict:
    nodes_json = json.dumps(nodes, sort_keys=True)
    return {"nonce": nonce, "dial": dial, "nodes": nodes,
            "mac": c.mac(token, nonce.encode(), dial.encode(), nodes_json.encode())}


def test_the_certificate_names_the_dial_address_and_what_a_hello_adds(mods, tmp_path):
    """Finding: the certificate named only the host's own addresses, so clients dialing a NAT'd or
    public address failed. --dial (fedctl's server_address) and each hello's dial address are named."""
    c = mods["flower_common"]
    t = mods["flower_trust"].RunTrust(str(tmp_path), b"tok", 2, lambda p, n: "7")
    t.setup(["203.0.113.7"])
    names = c.certificate_names((tmp_path / "flower" / "tls" / "server.pem").read_bytes())
    assert "203.0.113.7" in names and "127.0.0.1" in names
    assert "198.51.100.9" not in names
    priv, pub = c.new_node_key()
    code, answer = t.hello(_hello(c, b"tok", "198.51.100.9", {"0": pub.decode()}))
    assert code == 200, answer
    assert c.mac_ok(b"tok", answer["mac"], b"n" * 32, answer["ca"].encode())
    assert answer["ca"].encode() == t.ca_pem and "PRIVATE" not in answer["ca"]
    assert "198.51.100.9" in c.certificate_names((tmp_path / "flower" / "tls" / "server.pem").read_bytes())
    # a restarted server (resume) keeps its CA and the names clients added
    t2 = mods["flower_trust"].RunTrust(str(tmp_path), b"tok", 2, lambda p, n: "7")
    t2.setup([])
    assert t2.ca_pem == t.ca_pem and "198.51.100.9" in t2.names and t2.nodes == {"0": pub.decode().strip()}


def test_a_hello_without_the_token_registers_nothing_and_gets_no_ca(mods, tmp_path):
    c = mods["flower_common"]
    registered: list[str] = []
    t = mods["flower_trust"].RunTrust(str(tmp_path), b"tok", 2, lambda p, n: registered.append(n) or "1")
    t.setup([])
    _, pub = c.new_node_key()
    code, answer = t.hello(_hello(c, b"not the token", "203.0.113.1", {"0": pub.decode()}))
    assert code == 403 and "ca" not in answer
    assert registered == [] and "203.0.113.1" not in t.names
    # with the token: a partition outside the run, or a second key for a partition, is refused
    assert t.hello(_hello(c, b"tok", "127.0.0.1", {"5": pub.decode()}))[0] == 400
    assert t.hello(_hello(c, b"tok", "127.0.0.1", {"0": pub.decode()}))[0] == 200
    _, other = c.new_node_key()
    assert t.hello(_hello(c, b"tok", "127.0.0.1", {"0": other.decode()}))[0] == 409
    assert registered == ["partition-0"]


def _half_open_tls(port: int, source: str) -> socket.socket:
    """A connection from ``source`` that sends the first bytes of a TLS ClientHello and stops."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(bytes.fromhex("16030100c8010000c40303"))
    return s


def _closed(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_gateway_closes_half_sent_tls_within_the_deadline_and_caps_connections(mods, tmp_path):
    """Finding: no header deadline and no connection cap. Strangers that stop mid-handshake are
    closed after head_deadline_s, one source cannot hold more than max_per_source, and a client
    that speaks gets its answer while they are there."""
    c = mods["flower_common"]
    ca, ca_key = c.new_ca()
    cert, key = c.server_certificate_pem(ca, ca_key, ["127.0.0.1"])
    (tmp_path / "s.pem").write_bytes(cert)
    (tmp_path / "s.key").write_bytes(key)
    (tmp_path / "ca.pem").write_bytes(ca)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    gw = mods["gateway"].Gateway("127.0.0.1", 0, 1, ctx, lambda: {"phase": "training"},
                                 head_deadline_s=1.5, idle_s=2.0, max_connections=40, max_per_source=30)
    port = gw.start()
    strangers: list[socket.socket] = []
    try:
        for _ in range(60):
            strangers.append(_half_open_tls(port, "127.0.0.77"))
        wait_until(lambda: sum(_closed(s) for s in strangers) >= 30, 5, what="the per-source cap to close 30")
        assert gw.open_connections() <= 30
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        t0 = time.monotonic()
        assert json.loads(urllib.request.urlopen(f"https://127.0.0.1:{port}/fedctl/state", context=client,
                                                 timeout=5).read()) == {"phase": "training"}
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        wait_until(lambda: all(_closed(s) for s in strangers), 5, what="every half-sent connection to be closed")
        assert time.monotonic() - t0 < 2.5  # the deadline (1.5 s from each accept) and not the idle time
        wait_until(lambda: gw.open_connections() == 0, 5, what="the gateway to forget them")
        # a connection that completed a request and then says nothing is closed after idle_s
        idle = client.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        idle.sendall(b"GET /fedctl/state HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"training" in idle.recv(4096)
        t0 = time.monotonic()
        wait_until(lambda: gw.open_connections() == 0, 6, what="the idle connection to be closed")
        assert 1.5 < time.monotonic() - t0 < 4.0
        idle.close()
    finally:
        for s in strangers:
            s.close()
        gw.stop()


def test_gateway_makes_room_by_closing_the_oldest_silent_connection(mods):
    """At max_connections, a new connection closes the oldest that has not sent a request yet."""
    gw = mods["gateway"].Gateway("127.0.0.1", 0, 1, None, lambda: {"phase": "training"},
                                 head_deadline_s=30, max_connections=5, max_per_source=100)
    port = gw.start()
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        wait_until(lambda: gw.open_connections() == 5, 5, what="5 connections")
        t0 = time.monotonic()
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/fedctl/state", timeout=5).read())
        assert time.monotonic() - t0 < 1.0
        wait_until(lambda: _closed(silent[0]), 2, what="the oldest to be closed")
        assert not any(_closed(s) for s in silent[2:])
    finally:
        for s in silent:
            s.close()
        gw.stop()


def _client_module():
    return _load("client")


def test_an_app_folder_ships_as_a_tree(tmp_path):
    app = tmp_path / "app"
    (app / "pkg" / "__pycache__").mkdir(parents=True)
    (app / "pyproject.toml").write_text("[tool.flwr.app]\n")
    (app / "pkg" / "m.py").write_text("x = 1\n")
    (app / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    files, notes = find_files({"app": "app"}, ["app"], tmp_path)
    assert notes == [] and len(files) == 1 and files[0].is_dir
    assert [rel for rel, _, _ in files[0].members] == ["pkg/m.py", "pyproject.toml"]
    remote = HostRecord(info=HostInfo(name="h", address="10.0.0.2"), workdir="/w")
    assert config_for_host({"app": "app"}, files, remote)["app"] == f"/w/data/{files[0].sha256[:16]}/app"
    before = files[0].sha256
    (app / "pkg" / "m.py").write_text("x = 2\n")
    assert find_files({"app": "app"}, ["app"], tmp_path)[0][0].sha256 != before  # content changes the hash


def _client(mods, tmp_path: Path, port: int, token: bytes):
    """A client wrapper (client.py's Client) for partition 0 of 1 that dials 127.0.0.1:port."""
    import argparse

    (tmp_path / "config.yaml").write_text(json.dumps({"clients": 1, "app": "x", "flower": {}}))
    (tmp_path / "token").write_bytes(token)
    args = argparse.Namespace(config=str(tmp_path / "config.yaml"), run_dir=str(tmp_path),
                              token_file=str(tmp_path / "token"), server=f"127.0.0.1:{port}", client_ids="0",
                              process="0")
    return _client_module().Client(args)


def test_a_client_takes_the_ca_only_from_an_answer_under_the_run_token(mods, tmp_path, monkeypatch):
    """A server without the run token (a stranger on the address) cannot hand a client its own CA;
    the run's server can, and the client then trusts exactly that CA."""
    monkeypatch.syspath_prepend(str(PAYLOAD))  # the wrapper reads its defaults from flower_config
    c = mods["flower_common"]
    ca, ca_key = c.new_ca()
    cert, key = c.server_certificate_pem(ca, ca_key, ["127.0.0.1"])
    (tmp_path / "s.pem").write_bytes(cert)
    (tmp_path / "s.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    seen: list[dict] = []
    for d in ("c1", "c2"):
        (tmp_path / d).mkdir()

    def forged(data: dict):
        seen.append(data)
        return 200, {"ca": ca.decode(), "mac": c.mac(b"a guessed token", data["nonce"].encode(), ca)}

    gw = mods["gateway"].Gateway("127.0.0.1", 0, 1, ctx, lambda: {"phase": "waiting"}, hello=forged)
    port = gw.start()
    try:
        client = _client(mods, tmp_path / "c1", port, b"the run token")
        why = client.hello()
        assert why is not None and "MAC" in why and client.ca is None
        # what the client sent: its dial address and its SuperNode's public key, under the run token
        sent = seen[0]
        assert sent["dial"] == "127.0.0.1" and list(sent["nodes"]) == ["0"]
        assert c.mac_ok(b"the run token", sent["mac"], sent["nonce"].encode(), b"127.0.0.1",
                        json.dumps(sent["nodes"], sort_keys=True).encode())
        assert "PRIVATE" not in json.dumps(sent)
        gw.hello = lambda data: (200, {"ca": ca.decode(), "mac": c.mac(b"the run token", data["nonce"].encode(), ca)})
        client = _client(mods, tmp_path / "c2", port, b"the run token")
        assert client.hello() is None
        assert Path(client.ca).read_bytes() == ca
        assert _client_module().preflight("127.0.0.1", port, client.ctx, 5) is None
    finally:
        gw.stop()


def test_gateway_cap_stays_under_the_open_file_limit(mods, monkeypatch):
    """At the fd limit legitimate SuperNodes timed out: the cap leaves room for the SuperLink side."""
    monkeypatch.setattr(mods["gateway"], "_fd_limit", lambda: 1024)
    gw = mods["gateway"].Gateway("127.0.0.1", 0, 1, None, dict)
    assert gw.max_connections == (1024 - 64) // 2
    monkeypatch.setattr(mods["gateway"], "_fd_limit", lambda: 1 << 20)
    assert mods["gateway"].Gateway("127.0.0.1", 0, 1, None, dict).max_connections == mods["gateway"].MAX_CONNECTIONS


# -- issue 16, the first hour: the app's own rounds, plain-text logs, the traffic line -------------------
def _app(tmp_path: Path, config_lines: str) -> Path:
    """A copy of the example app's pyproject.toml whose [tool.flwr.app.config] is ``config_lines``."""
    app = tmp_path / "app"
    app.mkdir()
    text = (EXAMPLE / "pyproject.toml").read_text()
    head = text.split("[tool.flwr.app.config]")[0]
    (app / "pyproject.toml").write_text(head + "[tool.flwr.app.config]\n" + config_lines)
    return app


def test_the_apps_num_server_rounds_is_the_runs_rounds_unless_rounds_are_given(tmp_path):
    from fedctl.config.experiment import load_experiment

    base = ["payload=flower", f"app={EXAMPLE}"]  # examples/flower-numpy: num-server-rounds = 3
    exp = load_experiment(None, base, cwd=tmp_path)
    assert exp.rounds == 3  # not fedctl's default of 20
    assert exp.resolved()["rounds"] == 3  # config.yaml: the server passes it as num-server-rounds
    assert "rounds" not in exp.payload_config  # the core key is not kept as a payload key
    # given explicitly, fedctl's rounds win, whichever way they are given
    assert load_experiment(None, base, rounds=2, cwd=tmp_path).rounds == 2
    assert load_experiment(None, [*base, "rounds=5"], cwd=tmp_path).rounds == 5
    (tmp_path / "fedctl.yaml").write_text(f"payload: flower\napp: {EXAMPLE}\nrounds: 20\n")
    assert load_experiment(None, cwd=tmp_path).rounds == 20
    (tmp_path / "fedctl.yaml").unlink()
    # an app without num-server-rounds runs fedctl's default; a bad one is named with its file
    plain_app = _app(tmp_path, "learning-rate = 0.5\n")
    assert load_experiment(None, ["payload=flower", f"app={plain_app}"], cwd=tmp_path).rounds == 20
    (plain_app / "pyproject.toml").write_text((plain_app / "pyproject.toml").read_text() + 'num-server-rounds = "x"\n')
    from fedctl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"num-server-rounds must be a whole number >= 1, got 'x'"):
        load_experiment(None, ["payload=flower", f"app={plain_app}"], cwd=tmp_path)
    # ... unless rounds are given: then the app's value is not used
    assert load_experiment(None, ["payload=flower", f"app={plain_app}"], rounds=4, cwd=tmp_path).rounds == 4


def test_flower_process_logs_are_written_as_plain_text(mods, tmp_path):
    common = mods["flower_common"]
    log_path = tmp_path / "superlink.log"
    # what Flower's ConsoleHandler writes (flwr/supercore/logger.py: coloured level names, always)
    script = ("import sys; print('\\x1b[92mINFO \\x1b[0m:      Starting Flower SuperLink', flush=True); "
              "print('\\x1b[93mWARNING \\x1b[0m:   on stderr', file=sys.stderr, flush=True)")
    proc = common.start_logged([sys.executable, "-c", script], str(log_path), stdin=None)
    assert proc.wait(timeout=30) == 0
    common.drain_log(proc)
    assert log_path.read_text() == "INFO :      Starting Flower SuperLink\nWARNING :   on stderr\n"
    assert common.plain("\x1b[1;31mred\x1b[0m \x1b[2K") == "red "


def test_summary_md_traffic_is_the_flower_runs_total(tmp_path):
    """Flower knows a run's traffic only as a total: the summary line's bytes_in/bytes_out, which
    summary.md's Traffic line must show (it summed round lines only: "0 B")."""
    from types import SimpleNamespace

    from fedctl.contract.metrics import read_metrics
    from fedctl.results.fmt import fmt_bytes
    from fedctl.results.report import run_summary, summary_markdown

    metrics = tmp_path / "metrics.jsonl"
    lines = [{"type": "round", "round": 1, "rounds": 1, "start": 1.0, "end": 2.0, "accuracy": 0.8, "loss": 0.5},
             {"type": "summary", "rounds_completed": 1, "final_accuracy": 0.8, "wall_s": 3.0, "status": "finished",
              "reason": None, "bytes_in": 7032, "bytes_out": 11424}]
    metrics.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    state = SimpleNamespace(run_id="r1", clients=2, rounds=1, phase="finished")
    rc = SimpleNamespace(total={}, rows=[])
    s = run_summary(read_metrics(str(metrics)), state, rc, None)
    assert (s["bytes_in"], s["bytes_out"]) == (7032, 11424)
    vers = {"fedctl": "x", "python": [], "packages": {}, "git": {}}
    md = summary_markdown(s, rc, vers, None, [])
    assert f"Traffic: {fmt_bytes(7032)} in, {fmt_bytes(11424)} out." in md
