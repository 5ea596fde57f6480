"""What an .npz data file holds, read from its array headers alone (pure python: no numpy).

fedctl's light CLI validates a config with it before any host is touched (fedtf/config.py), and
data.py checks a file with it before np.load reads a byte of array data: a file whose arrays are
the wrong shape or type, or whose headers promise more than the zip holds, is refused with the key
and what would be valid, and np.load never allocates what a bad header asks for.
"""
from __future__ import annotations

import ast
import struct
import zipfile
from typing import IO, NamedTuple

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPY_MAX_HEADER = 10000  # numpy's own limit on an .npy header (np.load's max_header_size)
#: CIFAR-shaped arrays, as keras.datasets.cifar10.load_data() returns them
CIFAR_IMAGE = (32, 32, 3)
CIFAR_VALID = {"x": "uint8 [N, 32, 32, 3]", "y": "integers [N] or [N, 1]"}


class NpzProblem(ValueError):
    """The file is not a usable data set; the message names the file, the key and what is valid."""


class ArrayInfo(NamedTuple):
    descr: str     # numpy's dtype string, e.g. "|u1", "<i8", "<f4"
    shape: tuple
    fortran: bool
    stored: int    # the member's uncompressed size in the zip
    header: int    # bytes of the .npy preamble and header

    @property
    def kind(self) -> str:
        """numpy's dtype kind: u (unsigned), i (signed), f (float), b (bool), O (object) ..."""
        return self.descr[1:2] if self.descr[:1] in "<>|=" else self.descr[:1]

    @property
    def itemsize(self) -> int | None:
        digits = self.descr.lstrip("<>|=")[1:]
        return int(digits) if digits.isdigit() else None

    def nbytes(self) -> int | None:
        n = 1
        for d in self.shape:
            n *= d
        return None if self.itemsize is None else n * self.itemsize


def npy_header(f: IO[bytes]) -> tuple[str, bool, tuple, int] | None:
    """(descr, fortran_order, shape, header bytes) of an .npy stream (format versions 1-3), or
    None when it is not one we can read."""
    head = f.read(10)
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        return None
    if head[6] == 1:
        size, pre = struct.unpack("<H", head[8:10])[0], 10
    else:
        size, pre = struct.unpack("<I", head[8:10] + f.read(2))[0], 12
    if size > NPY_MAX_HEADER:
        return None
    try:
        header = ast.literal_eval(f.read(size).decode("utf-8"))
        shape = tuple(int(n) for n in header["shape"])
        descr, fortran = header["descr"], bool(header["fortran_order"])
    except (ValueError, SyntaxError, TypeError, KeyError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    if not isinstance(descr, str) or not all(n >= 0 for n in shape):
        return None  # a structured dtype (a list) is no data set of ours either
    return descr, fortran, shape, pre + size


def read_infos(path: str, keys: tuple[str, ...] = NPZ_KEYS) -> dict[str, ArrayInfo] | None:
    """The headers of `keys` in the .npz at `path`.

    None when a header cannot be read here (an encrypted or oddly compressed member: np.load
    judges); NpzProblem when the file is no zip or lacks a key. OSError when it cannot be opened."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise NpzProblem(f"{path} is not an .npz file (a zip of .npy arrays, as np.savez writes)") from None
    out: dict[str, ArrayInfo] = {}
    with zf:
        names = set(zf.namelist())
        missing = [k for k in keys if f"{k}.npy" not in names]
        if missing:
            raise NpzProblem(f"{path} lacks {', '.join(missing)} (an .npz needs {', '.join(NPZ_KEYS)})")
        for key in keys:
            try:
                with zf.open(f"{key}.npy") as f:
                    got = npy_header(f)
            except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError):
                return None
            if got is None:
                return None
            descr, fortran, shape, header = got
            out[key] = ArrayInfo(descr, shape, fortran, zf.getinfo(f"{key}.npy").file_size, header)
    return out


def check_bounded(path: str, infos: dict[str, ArrayInfo]) -> None:
    """Every array is plain numbers and its header agrees with the bytes the zip stores for it, so
    np.load allocates no more than the file holds (no object arrays: they would need pickle)."""
    for key, info in infos.items():
        if info.kind not in ("u", "i", "f", "b"):
            raise NpzProblem(f"{path}: {key} has dtype {info.descr!r} (valid: integer or float arrays)")
        want = info.nbytes()
        if want is None or info.header + want != info.stored:
            raise NpzProblem(f"{path}: {key}'s header says shape {info.shape} of {info.descr!r}, which "
                             f"does not match the {info.stored} bytes stored for it (a damaged file?)")


def check_cifar(path: str, infos: dict[str, ArrayInfo]) -> int:
    """The arrays are CIFAR-shaped (x: uint8 [N, 32, 32, 3]; y: integers [N] or [N, 1], N the same
    as its x), as keras.datasets.cifar10.load_data() returns them. Returns the training examples."""
    for split in ("train", "test"):
        x, y = infos[f"x_{split}"], infos[f"y_{split}"]
        if x.kind != "u" or x.itemsize != 1 or len(x.shape) != 4 or x.shape[1:] != CIFAR_IMAGE:
            raise NpzProblem(f"{path}: x_{split} is {x.descr!r} of shape {x.shape} "
                             f"(valid: {CIFAR_VALID['x']}, as keras.datasets.cifar10 gives)")
        n = x.shape[0]
        if y.kind not in ("u", "i") or y.shape not in ((n,), (n, 1)):
            raise NpzProblem(f"{path}: y_{split} is {y.descr!r} of shape {y.shape} "
                             f"(valid: {CIFAR_VALID['y']} with N = {n}, the images in x_{split})")
        if n == 0:
            raise NpzProblem(f"{path}: x_{split} holds no images")
    return infos["x_train"].shape[0]
