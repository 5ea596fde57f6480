"""Echo payload client: says hello to the server with the run token and its ids, waits for the end.

Exit 0 when the server closes the connection (normally after "bye"), 1 when the server stays
unreachable for --connect-timeout seconds, 2 when the server rejects the token.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_common import log, read_token  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--server", required=True, help="ADDR:PORT")
    p.add_argument("--client-ids", required=True, help="comma list, e.g. 0,1,2")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    role = f"client {args.client_ids}"
    host, _, port = args.server.rpartition(":")
    host = host.strip("[]")
    token = read_token(args.token_file)
    deadline = time.time() + args.connect_timeout
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=10)
            break
        except OSError as exc:
            if time.time() > deadline:
                log(role, f"server {args.server} unreachable for {args.connect_timeout:.0f}s: {exc}")
                return 1
            time.sleep(0.2)
    f = sock.makefile("r", encoding="utf-8", newline="\n")
    sock.sendall(f"{token}\nhello {args.client_ids}\n".encode())
    answer = f.readline().strip()
    if answer != "ok":
        log(role, f"server rejected the hello ({answer or 'connection closed'})")
        return 2
    log(role, f"connected to {args.server}")
    sock.settimeout(None)
    last = ""
    try:
        for line in f:
            last = line.strip()
    except OSError:
        pass
    log(role, "run over" if last == "bye" else "server closed the connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
