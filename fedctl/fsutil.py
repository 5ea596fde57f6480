"""fedctl's one way to replace a file on this machine: readers see the old file or the new one, never a part.

A temp file is made in the same folder (a rename is atomic only within one file system), filled,
flushed and fsynced, renamed over the target, and then the folder itself is fsynced: without that last
step a crash shortly after the rename can bring back the old directory entry (or none), which for
``state.json`` would forget that hosts were created. A failure at any point before the rename removes
the temp file and leaves the old file as it was.

Files written on a host go through the connectors (``Connector.put``); this is for fedctl's own files
(the state, results, fetched logs) and the local connector.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

#: how a temp file is named: hidden, next to its target, recognisable as fedctl's
TMP_MARK = ".fedctl-tmp-"

# fsync on a folder is refused by some file systems (EINVAL on a few network/FUSE ones); the rename is
# done either way and there is nothing more this machine can do to make it durable there.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF}


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in ``directory`` durable (no-op where the file system refuses)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int | None = 0o644) -> Iterator[BinaryIO]:
    """A binary file to fill; on a normal exit it replaces ``path`` (durably), on an error it is removed.

    ``mode`` is set before the first byte is written, so a secret (``0o600``) is never readable by
    others, not even for a moment; ``None`` gives what a new file gets under the umask. The folder must
    exist."""
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    tmp = os.path.join(directory, f".{base}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    # 0600 until fchmod: os.open's mode is filtered by the umask, the caller's mode must win
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 if mode is None else 0o600)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int | None = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) through ``atomic_writer``; missing
    parent folders are created."""
    Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
