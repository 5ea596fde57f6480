"""Binary tensor messages over plain HTTP (stdlib only), and the run-token check.

Wire format of one message (no pickle, no JSON number lists):

    b"FTF1" | u32 little-endian header length | header (UTF-8 JSON, space-padded so the data
    starts 64-byte aligned) | raw little-endian tensor bytes, concatenated in header order

header = {"meta": {...small scalars...}, "tensors": [{"name": "w/0", "dtype": "float32",
"shape": [784, 200]}, ...]}. Decoding never copies: tensors are numpy views into the body.
"""
from __future__ import annotations

import hmac
import http.client
import json
import math
import os
import stat
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"FTF1"
ALLOWED_DTYPES = {"float16", "float32", "float64", "int32", "int64", "uint8"}
MAX_HEADER = 1 << 20
MAX_DIMS = 32            # numpy's own limit is 64; our tensors have at most 4
TOKEN_HEADER = "Authorization"


class TransportError(ValueError):
    """A malformed message: the reason is safe to log and to send back."""


@dataclass
class Message:
    meta: dict
    names: list[str]
    tensors: list[np.ndarray]
    offsets: list[int]          # byte offset of each tensor in `body`
    body: bytes | memoryview

    def group(self, prefix: str) -> list[np.ndarray]:
        return [t for n, t in zip(self.names, self.tensors) if n.startswith(prefix + "/")]

    def flat(self, prefix: str) -> np.ndarray:
        """All tensors named prefix/* as one flat vector: a view when contiguous and one dtype."""
        idx = [i for i, n in enumerate(self.names) if n.startswith(prefix + "/")]
        if not idx:
            return np.empty(0, np.float32)
        ts = [self.tensors[i] for i in idx]
        dt = ts[0].dtype
        contiguous = all(t.dtype == dt for t in ts) and all(
            self.offsets[idx[j]] + ts[j].nbytes == self.offsets[idx[j + 1]] for j in range(len(idx) - 1))
        if contiguous:
            count = sum(t.size for t in ts)
            return np.frombuffer(self.body, dtype=dt, count=count, offset=self.offsets[idx[0]])
        return np.concatenate([t.reshape(-1) for t in ts])


def encode(meta: dict, groups: dict[str, list[np.ndarray]]) -> bytes:
    """One message from named groups of arrays (each sent as group/i)."""
    specs, bufs = [], []
    for g, arrays in groups.items():
        for i, a in enumerate(arrays):
            a = np.ascontiguousarray(a)
            if a.dtype.name not in ALLOWED_DTYPES:
                raise TransportError(f"dtype {a.dtype} cannot be sent")
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            specs.append({"name": f"{g}/{i}", "dtype": a.dtype.name, "shape": list(a.shape)})
            bufs.append(memoryview(a).cast("B") if a.size else b"")
    header = json.dumps({"meta": meta, "tensors": specs}, separators=(",", ":")).encode()
    pad = (-(8 + len(header))) % 64
    header += b" " * pad
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *bufs])


def decode(body: bytes | memoryview, max_elements: int | None = None) -> Message:
    """Parse and check a message; raises TransportError (a ValueError) on anything malformed.

    Sizes are computed with Python integers, so a shape like [2**40, 2**40, 2**40] cannot wrap
    around in int64 and slip past the length checks. `max_elements` caps the elements of all
    tensors together (the server passes what its model can hold).
    """
    if len(body) < 8 or bytes(body[:4]) != MAGIC:
        raise TransportError("not a fedtf message (bad magic)")
    (hlen,) = struct.unpack("<I", bytes(body[4:8]))
    if hlen > MAX_HEADER or 8 + hlen > len(body):
        raise TransportError("header length out of range")
    try:
        header = json.loads(bytes(body[8:8 + hlen]))
        meta, specs = header["meta"], header["tensors"]
    except (ValueError, KeyError, TypeError) as e:
        raise TransportError(f"unreadable header: {e}") from None
    if not isinstance(meta, dict) or not isinstance(specs, list):
        raise TransportError("header must hold a meta mapping and a tensor list")
    pos, names, tensors, offsets, elements = 8 + hlen, [], [], [], 0
    for s in specs:
        try:
            name, dtype, shape = str(s["name"]), s["dtype"], s["shape"]
        except (KeyError, TypeError):
            raise TransportError("tensor spec needs name, dtype, shape") from None
        if dtype not in ALLOWED_DTYPES:
            raise TransportError(f"tensor {name}: dtype {dtype!r} not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape):
            raise TransportError(f"tensor {name}: bad shape {str(shape)[:80]}")
        dt = np.dtype(dtype).newbyteorder("<")
        count = math.prod(shape)  # exact: no int64 overflow
        elements += count
        if max_elements is not None and elements > max_elements:
            raise TransportError(f"tensor {name}: shape {shape} takes the message past the model's "
                                 f"{max_elements} values")
        nbytes = count * dt.itemsize
        if nbytes > len(body) - pos:
            raise TransportError(f"tensor {name}: shape {shape} needs {nbytes} bytes, "
                                 f"{len(body) - pos} are left in the body")
        tensors.append(np.frombuffer(body, dtype=dt, count=count, offset=pos).reshape(shape))
        names.append(name)
        offsets.append(pos)
        pos += nbytes
    if pos != len(body):
        raise TransportError(f"{len(body) - pos} trailing bytes after the tensors")
    return Message(meta, names, tensors, offsets, body)


def read_token(path: str) -> tuple[bytes, str | None]:
    """The run token and a warning when the file is readable by others (never the token itself)."""
    st = os.stat(path)
    warning = None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"token file {path} has mode {oct(st.st_mode & 0o777)}; expected 0600"
    with open(path, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token, warning


def load_token(path: str, role: str) -> bytes | None:
    """``read_token`` for server.py/client.py: problems are logged for ``role``; None means exit."""
    from fedtf.metrics import log  # noqa: PLC0415 - keep the codec module free of logging setup

    try:
        token, warning = read_token(path)
    except (OSError, ValueError) as e:
        log(role, f"cannot read the token file: {e}", "error")
        return None
    if warning:
        log(role, warning, "warning")
    return token


def token_ok(header_value: str | None, token: bytes) -> bool:
    if not header_value or not header_value.startswith("Bearer "):
        return False
    return hmac.compare_digest(header_value[7:].strip().encode(), token)


class Connection:
    """A keep-alive HTTP connection to the server; one per thread."""

    def __init__(self, host: str, port: int, token: bytes, timeout: float = 60.0) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        """Send one request; raises OSError / http.client.HTTPException when unreachable.

        A kept-alive connection the server closed while it sat idle (its read timeout) fails on
        first use; that one case is retried at once on a fresh connection.
        """
        reused = self._conn is not None and self._conn.sock is not None
        try:
            return self._request(method, path, body, timeout, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._request(method, path, body, timeout, headers)

    def _request(self, method: str, path: str, body: bytes | None, timeout: float | None,
                 headers: dict | None) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        elif self._conn.sock is not None:
            self._conn.sock.settimeout(timeout or self.timeout)
        else:
            self._conn.timeout = timeout or self.timeout
        h = {TOKEN_HEADER: "Bearer " + self.token.decode(), "Content-Type": "application/octet-stream"}
        h.update(headers or {})
        try:
            self._conn.request(method, path, body=body, headers=h)
            resp = self._conn.getresponse()
            data = resp.read()
            return resp.status, data
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
