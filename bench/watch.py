"""Benchmark: CPU time and SSH connections of ``fedctl watch`` over 10 and 50 loopback sshd hosts.

For each fleet size it starts real sshd processes on 127.0.0.x (tests/integration/sshd.py), writes a
run state whose hosts are those sshd hosts (one "process" per host: this benchmark's own pid, so it is
alive), and keeps appending one metrics.jsonl round line per second on the server host and one log
line per second on every host. Then it runs ``python -m fedctl watch --interval 1 --duration 30`` on a
pseudo-terminal (so the full rich screen is rendered every tick) and measures the watch process:
CPU time (user+sys, whole run and steady state after the first 5 s) and the number of ESTABLISHED
TCP connections from it to the sshd ports.

    python bench/watch.py            # 10 and 50 hosts, 30 s each
    python bench/watch.py --hosts 10 --seconds 10
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from fedctl.state import HostRecord, ProcessRecord, RunState, StateStore  # noqa: E402
from tests.integration.sshd import SshdFleet, sshd_available  # noqa: E402

RUN_ID = "20990101-000000-bench"


def make_state(fleet: SshdFleet, pid: int) -> RunState:
    hosts = []
    for i, info in enumerate(fleet.host_infos()):
        run = Path(info.workdir) / "runs" / RUN_ID
        run.mkdir(parents=True, exist_ok=True)
        role = "server" if i == 0 else "client"
        label = "server" if i == 0 else "client-0"
        proc = ProcessRecord(role, 0, [] if i == 0 else [i - 1], pid=pid, log=str(run / f"{label}.log"),
                             status="running", started_at=time.time())
        hosts.append(HostRecord(info, status="provisioned", workdir=info.workdir, acquired_at=time.time(),
                                processes=[proc]))
    n = len(hosts) - 1
    return RunState(RUN_ID, phase="running", provider="static", clients=n, rounds=10_000, payload_name="bench",
                    server={"host": hosts[0].name}, hosts=hosts, started_at=time.time())


def writer(state: RunState, stop: threading.Event) -> None:
    """One round line per second on the server host, one log line per second on every host."""
    n = state.clients
    metrics = Path(state.hosts[0].workdir) / "runs" / RUN_ID / "metrics.jsonl"
    r = 0
    while not stop.wait(1.0):
        r += 1
        now = time.time()
        line = {"type": "round", "round": r, "rounds": state.rounds, "start": now - 0.9, "end": now,
                "sampled": list(range(n)), "reported": list(range(n)), "dropped": [],
                "clients": {str(c): {"response_s": 0.2 + (c % 7) / 10, "loss": 1 / r} for c in range(n)},
                "loss": 1 / r, "accuracy": 1 - 1 / (r + 1), "strategy": "fedavg"}
        with metrics.open("a") as f:
            f.write(json.dumps(line) + "\n")
        for h in state.hosts:
            with open(h.processes[0].log, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} [{h.processes[0].label}] round {r} step ok\n")


def established(proc: psutil.Process, ports: set[int]) -> int:
    try:
        conns = proc.net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in ports)


def bench(n: int, seconds: float, base: Path) -> dict:
    fleet = SshdFleet(base / f"sshd{n}", n, first_address=2).start_all()
    stop = threading.Event()
    try:
        proj = base / f"proj{n}"
        proj.mkdir(exist_ok=True)
        state = make_state(fleet, os.getpid())
        StateStore(proj / ".fedctl").save(state)
        t = threading.Thread(target=writer, args=(state, stop), daemon=True)
        t.start()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(PYTHONPATH=str(REPO), TERM="xterm-256color", HOME=str(base / "home"))
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "fedctl", "watch", "--interval", "1", "--duration", str(seconds)],
                                cwd=proj, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        drained = bytearray()

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                drained[-4096:] = data[-4096:]

        threading.Thread(target=drain, daemon=True).start()
        p = psutil.Process(proc.pid)
        ports = {h.port for h in fleet.hosts}
        cpu_at_5 = None
        conn_samples = []
        last_cpu = 0.0
        while proc.poll() is None:
            time.sleep(0.5)
            try:
                ct = p.cpu_times()
            except psutil.Error:
                break
            last_cpu = ct.user + ct.system
            el = time.monotonic() - start
            if cpu_at_5 is None and el >= 5.0:
                cpu_at_5 = (last_cpu, el)
            if 8.0 <= el <= seconds - 1.0:
                conn_samples.append(established(p, ports))
        wall = time.monotonic() - start
        os.close(master)
        steady = (last_cpu - cpu_at_5[0]) / (wall - cpu_at_5[1]) if cpu_at_5 else float("nan")
        return {
            "hosts": n,
            "wall_s": wall,
            "cpu_s": last_cpu,
            "cpu_pct_total": 100 * last_cpu / wall,
            "cpu_pct_steady": 100 * steady,
            "conns_min": min(conn_samples) if conn_samples else -1,
            "conns_max": max(conn_samples) if conn_samples else -1,
            "rc": proc.returncode,
        }
    finally:
        stop.set()
        fleet.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    reason = sshd_available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedctl-bench-watch-") as tmp:
        for n in args.hosts:
            rows.append(bench(n, args.seconds, Path(tmp)))
    print(f"fedctl watch --interval 1 for {args.seconds:.0f}s on a pty (200x60), {os.cpu_count()} cores")
    print(f"{'hosts':>5} {'wall s':>7} {'cpu s':>6} {'cpu % (all)':>11} {'cpu % (steady)':>14} {'ssh conns':>9} {'per host':>8} rc")
    for r in rows:
        conns = f"{r['conns_min']}-{r['conns_max']}" if r["conns_min"] != r["conns_max"] else str(r["conns_max"])
        per = r["conns_max"] / r["hosts"]
        print(f"{r['hosts']:>5} {r['wall_s']:>7.1f} {r['cpu_s']:>6.2f} {r['cpu_pct_total']:>10.1f}% "
              f"{r['cpu_pct_steady']:>13.1f}% {conns:>9} {per:>8.2f} {r['rc']}")


if __name__ == "__main__":
    main()
