"""fedctl's flower payload, client side: one ``flower-supernode`` per client id of this process.

Each SuperNode gets ``--node-config "partition-id=<id> num-partitions=<clients>"``, its own
ClientAppIo (Runtime API) port on 127.0.0.1, the run CA as root certificate and its own private key
(Flower's node authentication; unless ``flower.insecure``), and bounded retries (``--max-wait-time``
= ``flower.connect_timeout_s``), so a SuperLink that cannot be reached ends it with an error instead
of retrying forever.

Before starting any SuperNode the wrapper checks the server: it connects to ADDR:PORT, says hello
(see flower_common: the address it dials, its SuperNodes' public keys; it learns the run CA) and
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
    drain_log,
    flower_settings,
    flower_tool,
    free_port,
    log,
    mac,
    mac_ok,
    new_node_key,
    read_config,
    read_token,
    start_logged,
    tail,
    terminate,
    tool_env,
    write_private,
)

CA_FOR_CLIENTS = "flower-ca.pem"  # the run CA's certificate in the run dir, when fedctl (or the server) put it there

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
        return (f"TLS: the server's certificate is not valid for {host} ({exc.verify_message}), although this "
                "client's hello asked the server to name it: see the server's server.log")
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
        self.token = read_token(args.token_file)
        self.home = os.path.join(self.run_dir, f"flower-client-{args.process}")
        self.keys: dict[int, str] = {}  # client id -> its SuperNode's private key file

    def node_keys(self) -> dict[str, str]:
        """Per client id, the OpenSSH public key of its SuperNode; the private key stays in this
        process's folder (0600), kept across a restart so the SuperNode keeps its registration."""
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        pubs = {}
        for cid in self.ids:
            key, pub = os.path.join(self.home, f"node-{cid}.key"), os.path.join(self.home, f"node-{cid}.pub")
            if not (os.path.exists(key) and os.path.exists(pub)):
                priv_pem, pub_line = new_node_key()
                write_private(key, priv_pem)
                with open(pub, "wb") as f:
                    f.write(pub_line + b"\n")
            with open(pub, encoding="ascii") as f:
                pubs[str(cid)] = f.read().strip()
            self.keys[cid] = key
        return pubs

    def hello(self) -> str | None:
        """Say hello to the server (TLS; the body and the answer carry an HMAC under the run token):
        the address this client dials (the server's certificate names it from now on) and its
        SuperNodes' public keys (registered for the run); learn the run CA's certificate from
        ``<run_dir>/flower-ca.pem`` when it is there, else from the answer. None, or why it failed."""
        local_ca = os.path.join(self.run_dir, CA_FOR_CLIENTS)
        ctx = ssl.create_default_context(cafile=local_ca) if os.path.exists(local_ca) else ssl.create_default_context()
        ctx.check_hostname = False  # the certificate may not name our address yet: this hello asks for it
        if not os.path.exists(local_ca):
            ctx.verify_mode = ssl.CERT_NONE  # the answer's MAC authenticates the CA instead
        nonce = os.urandom(16).hex()
        nodes = self.node_keys()
        nodes_json = json.dumps(nodes, sort_keys=True)
        body = json.dumps({"nonce": nonce, "dial": self.host, "nodes": nodes,
                           "mac": mac(self.token, nonce.encode(), self.host.encode(), nodes_json.encode())}).encode()
        host = self.host if ":" not in self.host else f"[{self.host}]"
        req = urllib.request.Request(f"https://{host}:{self.port}/fedctl/hello", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:  # noqa: S310 - our server
                answer = json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            return f"the server refused this client's hello ({exc.code}): {exc.read().decode(errors='replace')[:300]}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"hello to {host}:{self.port} failed: {exc}"
        ca = answer.get("ca") if isinstance(answer, dict) else None
        if not isinstance(ca, str) or not mac_ok(self.token, answer.get("mac"), nonce.encode(), ca.encode()):
            return "the hello's answer does not carry the run's MAC: not this run's server"
        tdir = os.path.join(self.run_dir, "flower-client-tls")
        os.makedirs(tdir, mode=0o700, exist_ok=True)
        self.ca = local_ca if os.path.exists(local_ca) else os.path.join(tdir, "ca.pem")
        if self.ca != local_ca:
            with open(self.ca, "w", encoding="ascii") as f:
                f.write(ca)
        self.ctx = ssl.create_default_context(cafile=self.ca)
        log(self.role, f"registered {len(nodes)} SuperNode key(s); run CA from "
                       f"{'this run dir' if self.ca == local_ca else 'the server (MAC under the run token)'}")
        return None

    def fail(self, reason: str) -> int:
        log(self.role, f"FAILED on {HOST}: {reason}")
        self.stop_nodes()
        return 1

    def start_nodes(self) -> None:
        home = self.home
        os.makedirs(home, exist_ok=True)
        env = tool_env({"FLWR_HOME": home})
        for cid in self.ids:
            cmd = [flower_tool("flower-supernode"), "--superlink", f"{self.args.server}",
                   "--port", str(free_port()), "--node-config", f"partition-id={cid} num-partitions={self.total}",
                   "--max-wait-time", str(int(self.timeout))]
            if self.ca is None:
                cmd += ["--insecure"]
            else:
                cmd += ["--root-certificates", self.ca, "--auth-supernode-private-key", self.keys[cid]]
            self.procs[cid] = start_logged(cmd, os.path.join(self.run_dir, f"supernode-{cid}.log"),
                                           stdin=subprocess.DEVNULL, env=env, cwd=home, start_new_session=True)
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
        insecure = bool(self.fl.get("insecure"))
        probe = None if insecure else ssl.create_default_context()
        if probe is not None:
            probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # reachability only; hello checks
        why = preflight(self.host, self.port, probe, timeout=min(10.0, self.timeout))
        if not why and not insecure:
            why = self.hello() or preflight(self.host, self.port, self.ctx, timeout=min(10.0, self.timeout))
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
                    drain_log(proc)
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
