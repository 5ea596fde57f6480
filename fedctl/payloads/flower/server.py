"""fedctl's flower payload, server side: a SuperLink, one Flower run of the app, its progress as
fedctl metrics. Runs on the server host (started detached by fedctl).

1. TLS (unless ``flower.insecure``): a random run CA made here (see flower_common) signs a server
   certificate for every address of this host, ``flower.tls_names``, ``--dial`` and the address
   each client's hello says it dials; the hello also registers the client's SuperNode keys
   (Flower's node authentication, ``--enable-supernode-auth``).
2. ``flower-superlink`` on 127.0.0.1 (a free port) with its database in the run dir
   (``flower/superlink.db``); the Fleet gateway (gateway.py) on ``--host``/``--port`` is the only
   port client hosts can reach. The ready file gets the gateway's port.
3. Waits until ``clients`` SuperNodes are online (``flwr supernode list``), at most
   ``flower.connect_timeout_s``, then submits the app (``flwr run``) with ``num-server-rounds`` =
   ``rounds`` (the app's own unless the user gave it, see flower_config) and ``flower.run_config``; Flower's run id goes to ``flower_run.json``.
4. Follows ``flwr log RUN_ID`` into ``serverapp.log`` and translates it into metrics.jsonl round lines
   (flower_progress.py), polls ``flwr ls`` for the run's status, writes the summary, packs what the
   app wrote to ``$FEDCTL_OUTPUT_DIR`` (also the ServerApp's working directory, so relative paths
   such as ``joblib.dump(model, "model.pkl")`` land there) into ``app-output.tar.gz``, tells the
   clients the run is over.
5. SIGTERM (``fedctl stop``/``teardown``): ``flwr stop RUN_ID``, then the SuperLink.

``--resume``: the SuperLink restarts on the same database. Flower cannot continue a run whose
ServerApp was killed, so a run found unfinished is stopped and a new Flower run of the app starts
from round 1 (said in the log and as an event line); a finished one is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flower_common import (  # noqa: E402
    flower_settings,
    flower_tool,
    free_port,
    log,
    plain,
    read_config,
    read_token,
    start_logged,
    tail,
    terminate,
    tool_env,
    wait_listening,
    write_json_atomic,
)
from flower_progress import RoundTracker  # noqa: E402
from flower_trust import RunTrust  # noqa: E402
from gateway import Gateway  # noqa: E402

ROLE = "flower-server"


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = read_config(args.config)
        self.fl = flower_settings(self.cfg)
        self.token = read_token(args.token_file)
        self.run_dir = os.path.abspath(args.run_dir)
        self.fdir = os.path.join(self.run_dir, "flower")
        self.home = os.path.join(self.fdir, "home")
        self.output = os.path.join(self.run_dir, "output")
        self.metrics = os.path.join(self.run_dir, "metrics.jsonl")
        self.rounds = int(self.cfg.get("rounds") or 1)
        self.expected = int(self.cfg.get("clients") or 1)
        self.app = str(self.cfg.get("app") or "")
        self.insecure = bool(self.fl.get("insecure"))
        self.trust = RunTrust(self.run_dir, self.token, self.expected, self._register)
        self.tdir = self.trust.tdir
        self.phase = "starting"
        self.stopping = threading.Event()
        self.superlink: subprocess.Popen | None = None
        self.logproc: subprocess.Popen | None = None
        self.gateway: Gateway | None = None
        self.run_id: str | None = None
        self.started = time.time()
        self.tracker = RoundTracker(self._round)
        self.best_acc: float | None = None
        self.completed = 0
        self.lock = threading.Lock()

    # -- files -------------------------------------------------------------------------------------
    def append(self, line: dict) -> None:
        with self.lock, open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, allow_nan=False) + "\n")

    def event(self, level: str, message: str) -> None:
        log(ROLE, message)
        self.append({"type": "event", "time": time.time(), "level": level, "message": message})

    def status(self, rnd: int, connected: int | None = None) -> None:
        """status.json; ``connected`` (SuperNodes online) while waiting for them: fedctl's start
        waits on it (manifest ``server.reports_clients``)."""
        write_json_atomic(os.path.join(self.run_dir, "status.json"), {
            "round": rnd, "rounds": self.rounds, "phase": self.phase, "sampled": [], "reported": [],
            "waiting": [], "time": time.time(), "flower_run_id": self.run_id,
            "connected": self.expected if connected is None and self.phase != "waiting" else (connected or 0),
        })

    def _round(self, line: dict) -> None:
        self.append(line)
        self.completed = max(self.completed, int(line["round"]))
        acc = line.get("accuracy")
        if acc is not None and (self.best_acc is None or acc > self.best_acc):
            self.best_acc = acc
        self.status(self.completed)
        log(ROLE, f"round {line['round']}/{line.get('rounds')} done: "
                  + ", ".join(f"{k}={line[k]:.4g}" for k in ("loss", "accuracy") if k in line))

    # -- flwr CLI ----------------------------------------------------------------------------------
    def env(self) -> dict:
        return tool_env({"FLWR_HOME": self.home, "FEDCTL_OUTPUT_DIR": self.output})

    def flwr(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([flower_tool("flwr"), *argv], capture_output=True, text=True, timeout=timeout,
                              env=self.env(), cwd=self.fdir)

    def flwr_json(self, *argv: str, timeout: float = 60) -> dict:
        res = self.flwr(*argv, "--format", "json", timeout=timeout)
        text = res.stdout.strip()
        start = text.find("{")
        try:
            data = json.loads(text[start:]) if start >= 0 else {}
        except ValueError:
            data = {}
        if not data.get("success", False):
            raise RuntimeError(f"flwr {' '.join(argv)} failed: {(res.stderr or res.stdout).strip()[-500:]}")
        return data

    def _register(self, pub_path: str, name: str) -> str:
        """Register a SuperNode public key with the SuperLink; its node id (RuntimeError if not)."""
        try:
            return str(self.flwr_json("supernode", "register", pub_path, "--name", name, timeout=60).get("node-id"))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(str(exc)) from None

    # -- steps -------------------------------------------------------------------------------------
    def start_superlink(self) -> int:
        port = free_port("127.0.0.1")
        cmd = [flower_tool("flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
               "--database", os.path.join(self.fdir, "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.insecure:
            cmd += ["--insecure"]
        else:  # node authentication needs the SuperLink itself on TLS (Flower refuses it otherwise)
            cmd += ["--ssl-certfile", os.path.join(self.tdir, "superlink.pem"),
                    "--ssl-keyfile", os.path.join(self.tdir, "superlink.key"),
                    "--ssl-ca-certfile", os.path.join(self.tdir, "ca.pem"), "--enable-supernode-auth"]
        # its own session: fedctl's TERM to our group must reach us first, so that we `flwr stop`.
        # cwd: the ServerApp inherits it (SuperLink -> SuperExec -> flwr-serverapp, no chdir), and apps
        # not written for fedctl save their results relative to it (Flower's quickstart-sklearn:
        # joblib.dump(model, "logreg_model.pkl")); in $FEDCTL_OUTPUT_DIR they reach app-output.tar.gz
        # instead of being removed with the run dir. The SuperLink itself writes nothing there (its
        # database and FLWR_HOME are absolute paths).
        self.superlink = start_logged(cmd, os.path.join(self.run_dir, "superlink.log"), stdin=subprocess.DEVNULL,
                                      env=self.env(), cwd=self.output, start_new_session=True)
        wait_listening(self.superlink, port, os.path.join(self.run_dir, "superlink.log"), timeout=60)
        trust = ("insecure = true\n" if self.insecure else
                 f"root-certificates = {json.dumps(os.path.join(self.tdir, 'ca.pem'))}\n")
        with open(os.path.join(self.home, "config.toml"), "w", encoding="utf-8") as f:
            f.write(f'[superlink]\ndefault = "fedctl"\n\n[superlink.fedctl]\naddress = "127.0.0.1:{port}"\n' + trust)
        return port

    def wait_nodes(self) -> None:
        timeout = float(self.fl.get("connect_timeout_s") or 60)
        deadline = time.time() + timeout
        online = 0
        while not self.stopping.is_set():
            try:
                nodes = self.flwr_json("supernode", "list", timeout=30).get("nodes") or []
                online = sum(1 for n in nodes if n.get("status") == "online")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(ROLE, f"listing SuperNodes: {exc}")
            self.status(0, connected=online)
            if online >= self.expected:
                log(ROLE, f"{online}/{self.expected} SuperNodes online")
                return
            if time.time() > deadline:
                raise TimeoutError(
                    f"only {online} of {self.expected} SuperNodes connected within {timeout:.0f} s "
                    "(flower.connect_timeout_s); see the clients' supernode-*.log for why"
                )
            time.sleep(1.0)

    def submit(self) -> str:
        rc = os.path.join(self.fdir, "run_config.toml")
        values = {"num-server-rounds": self.rounds, **(self.fl.get("run_config") or {})}
        with open(rc, "w", encoding="utf-8") as f:
            for k, v in values.items():
                f.write(f'"{k}" = {toml_value(v)}\n')
        data = self.flwr_json("run", self.app, "fedctl", "--run-config", rc, timeout=300)
        run_id = str(data["run-id"])
        write_json_atomic(os.path.join(self.run_dir, "flower_run.json"),
                          {"run_id": run_id, "fab_id": data.get("fab-id"), "fab_hash": data.get("fab-hash"),
                           "submitted": time.time()})
        return run_id

    def follow_log(self) -> None:
        """Stream the ServerApp's log into serverapp.log and the round tracker."""
        assert self.run_id is not None
        out = open(os.path.join(self.run_dir, "serverapp.log"), "a", encoding="utf-8")
        self.logproc = subprocess.Popen([flower_tool("flwr"), "log", self.run_id], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=self.env(), cwd=self.fdir,
                                        start_new_session=True)
        assert self.logproc.stdout is not None
        for line in self.logproc.stdout:
            out.write(plain(line))  # the ServerApp's logger colours its level names
            out.flush()
            self.tracker.feed(line)
        out.close()

    def run_info(self) -> dict:
        runs = self.flwr_json("ls", "--run-id", str(self.run_id), timeout=30).get("runs") or [{}]
        return runs[0]

    def wait_run(self) -> dict:
        follower = threading.Thread(target=self.follow_log, daemon=True)
        follower.start()
        info: dict = {}
        while not self.stopping.is_set():
            try:
                info = self.run_info()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(ROLE, f"flwr ls: {exc}")
            if str(info.get("status", "")).startswith("finished"):
                break
            if self.superlink is not None and self.superlink.poll() is not None:
                info = {"status": "finished:failed", "status-details": "the SuperLink exited: "
                        + tail(os.path.join(self.run_dir, "superlink.log"), 5)}
                break
            self.stopping.wait(2.0)
        follower.join(timeout=5)
        self.tracker.close()
        return info

    def pack_output(self) -> None:
        if not os.path.isdir(self.output) or not os.listdir(self.output):
            return
        with tarfile.open(os.path.join(self.run_dir, "app-output.tar.gz"), "w:gz") as tar:
            tar.add(self.output, arcname="output")

    def finish(self, status: str, reason: str | None, info: dict | None = None) -> None:
        last = self.tracker.last or {}
        summary = {
            "rounds_completed": self.completed, "final_accuracy": last.get("accuracy"),
            "final_loss": last.get("loss"), "best_accuracy": self.best_acc,
            "wall_s": round(time.time() - self.started, 3), "status": status, "reason": reason,
            "flower_run_id": self.run_id,
        }
        if info:
            summary["flower_status"] = info.get("status")
            # the contract's traffic keys (bytes_in: what the server received), as totals: Flower
            # counts a run's traffic, not a round's (fedctl's results read a summary total first)
            traffic = info.get("network-traffic") or {}
            for flwr_key, key in (("inbound-bytes", "bytes_in"), ("outbound-bytes", "bytes_out")):
                if isinstance(traffic.get(flwr_key), (int, float)) and not isinstance(traffic[flwr_key], bool):
                    summary[key] = traffic[flwr_key]
        self.append({"type": "summary", **summary})
        write_json_atomic(os.path.join(self.run_dir, "summary.json"), summary)
        self.phase = "finished" if status == "finished" else "failed"
        self.status(self.completed)
        self.pack_output()

    def stop_flower_run(self) -> None:
        if self.run_id is None:
            return
        try:
            res = self.flwr("stop", self.run_id, timeout=float(self.fl.get("stop_timeout_s") or 10))
            log(ROLE, f"flwr stop {self.run_id}: {'done' if res.returncode == 0 else res.stdout.strip()[-200:]}")
        except (subprocess.TimeoutExpired, OSError) as exc:
            log(ROLE, f"flwr stop {self.run_id}: {exc}")

    def resume_previous(self) -> None:
        """After a crash: the database still knows the last Flower run; say what becomes of it."""
        path = os.path.join(self.run_dir, "flower_run.json")
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            prev = json.load(f).get("run_id")
        self.run_id = str(prev)
        try:
            status = str(self.run_info().get("status", "unknown"))
        except (RuntimeError, subprocess.TimeoutExpired):
            status = "unknown"
        if status.startswith("finished"):
            self.event("info", f"Flower run {prev} is already {status}; nothing to resume")
            raise SystemExit(0)
        self.stop_flower_run()
        self.event("warning", f"Flower cannot resume run {prev} ({status}) after its SuperLink or ServerApp "
                   "died: starting a new Flower run from round 1")
        self.run_id = None
        self.completed = 0

    def on_term(self, signum: int, _frame: object) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log(ROLE, f"signal {signum}: stopping the Flower run")

    # -- main --------------------------------------------------------------------------------------
    def run(self) -> int:
        for d in (self.fdir, self.home, self.output):
            os.makedirs(d, exist_ok=True)
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        try:
            if self.insecure:
                log(ROLE, "flower.insecure: the Fleet API is plain HTTP (no TLS, no SuperNode authentication)")
                ctx = upstream_ctx = None
            else:
                names = list(self.fl.get("tls_names") or []) + list(self.args.dial or [])
                if self.args.host not in ("0.0.0.0", "::", ""):
                    names.append(self.args.host)
                ctx, upstream_ctx = self.trust.setup(names)
            upstream = self.start_superlink()
            self.gateway = Gateway(self.args.host, self.args.port, upstream, ctx, lambda: {"phase": self.phase},
                                   log=lambda m: log(ROLE, m), upstream_ssl=upstream_ctx,
                                   hello=None if self.insecure else self.trust.hello)
            port = self.gateway.start()
            write_json_atomic(os.path.join(self.run_dir, "server.ready"), {"port": port, "pid": os.getpid()})
            log(ROLE, f"Fleet API on {self.args.host}:{port} ({'plain HTTP' if self.insecure else 'TLS'}); "
                      f"SuperLink on 127.0.0.1:{upstream}; waiting for {self.expected} SuperNodes")
            if self.args.resume:
                self.resume_previous()
            self.phase = "waiting"
            self.status(0)
            self.wait_nodes()
            if self.stopping.is_set():
                raise InterruptedError
            self.run_id = self.submit()
            self.phase = "training"
            self.status(0)
            log(ROLE, f"submitted {self.app} as Flower run {self.run_id}: {self.rounds} rounds")
            info = self.wait_run()
            if self.stopping.is_set():
                raise InterruptedError
            status = str(info.get("status", ""))
            if status == "finished:completed":
                self.finish("finished", None, info)
                code = 0
            else:
                reason = f"Flower run {self.run_id} {status or 'ended'}"
                if info.get("status-details") not in (None, "", "N/A"):
                    reason += f": {info['status-details']}"
                self.event("error", reason)
                self.finish("failed", reason, info)
                code = 1
        except InterruptedError:
            self.stop_flower_run()
            self.finish("failed", "stopped (SIGTERM)")
            code = 1
        except (TimeoutError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            self.event("error", str(exc))
            self.stop_flower_run()
            self.finish("failed", str(exc)[:500])
            code = 1
        # let the client wrappers see the final phase (they poll every second), then shut down
        if self.gateway is not None and not self.stopping.is_set():
            time.sleep(3.0)
        for proc in (self.logproc, self.superlink):
            terminate(proc)
        if self.gateway is not None:
            self.gateway.stop()
        log(ROLE, f"exit {code}")
        return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--host", default="0.0.0.0", help="where the Fleet gateway binds")
    p.add_argument("--port", type=int, default=0, help="the Fleet gateway's port (0: a free one)")
    p.add_argument("--dial", action="append", default=[],
                   help="an address the clients dial (fedctl's server_address): the certificate names it")
    p.add_argument("--resume", action="store_true")
    return Server(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
