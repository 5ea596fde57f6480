"""What the payload's server and client processes set up before their first round: numpy's BLAS
on one thread, and the server's test set as tensors made once."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.payload.conftest import PAYLOAD_DIR

_PROBE = r"""
import importlib.util, json, sys
sys.argv = ["x"]
spec = importlib.util.spec_from_file_location("payload_main", {script!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)          # the script's top level, as `python {script}` runs it
import numpy, threadpoolctl
print(json.dumps([[i["internal_api"], i["num_threads"]] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]))
"""


@pytest.mark.parametrize("script", ["server.py", "client.py"])
def test_the_payload_scripts_give_numpy_one_blas_thread(script):
    """A multi-threaded OpenBLAS spin-waiting beside TensorFlow made the server's check of one
    upload take 30-60 ms instead of ~1 ms on a 2-core host."""
    pytest.importorskip("threadpoolctl")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "FEDTF_BLAS_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(script=os.path.join(PAYLOAD_DIR, script))],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert pools, "numpy reports no BLAS library"
    assert all(n == 1 for _, n in pools), pools


def test_blas_limit_leaves_an_imported_numpy_alone(monkeypatch):
    from fedtf import blas

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    blas.limit_threads()  # numpy is imported in this process: too late, so nothing is set
    assert "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.e2e
def test_the_evaluator_gives_what_the_trainer_gives_on_the_arrays():
    """The evaluator holds its test set as tensor batches made once; the weighted mean over
    batches of different sizes is the trainer's evaluation of the whole arrays."""
    pytest.importorskip("tensorflow")
    from fedtf import models, training
    from fedtf.evaluation import Evaluator

    training.seed_everything(0)
    m = models.build_model("logreg", (6,), 3)
    tr = training.Trainer(m, (6,), {"epochs": 1, "batch_size": 4, "lr": 0.1, "optimizer": "sgd"})
    rng = np.random.default_rng(1)
    x, y = rng.random((5000, 6)).astype(np.float32), rng.integers(0, 3, 5000).astype(np.int32)
    ev = Evaluator(tr, tr.layout, x, y)
    assert ev.examples == 5000 and [int(b[1].shape[0]) for b in ev.batches] == [4096, 904]
    w = tr.layout.get() + np.float32(0.3)
    loss, acc, _ = ev.evaluate(w)
    tr.layout.set(w)
    ref = tr._eval(x, y)  # one pass over all 5000
    assert loss == pytest.approx(float(ref[0]) / 5000, rel=1e-5)
    assert acc == pytest.approx(float(ref[1]) / 5000, abs=1e-9)


@pytest.mark.e2e
def test_server_ready_names_the_port_before_set_up_and_early_connections_are_served(tmp_path):
    """server.ready is written when the port is bound, before TensorFlow is imported, so fedctl
    starts the clients while the server sets up; a connection made then waits in the kernel's
    queue and is answered once the server serves (and one without the token gets a 401)."""
    import yaml
    from fedtf.transport import Connection

    from tests.waiting import wait_until

    cfg = {"clients": 2, "seed": 0, "model": "mlp", "rounds": 1,
           "data": {"dataset": "synthetic", "partition": "iid",
                    "synthetic": {"train": 60, "test": 40, "features": 16, "classes": 4, "noise": 1.0}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "token").write_text("early-token-0123456789")
    os.chmod(tmp_path / "token", 0o600)
    log = tmp_path / "server.log"
    cmd = [sys.executable, os.path.join(PAYLOAD_DIR, "server.py"), "--config", str(tmp_path / "config.yaml"),
           "--run-dir", str(tmp_path), "--token-file", str(tmp_path / "token"), "--host", "127.0.0.1", "--port", "0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                env={**os.environ, "FEDTF_INTRA_THREADS": "1", "FEDTF_CONNECT_WAIT_S": "120"})
    try:
        def ready():
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return json.loads((tmp_path / "server.ready").read_text())
            except (OSError, ValueError):
                return None

        port = wait_until(ready, 120, interval=0.02, what="server.ready")["port"]
        # importing TensorFlow takes seconds: the set-up line cannot be there yet
        assert "clients, 1 rounds" not in log.read_text()
        code, body = Connection("127.0.0.1", port, b"early-token-0123456789", timeout=120).request("GET", "/health")
        assert code == 200 and json.loads(body)["finished"] is None, body
        assert "clients, 1 rounds" in log.read_text()  # the answer came from the set-up server
        assert Connection("127.0.0.1", port, b"wrong-token-000000000000", timeout=30).request("GET", "/health")[0] == 401
    finally:
        proc.kill()
        proc.wait(timeout=30)
