"""Helpers shared by the flower payload's server and client wrappers (run on the hosts).

Stdlib + PyYAML + ``cryptography`` (both are dependencies of ``flwr``, so a host that can run Flower
has them). Nothing here imports flwr: the wrappers drive Flower through its commands
(``flower-superlink``, ``flower-supernode``, ``flwr``), the interface Flower keeps stable.

The run's trust (docs/flower.md, "Trust"): the server host makes a random run CA per run; its key
stays in the server's run dir. A client learns the CA certificate from a copy in its run dir (put
there by fedctl, or the server's own on the server host), else from the server's answer to its
hello, which carries an HMAC under the run token (so a stranger cannot hand a client a CA). The
hello also registers the client's SuperNode public keys (Flower's node authentication: a SuperNode
whose key was not registered for the run is refused) and the address the client dials, which the
server then puts into its certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable

def log(role: str, message: str) -> None:
    # plain: a message may quote a Flower command's coloured output (server.log, client-*.log)
    print(f"{time.strftime('%H:%M:%S')} [{role}] {plain(message)}", flush=True)


def read_config(path: str) -> dict:
    import yaml  # noqa: PLC0415 - a dependency of flwr

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def read_token(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


def write_json_atomic(path: str, data: object) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def flower_settings(cfg: dict) -> dict:
    """The ``flower`` section with the validator's defaults (the config on the host is resolved
    already; the defaults only matter for a hand-written config)."""
    from flower_config import DEFAULTS  # noqa: PLC0415 - sibling file in the payload folder

    return {**DEFAULTS["flower"], **(cfg.get("flower") or {})}


# -- commands -----------------------------------------------------------------------------------------
def flower_tool(name: str) -> str:
    """The path of a Flower command (``flower-superlink``...) next to this Python, else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH: is flwr installed on "
                         f"{socket.gethostname()}? (pip install 'flwr>=1.22')")
    return found


def tool_env(extra: dict | None = None) -> dict:
    """The environment for Flower's processes: this Python's bin folder first on PATH (SuperLink and
    SuperNode start ``flower-superexec`` by name), no telemetry, the extra variables."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# Flower's logger colours its level names whether or not its output is a terminal (flwr 1.42 has no
# switch for it); the logs are files read as text (fedctl logs, results), so the codes are taken out.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_PUMPS: dict[int, threading.Thread] = {}


def plain(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


def start_logged(cmd: list[str], log_path: str, **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr appended to ``log_path`` as plain text (a thread copies
    them line by line without ANSI codes; the processes ``cmd`` starts write to the same pipe)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    thread = threading.Thread(target=_pump, args=(proc.stdout, log_path), daemon=True,
                              name=f"log {os.path.basename(log_path)}")
    thread.start()
    _PUMPS[proc.pid] = thread
    return proc


def _pump(stream: Any, log_path: str) -> None:
    out = open(log_path, "a", encoding="utf-8")
    with stream:
        for raw in iter(stream.readline, b""):
            if out is None:
                continue  # keep reading: a full pipe would block the process
            try:
                out.write(plain(raw.decode("utf-8", errors="replace")))
                out.flush()
            except OSError as exc:  # disk full: say so once, stop writing, keep the process going
                print(f"cannot write {log_path}: {exc}; its further output is dropped", file=sys.stderr, flush=True)
                out.close()
                out = None
    if out is not None:
        out.close()


def drain_log(proc: subprocess.Popen, timeout: float = 2.0) -> None:
    """Wait (at most ``timeout`` s) until what ``proc`` wrote is in its log: before quoting the log
    of a process that exited (a process it started may hold the pipe open longer)."""
    thread = _PUMPS.get(proc.pid)
    if thread is not None:
        thread.join(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen | None, grace_s: float = 5.0) -> None:
    """TERM a child started with ``start_new_session`` (its whole group), KILL it after ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((15, grace_s), (9, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_listening(proc: subprocess.Popen, port: int, log_path: str, timeout: float) -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``; RuntimeError with its log
    tail when it exits first, or after ``timeout``."""
    deadline = time.time() + timeout
    name = os.path.basename(str(proc.args[0])) if isinstance(proc.args, list) else "the process"
    while time.time() < deadline:
        if proc.poll() is not None:
            drain_log(proc)
            raise RuntimeError(f"{name} exited at start: " + tail(log_path, 10))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen within {timeout:.0f} s")


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


# -- TLS ----------------------------------------------------------------------------------------------
# The run CA is random, made on the server host per run; its private key never leaves the server's
# run dir (0600). Clients get only its certificate. HELLO_LABEL keys the MACs of the client hello.
HELLO_LABEL = b"fedctl-flower-hello-v1"


def _name(common_name: str):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedctl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca() -> tuple[bytes, bytes]:
    """(certificate, private key) PEMs of a fresh random run CA (P-256, 30 days)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    name = _name("fedctl run CA " + ski.digest.hex()[:16])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_certificate_pem(ca_cert_pem: bytes, ca_key_pem: bytes, names: Iterable[str]) -> tuple[bytes, bytes]:
    """(certificate, private key) of a server, signed by the run CA, for ``names`` (IPs or DNS
    names; invalid ones are left out). The key is fresh."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[Any] = []
    for n in san_names(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedctl flower server")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


_DNS_LABEL = re.compile(r"\A(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def valid_name(name: str) -> bool:
    """An IP address or a DNS name a certificate may carry (what a client may say it dials)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return 0 < len(name) <= 253 and all(_DNS_LABEL.match(p) for p in name.rstrip(".").split("."))


def san_names(names: Iterable[str]) -> list[str]:
    """``names`` without duplicates and without what cannot be a certificate name."""
    return [n for n in dict.fromkeys(str(x).strip().strip("[]") for x in names) if n and valid_name(n)]


def certificate_names(cert_pem: bytes) -> list[str]:
    """The subject alternative names (IPs and DNS names) of a PEM certificate."""
    from cryptography import x509  # noqa: PLC0415

    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(v) for v in san.value.get_values_for_type(x509.IPAddress)] + list(
        san.value.get_values_for_type(x509.DNSName))


def mac(token: bytes, *parts: bytes) -> str:
    """HMAC-SHA256 (hex) of ``parts`` under the run token: the client hello and its answer carry one,
    so a stranger (no token) can neither register a SuperNode key nor hand a client a CA."""
    h = hmac.new(token, HELLO_LABEL, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def mac_ok(token: bytes, given: object, *parts: bytes) -> bool:
    return isinstance(given, str) and hmac.compare_digest(mac(token, *parts), given)


def new_node_key() -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key) of a SuperNode (P-384, what Flower's node
    authentication takes: ``--auth-supernode-private-key``, ``flwr supernode register``)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return priv, pub


def node_public_key_ok(pub: str) -> bool:
    """An OpenSSH NIST EC public key (what ``flwr supernode register`` accepts)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    try:
        key = serialization.load_ssh_public_key(pub.encode("ascii"))
    except (ValueError, UnicodeError, TypeError):
        return False
    return isinstance(key, ec.EllipticCurvePublicKey)


def host_names() -> list[str]:
    """Names and addresses this host may be reached by: loopback, hostname, FQDN, every interface
    address (``ip -o addr`` when present, else the resolver)."""
    names = ["127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn()]
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[2] in ("inet", "inet6"):
                names.append(parts[3].split("/")[0].split("%")[0])
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.append(str(info[4][0]).split("%")[0])
    except OSError:
        pass
    return [n for n in dict.fromkeys(names) if n]


def write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
