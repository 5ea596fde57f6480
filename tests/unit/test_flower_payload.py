"""The flower payload's host-side pieces that need no Flower: config validation, the log-to-metrics
translation, the Fleet gateway's filter, the run CA, and shipping an app folder."""

from __future__ import annotations

import importlib.util
import json
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.payload import load_manifest, repo_payloads_dir
from fedctl.shipping import config_for_host, find_files
from fedctl.state import HostRecord

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
    return {n: _load(n) for n in ("flower_config", "flower_progress", "gateway", "flower_common")}


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


def test_run_ca_is_the_same_on_every_host_and_signs_the_server(mods, tmp_path):
    c = mods["flower_common"]
    token = b"a-run-token"
    ca1, ca2 = c.ca_certificate_pem(token), c.ca_certificate_pem(token)
    from cryptography import x509

    a, b = x509.load_pem_x509_certificate(ca1), x509.load_pem_x509_certificate(ca2)
    assert a.public_key().public_numbers() == b.public_key().public_numbers() and a.subject == b.subject
    assert c.ca_certificate_pem(b"another") != ca1
    cert, key = c.server_certificate_pem(token, ["127.0.0.1", "localhost"])
    (tmp_path / "s.pem").write_bytes(cert)
    (tmp_path / "s.key").write_bytes(key)
    (tmp_path / "ca.pem").write_bytes(ca2)  # a client's own copy
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = lsock.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    client_mod = _client_module()
    ok_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    assert client_mod.preflight("127.0.0.1", port, ok_ctx, 5) is None
    (tmp_path / "other.pem").write_bytes(c.ca_certificate_pem(b"other token"))
    bad = client_mod.preflight("127.0.0.1", port, ssl.create_default_context(cafile=str(tmp_path / "other.pem")), 5)
    assert bad is not None and "TLS" in bad
    lsock.close()
    refused = client_mod.preflight("127.0.0.1", port, None, 2)
    assert "refused" in refused


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
