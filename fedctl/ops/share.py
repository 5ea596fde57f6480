"""Files the server hands to its clients through fedctl, not through the network.

A payload's manifest may list ``server.share``: small files the server writes into its run dir
before it is ready (the Flower payload's run CA certificate). ``start`` reads each one from the
server host over fedctl's own SSH connection and writes it, under the same name, into every client
host's run dir before any client starts. A client then trusts what fedctl delivered, not an answer
that another host of the run (which holds the token) could forge on the network.
"""

from __future__ import annotations

import posixpath
from typing import Any

from fedctl.errors import RemoteError
from fedctl.shell import quote

#: a shared file is a certificate or a key list, never data: anything bigger is refused
MAX_SHARED_BYTES = 64 * 1024


def read_shared(conn: Any, path: str) -> bytes | None:
    """The server's file at ``path`` (at most MAX_SHARED_BYTES), or None when it does not exist."""
    res = conn.run(f"test -f {quote(path)} && head -c {MAX_SHARED_BYTES + 1} -- {quote(path)}", timeout=30)
    if not res.ok:
        return None
    data = res.stdout.encode("utf-8", "surrogateescape")
    if len(data) > MAX_SHARED_BYTES:
        raise RemoteError(f"{path}: a shared file must be at most {MAX_SHARED_BYTES} bytes")
    return data


def share_server_files(fleet: Any, manifest: Any, server_conn: Any, server_run_dir: str,
                       client_run_dirs: dict[str, str]) -> dict[str, str]:
    """Copy every ``server.share`` file from the server's run dir into each client host's run dir
    (``client_run_dirs``: host name -> its run dir). A file the server did not write is skipped
    (the payload decides whether it needed it). Returns host -> error for the hosts that failed."""
    files: list[tuple[str, bytes]] = []
    for template in manifest.server.share:
        name = template[len("{run_dir}/"):]  # validated by the manifest reader: a plain file name
        data = read_shared(server_conn, posixpath.join(server_run_dir, name))
        if data is not None:
            files.append((name, data))
    if not files or not client_run_dirs:
        return {}

    def put(conn: Any) -> None:
        run_dir = client_run_dirs[conn.host.name]
        for name, data in files:
            conn.put_bytes(data, posixpath.join(run_dir, name), mode=0o644)

    return {r.host: (r.error or "could not write the server's shared files")
            for r in fleet.map(put, hosts=sorted(client_run_dirs)) if not r.ok}
