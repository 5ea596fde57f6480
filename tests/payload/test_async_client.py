"""client.py's network half under async runs: uploads still retrying when the run ends stop at once.

An async run always ends with updates in flight (concurrency > buffer size). Their uploads used to
keep retrying the gone server for a minute after the client had heard "finished", so the client
process hung on its upload pool instead of exiting.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time

import pytest
from conftest import PAYLOAD_DIR


def _client_network_half(port: int):
    spec = importlib.util.spec_from_file_location("fedtf_client_script_async", os.path.join(PAYLOAD_DIR, "client.py"))
    mod = importlib.util.module_from_spec(spec)  # TensorFlow is imported only in Client.__init__
    spec.loader.exec_module(mod)
    cl = mod.Client.__new__(mod.Client)
    cl.host, cl.port, cl.token, cl.unreachable_s = "127.0.0.1", port, b"t" * 24, 60.0
    cl._local = threading.local()
    cl.stop = threading.Event()
    cl.is_async = True
    cl.args = type("A", (), {"run_dir": "/nonexistent"})()
    return cl


def test_a_retrying_async_upload_gives_up_when_the_run_is_over():
    with socket.socket() as s:  # a port nobody listens on: every try is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cl = _client_network_half(port)
    threading.Timer(0.5, cl.stop.set).start()  # the poll thread hears "finished"
    t0 = time.time()
    with pytest.raises(ConnectionError, match="the run is over"):
        cl.request("POST", "/update?seq=1&id=0", b"x", timeout=2, give_up_s=60.0)
    assert time.time() - t0 < 5.0  # not the 60 s it used to retry for
