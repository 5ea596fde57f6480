"""The sshd command documented in inventories/loopback.yaml gives hosts fedctl can copy files to.

The command is read from the file's comment and run as written (only the folder, the port and the
authorized keys file are the test's), so the documentation cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from fedctl.connectors.base import HostInfo
from fedctl.connectors.ssh import SSHConnector
from tests.integration.sshd import PRIVSEP_DIR, _current_user, _free_port, sshd_available
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def _documented_sshd_command() -> str:
    text = (REPO / "inventories" / "loopback.yaml").read_text()
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("/usr/sbin/sshd"))
    cmd = []
    for ln in lines[start:]:
        ln = re.sub(r"\s+#.*$", "", ln)  # a trailing comment
        cont = ln.endswith("\\")
        cmd.append(ln.rstrip("\\").strip())
        if not cont:
            break
    return " ".join(cmd)


def test_the_documented_sshd_serves_sftp(tmp_path):
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    if os.geteuid() == 0:
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "client_key")], check=True)
    auth = tmp_path / "authorized_keys"
    auth.write_text((tmp_path / "client_key.pub").read_text())
    address, port = "127.0.0.60", _free_port("127.0.0.60")
    cmd = _documented_sshd_command().replace("$i", "60").replace(":2222", f":{port}")
    argv = [os.path.expandvars(a.replace("$PWD", str(tmp_path))) for a in shlex.split(cmd)]
    argv += ["-D", "-o", f"AuthorizedKeysFile={auth}", "-o", "UsePAM=no", "-o", "PermitRootLogin=yes"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        def listening() -> bool:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return True
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                return False

        wait_until(listening, 10, what=f"the documented sshd to listen on {address}:{port}")
        host = HostInfo(name="doc", address=address, port=port, user=_current_user(),
                        identity_file=str(tmp_path / "client_key"), workdir=str(tmp_path / "w"))
        src = tmp_path / "payload.txt"
        src.write_text("pushed")
        with SSHConnector(host, known_hosts=str(tmp_path / "known_hosts")) as conn:
            conn.put(str(src), str(tmp_path / "copied.txt"))
        assert (tmp_path / "copied.txt").read_text() == "pushed"
    finally:
        proc.kill()
        proc.wait()
