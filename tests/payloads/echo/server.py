"""Echo payload server: fake federated rounds for fedctl's tests (stdlib only).

Binds --host/--port (port 0 = a free port), writes {"port", "pid"} atomically to <run_dir>/server.ready,
accepts client hellos (first line must be the run token, second line "hello <ids>"), waits up to
echo_wait_s for all clients, then runs `rounds` rounds of echo_round_s seconds each, appending a round
line per round to metrics.jsonl (accuracy = round / rounds). At the end it writes the summary line and
summary.json, tells clients "bye", and exits 0. With fail_at_round it exits 1 at that round.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import log, read_config, read_token, write_json_atomic  # noqa: E402


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.cfg = read_config(args.config)
        self.token = read_token(args.token_file)
        self.run_dir = args.run_dir
        self.rounds = int(self.cfg.get("rounds", 3))
        self.expected = int(self.cfg.get("clients", 1))
        self.round_s = float(self.cfg.get("echo_round_s", 0.5) or 0.0)
        self.wait_s = float(self.cfg.get("echo_wait_s", 30.0) or 0.0)
        far = self.cfg.get("fail_at_round")
        self.fail_at = int(far) if far not in (None, "") else None
        self.metrics = os.path.join(self.run_dir, "metrics.jsonl")
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.clients: set[int] = set()
        self.resume = args.resume
        self.sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((args.host, args.port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]

    def append(self, line: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def status(self, rnd: int, phase: str) -> None:
        with self.lock:
            ids = sorted(self.clients)
        write_json_atomic(os.path.join(self.run_dir, "status.json"), {
            "round": rnd, "rounds": self.rounds, "phase": phase, "sampled": ids, "reported": ids,
            "waiting": [], "time": time.time(),
        })

    def accept_loop(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.hello, args=(conn, addr), daemon=True).start()

    def hello(self, conn: socket.socket, addr: object) -> None:
        conn.settimeout(10)
        try:
            f = conn.makefile("r", encoding="utf-8", newline="\n")
            token = f.readline().strip()
            if not hmac.compare_digest(token.encode(), self.token.encode()):
                log("server", f"rejected a connection from {addr}: wrong token")
                conn.sendall(b"rejected\n")
                conn.close()
                return
            line = f.readline().strip()
            ids = [int(x) for x in line.removeprefix("hello").strip().split(",") if x.strip()]
            conn.sendall(b"ok\n")
        except (OSError, ValueError) as exc:
            log("server", f"bad hello from {addr}: {exc}")
            conn.close()
            return
        conn.settimeout(None)
        with self.lock:
            self.conns.append(conn)
            self.clients.update(ids)
        log("server", f"client process from {addr} says hello for ids {ids}")

    def first_round(self) -> int:
        if not self.resume or not os.path.exists(self.metrics):
            return 1
        last = 0
        with open(self.metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("type") == "round":
                    last = max(last, int(obj.get("round", 0)))
        log("server", f"resuming after round {last}")
        return last + 1

    def close_clients(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.sendall(b"bye\n")
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def run(self) -> int:
        started = time.time()
        os.makedirs(self.run_dir, exist_ok=True)
        threading.Thread(target=self.accept_loop, daemon=True).start()
        write_json_atomic(os.path.join(self.run_dir, "server.ready"), {"port": self.port, "pid": os.getpid()})
        log("server", f"listening on port {self.port}, {self.rounds} rounds, expecting {self.expected} clients")
        deadline = time.time() + self.wait_s
        while time.time() < deadline:
            with self.lock:
                if len(self.clients) >= self.expected:
                    break
            time.sleep(0.05)
        with self.lock:
            log("server", f"{len(self.clients)}/{self.expected} clients connected; starting")
        acc = 0.0
        rnd = 0
        for rnd in range(self.first_round(), self.rounds + 1):
            start = time.time()
            self.status(rnd, "training")
            time.sleep(self.round_s)
            if self.fail_at is not None and rnd == self.fail_at:
                self.append({"type": "event", "time": time.time(), "level": "error",
                             "message": f"fail_at_round={rnd}: failing as configured", "round": rnd})
                self.status(rnd, "failed")
                log("server", f"failing at round {rnd} as configured (fail_at_round)")
                self.close_clients()
                return 1
            with self.lock:
                ids = sorted(self.clients)
            acc = rnd / self.rounds
            self.append({
                "type": "round", "round": rnd, "rounds": self.rounds, "start": start, "end": time.time(),
                "sampled": ids, "reported": ids, "dropped": [],
                "clients": {str(i): {"examples": 1, "train_s": 0.0, "upload_bytes": 0, "simulated_delay_s": 0.0,
                                     "response_s": 0.0, "loss": 1.0 - acc} for i in ids},
                "loss": 1.0 - acc, "accuracy": acc, "bytes_in": 0, "bytes_out": 0, "strategy": "echo",
            })
            log("server", f"round {rnd}/{self.rounds} accuracy {acc:.3f}")
        summary = {"rounds_completed": self.rounds, "final_accuracy": acc, "final_loss": 1.0 - acc,
                   "best_accuracy": acc, "wall_s": round(time.time() - started, 3),
                   "status": "finished", "reason": None}
        self.append({"type": "summary", **summary})
        write_json_atomic(os.path.join(self.run_dir, "summary.json"), summary)
        self.status(self.rounds, "finished")
        self.close_clients()
        self.sock.close()
        log("server", "finished")
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    return Server(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
