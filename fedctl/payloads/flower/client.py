"""fedctl's flower payload, client side: one ``flower-supernode`` per client id of this process.

Each SuperNode gets ``--node-config "partition-id=<id> num-partitions=<clients>"``, its own
ClientAppIo (Runtime API) port on 127.0.0.1, the run CA as root certificate (unless
``flower.insecure``), and bounded retries (``--max-wait-time`` = ``flower.connect_timeout_s``), so
a SuperLink that cannot be reached ends it with an error instead of retrying forever.

Before starting any SuperNode the wrapper checks the server: it connects to ADDR:PORT and (with TLS)
verifies the certificate. A refused connection, an unknown name or a certificate that does not
name ADDR fails at once (exit 1) with a message naming this host, the address and the reason, which
``fedctl start`` reports. It then polls the gateway's ``/fedctl/state`` each second and exits 0 when
the server says the run is over; exit 1 when a SuperNode dies while the run goes on, or when the
server stays unreachable for ``flower.connect_timeout_s``. SIGTERM stops the SuperNodes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flower_common import (  # noqa: E402
    ca_certificate_pem,
    flower_settings,
    flower_tool,
    free_port,
    log,
    read_config,
    read_token,
    tail,
    terminate,
    tool_env,
)

HOST = socket.gethostname()


def split_address(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def preflight(host: str, port: int, ctx: ssl.SSLContext | None, timeout: float) -> str | None:
    """None when the server answers (and its certificate names ``host``), else the reason."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc}"
    except ConnectionRefusedError:
        return f"connection to {host}:{port} refused (nothing listens there: wrong address or port?)"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    try:
        if ctx is not None:
            with ctx.wrap_socket(sock, server_hostname=host):
                pass
        else:
            sock.close()
    except ssl.SSLCertVerificationError as exc:
        return (f"TLS: the server's certificate is not valid for {host} ({exc.verify_message}); if clients "
                f"reach the server by an address it does not have (NAT), add it to flower.tls_names")
    except (ssl.SSLError, OSError) as exc:
        return f"TLS handshake with {host}:{port} failed: {exc}"
    return None


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = read_config(args.config)
        self.fl = flower_settings(self.cfg)
        self.run_dir = os.path.abspath(args.run_dir)
        self.ids = [int(x) for x in args.client_ids.split(",") if x.strip()]
        self.total = int(self.cfg.get("clients") or len(self.ids))
        self.host, self.port = split_address(args.server)
        self.role = f"flower-client {args.client_ids}"
        self.timeout = float(self.fl.get("connect_timeout_s") or 60)
        self.stopping = False
        self.procs: dict[int, subprocess.Popen] = {}
        self.ctx: ssl.SSLContext | None = None
        self.ca: str | None = None
        if not self.fl.get("insecure"):
            tdir = os.path.join(self.run_dir, "flower-client-tls")
            os.makedirs(tdir, mode=0o700, exist_ok=True)
            self.ca = os.path.join(tdir, "ca.pem")
            with open(self.ca, "wb") as f:
                f.write(ca_certificate_pem(read_token(args.token_file)))
            self.ctx = ssl.create_default_context(cafile=self.ca)

    def fail(self, reason: str) -> int:
        log(self.role, f"FAILED on {HOST}: {reason}")
        self.stop_nodes()
        return 1

    def start_nodes(self) -> None:
        home = os.path.join(self.run_dir, f"flower-client-{self.args.process}")
        os.makedirs(home, exist_ok=True)
        env = tool_env({"FLWR_HOME": home})
        for cid in self.ids:
            cmd = [flower_tool("flower-supernode"), "--superlink", f"{self.args.server}",
                   "--port", str(free_port()), "--node-config", f"partition-id={cid} num-partitions={self.total}",
                   "--max-wait-time", str(int(self.timeout))]
            cmd += ["--insecure"] if self.ca is None else ["--root-certificates", self.ca]
            out = open(os.path.join(self.run_dir, f"supernode-{cid}.log"), "ab")
            self.procs[cid] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env=env, cwd=home, start_new_session=True)
        log(self.role, f"started {len(self.ids)} SuperNode(s) on {HOST} for partitions {self.ids} of {self.total}, "
                       f"SuperLink {self.args.server}")

    def stop_nodes(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs.values():
            terminate(proc, grace_s=5.0)

    def server_phase(self) -> str | None:
        scheme = "http" if self.ctx is None else "https"
        url = f"{scheme}://{self.host if ':' not in self.host else '[' + self.host + ']'}:{self.port}/fedctl/state"
        try:
            with urllib.request.urlopen(url, timeout=5, context=self.ctx) as resp:  # noqa: S310 - our server
                return str(json.loads(resp.read().decode()).get("phase"))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def on_term(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        why = preflight(self.host, self.port, self.ctx, timeout=min(10.0, self.timeout))
        if why:
            return self.fail(f"SuperLink {self.args.server} unreachable: {why}")
        self.start_nodes()
        last_seen = time.time()
        while not self.stopping:
            time.sleep(1.0)
            phase = self.server_phase()
            if phase is not None:
                last_seen = time.time()
            if phase in ("finished", "failed"):
                log(self.role, f"the server says the run is {phase}; stopping the SuperNodes")
                self.stop_nodes()
                return 0
            for cid, proc in self.procs.items():
                if proc.poll() is not None:
                    return self.fail(f"SuperNode for partition {cid} exited with {proc.returncode}: "
                                     + tail(os.path.join(self.run_dir, f"supernode-{cid}.log"), 6))
            if time.time() - last_seen > self.timeout:
                return self.fail(f"SuperLink {self.args.server} unreachable for {self.timeout:.0f} s")
        log(self.role, "signal: stopping the SuperNodes")
        self.stop_nodes()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--server", required=True, help="ADDR:PORT of the Fleet gateway")
    p.add_argument("--client-ids", required=True, help="comma list, e.g. 0,1,2")
    p.add_argument("--process", default="0", help="index of this client process on its host")
    return Client(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
