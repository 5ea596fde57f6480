"""Helpers shared by the flower payload's server and client wrappers (run on the hosts).

Stdlib + PyYAML + ``cryptography`` (both are dependencies of ``flwr``, so a host that can run Flower
has them). Nothing here imports flwr: the wrappers drive Flower through its commands
(``flower-superlink``, ``flower-supernode``, ``flwr``), the interface Flower keeps stable.

The run's TLS: fedctl gives every host of a run the same secret token (a 0600 file). The run CA's
private key is derived from it (HMAC-SHA256 -> a P-256 scalar), so the server and every client
build the same CA without a second channel: the server signs its certificate with it, the clients
trust it. Whoever holds the token is a host of the run already; nobody else can forge the CA.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable

CA_LABEL = b"fedctl-flower-ca-v1"


def log(role: str, message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{role}] {message}", flush=True)


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


def tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


# -- TLS ----------------------------------------------------------------------------------------------
def _ca_key(token: bytes):
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order
    scalar = int.from_bytes(hmac.new(token, CA_LABEL, hashlib.sha256).digest(), "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _name(common_name: str):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedctl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_certificate_pem(token: bytes) -> bytes:
    """The run CA's certificate. Every host builds the same one (same key, name, serial, dates);
    only the signature bytes differ, and a trust anchor's self-signature is not what TLS checks."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415

    key = _ca_key(token)
    pub = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    name = _name("fedctl run CA " + ski.digest.hex()[:16])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(pub)
        .serial_number(int.from_bytes(ski.digest[:8], "big") | 1)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2124, 1, 1, tzinfo=datetime.timezone.utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def server_certificate_pem(token: bytes, names: Iterable[str]) -> tuple[bytes, bytes]:
    """(certificate, private key) of the server, signed by the run CA, for ``names`` (IPs or DNS
    names). The key is fresh: only the CA key derives from the token."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    ca_key = _ca_key(token)
    ca = x509.load_pem_x509_certificate(ca_certificate_pem(token))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[Any] = []
    for n in dict.fromkeys(names):
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
