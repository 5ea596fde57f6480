"""The run's trust on the server host: the random run CA, the certificates, the client hello.

- The run CA is random, made here per run, kept in ``flower/tls`` (the key 0600) across
  ``--resume`` (the running SuperNodes trust it). It is never derived from the run token, so a
  client host (which holds the token) cannot sign a certificate that other clients trust. Its
  certificate is also written to ``<run_dir>/flower-ca.pem``: a client on this host reads it there,
  and so does a client whose run dir fedctl copied it into.
- The gateway's certificate names every address of this host, ``flower.tls_names``, the server's
  ``--dial`` addresses and every address a client's hello says it dials (so an inventory whose
  clients dial an address the host does not have, NAT or an alias, works). Added names are kept
  in ``flower/tls/names.json``. The SuperLink's own certificate names 127.0.0.1: Flower's node
  authentication needs the SuperLink itself on TLS, behind the gateway.
- A client's hello (``POST /fedctl/hello`` on the gateway) carries an HMAC under the run token; a
  valid one registers the client's SuperNode public keys with the SuperLink, one per partition id
  of the run (``flwr supernode register``), and is answered with the CA certificate under a MAC.
  A SuperNode whose key was not registered is refused by Flower (401 on activation).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from flower_common import (
    host_names,
    log,
    mac,
    mac_ok,
    new_ca,
    node_public_key_ok,
    san_names,
    server_certificate_pem,
    write_json_atomic,
    write_private,
)

ROLE = "flower-server"
CA_FOR_CLIENTS = "flower-ca.pem"


class RunTrust:
    """The run CA, the gateway's certificate and the registered SuperNode keys of one run.

    ``register(public_key_path, name)`` registers a SuperNode key with the SuperLink and returns
    its node id (RuntimeError when it cannot)."""

    def __init__(self, run_dir: str, token: bytes, expected: int, register: Callable[[str, str], str]) -> None:
        self.run_dir, self.token, self.expected, self.register = run_dir, token, expected, register
        self.fdir = os.path.join(run_dir, "flower")
        self.tdir = os.path.join(self.fdir, "tls")
        self.ca_pem, self.ca_key = b"", b""
        self.names: list[str] = []
        self.gateway_ctx: ssl.SSLContext | None = None
        self.lock = threading.Lock()
        self.nodes: dict[str, str] = self._load_nodes()  # partition id -> its registered public key

    def _load_nodes(self) -> dict[str, str]:
        try:
            with open(os.path.join(self.fdir, "nodes.json"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def setup(self, extra_names: Iterable[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """Make (or, on resume, load) the run CA and the certificates; return the gateway's TLS
        context and the one that reaches the SuperLink."""
        os.makedirs(self.tdir, mode=0o700, exist_ok=True)
        ca_path, key_path = os.path.join(self.tdir, "ca.pem"), os.path.join(self.tdir, "ca.key")
        fresh = not (os.path.exists(ca_path) and os.path.exists(key_path))
        if fresh:
            self.ca_pem, self.ca_key = new_ca()
            write_private(key_path, self.ca_key)
            with open(ca_path, "wb") as f:
                f.write(self.ca_pem)
        else:
            with open(ca_path, "rb") as f:
                self.ca_pem = f.read()
            with open(key_path, "rb") as f:
                self.ca_key = f.read()
        with open(os.path.join(self.run_dir, CA_FOR_CLIENTS), "wb") as f:
            f.write(self.ca_pem)
        names = host_names() + list(extra_names)
        try:
            with open(os.path.join(self.tdir, "names.json"), encoding="utf-8") as f:
                names += [str(n) for n in json.load(f)]  # names clients added before a restart
        except (OSError, ValueError):
            pass
        self.names = san_names(names)
        self.gateway_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._issue_gateway_certificate()
        cert, key = server_certificate_pem(self.ca_pem, self.ca_key, ["127.0.0.1", "localhost"])
        with open(os.path.join(self.tdir, "superlink.pem"), "wb") as f:
            f.write(cert)
        write_private(os.path.join(self.tdir, "superlink.key"), key)
        log(ROLE, f"TLS: {'a new' if fresh else 'the'} run CA; server certificate for {', '.join(self.names)}")
        return self.gateway_ctx, ssl.create_default_context(cafile=ca_path)

    def _issue_gateway_certificate(self) -> None:
        """(Re)sign the gateway's certificate for ``self.names``; new connections get it."""
        cert, key = server_certificate_pem(self.ca_pem, self.ca_key, self.names)
        cert_path, key_path = os.path.join(self.tdir, "server.pem"), os.path.join(self.tdir, "server.key")
        with open(cert_path, "wb") as f:
            f.write(cert)
        write_private(key_path, key)
        assert self.gateway_ctx is not None
        self.gateway_ctx.load_cert_chain(cert_path, key_path)
        write_json_atomic(os.path.join(self.tdir, "names.json"), self.names)

    def hello(self, data: dict) -> tuple[int, dict]:
        """Answer a client wrapper's hello (in a gateway worker thread): status code, JSON answer.

        The MAC (run token) says it comes from a host of the run; then the address it dials joins
        the certificate, its SuperNodes' keys are registered, and the answer carries the CA
        certificate under a MAC over the client's nonce."""
        nonce, dial, nodes = data.get("nonce"), data.get("dial"), data.get("nodes")
        if not (isinstance(nonce, str) and 16 <= len(nonce) <= 128 and isinstance(dial, str)
                and isinstance(nodes, dict) and len(nodes) <= self.expected):
            return 400, {"error": "a hello has nonce, dial and nodes"}
        nodes_json = json.dumps(nodes, sort_keys=True)
        if not mac_ok(self.token, data.get("mac"), nonce.encode(), dial.encode(), nodes_json.encode()):
            return 403, {"error": "bad MAC: not a host of this run"}
        dial = dial.strip("[]")
        if not san_names([dial]):
            return 400, {"error": f"{dial!r} is not an IP address or DNS name"}
        with self.lock:
            if dial not in self.names:
                self.names.append(dial)
                self._issue_gateway_certificate()
                log(ROLE, f"TLS: a client dials {dial}: the server certificate names it now")
            todo = {}
            for pid, pub in nodes.items():
                why = self.check_node(str(pid), pub)
                if why:
                    return (409 if "already" in why else 400), {"error": why}
                if str(pid) not in self.nodes:
                    todo[str(pid)] = str(pub).strip()
            self.nodes.update({pid: "" for pid in todo})  # reserved while registering ("" matches no key)
        # registering runs `flwr` once per key (about a second each): in parallel, outside the lock
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(zip(todo, pool.map(lambda item: self.register_node(*item), todo.items())))
        with self.lock:
            for pid, why in results.items():
                if why:
                    self.nodes.pop(pid, None)
                else:
                    self.nodes[pid] = todo[pid]
            write_json_atomic(os.path.join(self.fdir, "nodes.json"), {k: v for k, v in self.nodes.items() if v})
        failed = [why for why in results.values() if why]
        if failed:
            return 503, {"error": "; ".join(failed)}
        return 200, {"ca": self.ca_pem.decode(), "mac": mac(self.token, nonce.encode(), self.ca_pem)}

    def check_node(self, pid: str, pub: object) -> str | None:
        """None when partition ``pid`` may have the key ``pub`` (new, or the one it has: a restarted
        client), else why not. The caller holds the lock."""
        if not (pid.isdigit() and int(pid) < self.expected):
            return f"partition id {pid!r} is not one of this run's 0..{self.expected - 1}"
        if not (isinstance(pub, str) and len(pub) < 4096 and node_public_key_ok(pub)):
            return f"partition {pid}: not an OpenSSH EC public key"
        if pid in self.nodes and self.nodes[pid] != pub.strip():
            return f"partition {pid} is already registered with another key"
        return None

    def register_node(self, pid: str, pub: str) -> str | None:
        """Register partition ``pid``'s SuperNode key with the SuperLink; None, or why it failed."""
        path = os.path.join(self.fdir, "nodes", f"partition-{pid}.pub")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="ascii") as f:
            f.write(pub + "\n")
        try:
            node_id = self.register(path, f"partition-{pid}")
        except RuntimeError as exc:
            return f"partition {pid}: registering its SuperNode failed: {exc}"
        log(ROLE, f"SuperNode of partition {pid} registered (node {node_id})")
        return None
