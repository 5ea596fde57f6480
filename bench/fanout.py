"""Fan-out benchmark: what ``fedctl exec -- true`` costs on 1, 10 and 50 hosts.

Starts real sshd processes on loopback (tests/integration/sshd.py) and times, for each fleet size,
connect + ``true`` + close with:
  fedctl     Fleet(hosts).run("true")             (one persistent connection per host, pooled threads)
  fabric     fabric.ThreadingGroup(...).run("true")
  serial     a plain paramiko loop, one host after the other

    python bench/fanout.py [--sizes 1,10,50] [--repeat 3]

Prints a table of median seconds and ratios. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paramiko  # noqa: E402

from fedctl.fleet import Fleet  # noqa: E402
from tests.integration.sshd import SshdFleet, sshd_available  # noqa: E402


class _TrustAll(paramiko.MissingHostKeyPolicy):
    """Bench-only: the serial baseline does no host-key bookkeeping (flatters the baseline)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def bench_fedctl(cluster: SshdFleet, n: int, known_hosts: str) -> float:
    hosts = cluster.host_infos()[:n]
    t0 = time.perf_counter()
    with Fleet(hosts, known_hosts=known_hosts) as fleet:
        res = fleet.run("true")
    elapsed = time.perf_counter() - t0
    if not res.ok:
        raise RuntimeError(f"fedctl failed: {[r.error for r in res.failed]}")
    return elapsed


def bench_fabric(cluster: SshdFleet, n: int) -> float:
    from fabric import Connection, ThreadingGroup

    t0 = time.perf_counter()
    conns = [
        Connection(h.address, user=cluster.user, port=h.port,
                   connect_kwargs={"key_filename": cluster.identity_file})
        for h in cluster.hosts[:n]
    ]
    group = ThreadingGroup.from_connections(conns)
    try:
        res = group.run("true", hide=True)
    finally:
        group.close()
    elapsed = time.perf_counter() - t0
    if res.failed:
        raise RuntimeError(f"fabric failed: {res.failed}")
    return elapsed


def bench_serial(cluster: SshdFleet, n: int) -> float:
    t0 = time.perf_counter()
    for h in cluster.hosts[:n]:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_TrustAll())
        client.connect(h.address, port=h.port, username=cluster.user, key_filename=cluster.identity_file,
                       timeout=10, allow_agent=False, look_for_keys=False)
        try:
            _, stdout, _ = client.exec_command("true")
            if stdout.channel.recv_exit_status() != 0:
                raise RuntimeError(f"serial failed on {h.name}")
        finally:
            client.close()
    return time.perf_counter() - t0


def median_of(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-serial", action="store_true", help="skip the serial loop (slow at 50 hosts)")
    ap.add_argument("--no-reexec", action="store_true", help="run sshd with -r (less sshd CPU per connection)")
    args = ap.parse_args()
    reason = sshd_available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fedctl-bench-") as tmp:
        os.environ["HOME"] = tmp  # no ~/.ssh config/keys/known_hosts of the developer in the numbers
        cluster = SshdFleet(Path(tmp) / "sshd", max(sizes), first_address=100 if max(sizes) < 150 else 2,
                           no_reexec=args.no_reexec)
        with cluster:
            known_hosts = str(Path(tmp) / "known_hosts")
            bench_fedctl(cluster, max(sizes), known_hosts)  # warm up sshd and pin the keys once
            rows = []
            for n in sizes:
                fed = median_of(lambda: bench_fedctl(cluster, n, known_hosts), args.repeat)
                fab = median_of(lambda: bench_fabric(cluster, n), args.repeat)
                ser = float("nan") if args.no_serial else median_of(lambda: bench_serial(cluster, n), args.repeat)
                rows.append((n, fed, fab, ser))
    base = rows[0][1]
    print(f"median of {args.repeat} runs, connect + `true` + close, {os.cpu_count()} CPU cores, loopback sshd")
    print(f"{'hosts':>5} | {'fedctl s':>8} | {'ThreadingGroup s':>16} | {'serial s':>8} | "
          f"{'fedctl/1-host':>13} | {'fedctl/TG':>9} | {'serial/fedctl':>13}")
    print("-" * 96)
    for n, fed, fab, ser in rows:
        print(f"{n:>5} | {fed:>8.3f} | {fab:>16.3f} | {ser:>8.3f} | {fed / base:>13.2f} | "
              f"{fed / fab:>9.2f} | {ser / fed:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
