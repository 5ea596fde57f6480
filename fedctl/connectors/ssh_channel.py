"""One started command on one paramiko channel, pumped until it exits or its deadline passes.

The SSH connector opens the channel and starts the command; this module reads both streams, feeds
stdin, waits for the exit status and, past the deadline, asks sshd to kill the command and hangs up.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import paramiko

from fedctl.connectors.base import CommandResult

log = logging.getLogger("fedctl.ssh")  # the connector's logger: one name to filter for all of SSH

_CHUNK = 32768


def collect_result(chan: paramiko.Channel, stdin: bytes | None, start: float, timeout: float | None) -> CommandResult:
    """Wait for the command started on ``chan`` at ``start`` (``time.monotonic()``); after ``timeout``
    seconds the command is killed, the channel closed, and the result has ``exit_code=-1,
    timed_out=True`` with the output so far. The caller closes ``chan`` otherwise."""
    out: list[bytes] = []
    err: list[bytes] = []
    # Separate readers for both streams (and a writer for stdin): a command that fills stderr
    # while we wait on stdout must not block on a full window.
    readers = [
        threading.Thread(target=_drain, args=(chan.recv, out), daemon=True),
        threading.Thread(target=_drain, args=(chan.recv_stderr, err), daemon=True),
    ]
    if stdin:
        readers.append(threading.Thread(target=_feed, args=(chan, stdin), daemon=True))
    else:
        chan.shutdown_write()
    for t in readers:
        t.start()
    deadline = None if timeout is None else start + timeout
    timed_out = False
    for t in readers:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            timed_out = True
            break
    if not timed_out:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        timed_out = not chan.status_event.wait(left)
    if timed_out:
        _signal(chan, "KILL")  # ask sshd to kill the command (OpenSSH >= 7.9), then hang up
        chan.close()
        for t in readers:
            t.join(1.0)
        code = -1
    else:
        code = chan.recv_exit_status()
    return CommandResult(
        exit_code=code,
        stdout=b"".join(out).decode("utf-8", "replace"),
        stderr=b"".join(err).decode("utf-8", "replace"),
        duration=time.monotonic() - start,
        timed_out=timed_out,
    )


def _drain(recv: Callable[[int], bytes], sink: list[bytes]) -> None:
    try:
        while True:
            chunk = recv(_CHUNK)
            if not chunk:
                return
            sink.append(chunk)
    except (OSError, EOFError, paramiko.SSHException):
        return  # channel closed under us (timeout or dead connection): keep what we have


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as e:
        log.debug("stdin not fully sent: %s", e)  # the command may exit without reading stdin


def _signal(chan: paramiko.Channel, name: str) -> None:
    """Send an RFC 4254 ``signal`` request; paramiko has no API for it, and a timed-out command
    should not be left running on the host."""
    from paramiko.common import cMSG_CHANNEL_REQUEST

    try:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(name)
        chan.transport._send_user_message(m)  # type: ignore[union-attr]  # noqa: SLF001
    except (OSError, EOFError, paramiko.SSHException, AttributeError) as e:
        log.debug("signal %s not sent: %s", name, e)
