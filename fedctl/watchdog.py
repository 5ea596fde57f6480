#!/usr/bin/env python3
"""fedctl's budget watchdog: runs detached on a host of a run and enforces the budget THERE.

It is pushed to the host and started by ``fedctl start`` (one per host, see docs/cost-and-results.md),
so the budget holds even when the researcher's laptop is closed. Stdlib only, Python >= 3.6: it runs
with the host's python, where fedctl is not installed.

Usage: ``python3 watchdog.py --spec <run_dir>/watchdog.json`` (the spec is ``fedctl.budget.watchdog_spec``).

metrics.jsonl and status.json are read with the payload contract's readers (``fedctl/contract/
metrics.py`` and ``status.py``), not with parsers of their own: ``budget.watchdog_script`` puts those
files' source in place of the lines here that import them, so the script that reaches a host is one
self-contained, fedctl-free file.

Every ``poll_s`` seconds it checks, with a monotonic clock counted from its own start:
- max_hours: ``elapsed_s + t`` against ``max_hours`` (tripping ``margin`` early);
- max_cost:  ``spent + rate_per_hour * t / 3600`` against ``max_cost`` (same margin);
- idle (only where ``metrics`` is set, i.e. the server host): for ``idle_minutes`` no round ended
  (metrics.jsonl), the server did not rewrite status.json (``status``: it does so at each round's
  start and when a client reports that it is still training), and this host's GPU utilisation
  (nvidia-smi, if any) stayed under ``idle_gpu_percent``.

Why status.json: a run is idle when no round ends and no host's GPU is busy, but this watchdog runs
on the server host and sees only that host's GPU; the clients' GPUs are on other hosts, which share
no files with it. What the server host does see is what the clients tell the server: the fedavg_tf
client reports every ``FEDTF_HEARTBEAT_S`` (30 s) while it trains a round (or its uploads are on
the way), and the server rewrites status.json on such a report, so a long round on the clients' GPUs
(or CPUs) is not idle. fedctl's ``budget.check_guards`` takes the same time (``last_status``). Keep
``idle_minutes`` well above the heartbeat. A payload whose clients report nothing (the flower
payload) still looks idle here through a round longer than ``idle_minutes``.
On a trip it writes ``guard_file`` (reason, time) atomically, sends TERM to the process group of each
pid file, KILL after ``grace_s``, and with ``on_finish: poweroff`` runs ``poweroff_command`` after
``poweroff_delay_s`` (a window for a running fedctl to copy the results).
When the run's processes are gone on their own it exits, except with ``on_finish: poweroff``: then it
keeps guarding the budget and powers the host off after ``finish_wait_s`` unless fedctl's teardown
stops it first (so a finished run on a closed laptop does not bill forever).
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

# fedctl-watchdog: begin inline fedctl/contract/metrics.py
try:
    from fedctl.contract.metrics import read_metrics
    from fedctl.contract.status import parse_status
except ImportError:  # started straight from a source checkout where fedctl is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fedctl.contract.metrics import read_metrics
    from fedctl.contract.status import parse_status
# fedctl-watchdog: end inline

MARGIN_FRACTION = 0.1
_UINT = re.compile(r"[0-9]+\Z")  # ASCII digits only (str.isdigit also takes "²" and "١")
#: a process counts as the run's only when its command line contains this (set from spec["match"]):
#: a pid file whose pid was reused by an unrelated process must never get that process killed
MATCH = None


def log(msg):
    sys.stdout.write("%s watchdog: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stdout.flush()


def load_spec(path):
    with open(path) as f:
        spec = json.load(f)
    if not isinstance(spec, dict) or spec.get("version") != 1:
        raise ValueError("%s: not a version-1 watchdog spec" % path)
    return spec


# -- processes ------------------------------------------------------------------------------------------
def read_pids(patterns):
    """Pids named in the pid files (a pattern may be a glob); missing or half-written files are skipped."""
    pids = set()
    for pattern in patterns:
        for path in glob.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]:
            try:
                with open(path) as f:
                    text = f.read().strip()
            except (IOError, OSError):
                continue
            for line in text.splitlines():  # "PID START" (START: /proc start time)
                tok = (line.split() or [""])[0]
                if _UINT.match(tok) and int(tok) > 1:  # "²".isdigit() is True and int("²") raises
                    pids.add(int(tok))
    return sorted(pids)


def _proc_stat(pid):
    """(state, pgrp) of a pid from /proc, or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (IOError, OSError):
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[2])
    except (IndexError, ValueError):
        return None


def _ours(pid):
    if not MATCH:
        return True
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return MATCH.encode() in f.read()
    except (IOError, OSError):
        return False


def group_members(pgid, check_ours=True):
    """Live (non-zombie) pids of process group ``pgid`` when the group is the run's, else [].

    The group is the run's when one of its members' command line contains MATCH (the leader runs
    the payload with ``--run-dir .../runs/<run-id>``); then every member counts, children included.
    Uses /proc; elsewhere a kill(0) test.
    """
    if os.path.isdir("/proc/self"):
        members = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            st = _proc_stat(int(name))
            if st and st[1] == pgid and st[0] != "Z":
                members.append(int(name))
        st = _proc_stat(pgid)  # the leader itself (it may have left its group: check it too)
        if st and st[0] != "Z" and pgid not in members:
            members.append(pgid)
        return members if not check_ours or any(_ours(m) for m in members) else []
    try:
        os.killpg(pgid, 0)
        return [pgid]
    except OSError:
        try:
            os.kill(pgid, 0)
            return [pgid]
        except OSError:
            return []


def any_alive(pids, check_ours=True):
    return any(group_members(p, check_ours) for p in pids)


def _signal(pid, sig):
    for fn in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            fn()
        except OSError:
            pass


def stop_groups(pids, grace_s):
    """TERM each of the run's groups, wait up to grace_s, KILL what is left. Returns pids still alive.

    Which groups are the run's is decided once, before signalling: a child that outlives its leader
    (and does not carry the run dir in its command line) is still killed."""
    pids = [p for p in pids if group_members(p)]
    for p in pids:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any_alive(pids, False):
        time.sleep(0.2)
    left = [p for p in pids if group_members(p, False)]
    for p in left:
        _signal(p, signal.SIGKILL)
        for m in group_members(p, False):
            _signal(m, signal.SIGKILL)
    time.sleep(0.2)
    return [p for p in pids if group_members(p, False)]


# -- measurements -----------------------------------------------------------------------------------------
#: how much of metrics.jsonl's end one poll reads (the latest rounds are there)
METRICS_TAIL_BYTES = 256 * 1024


def last_round_end(path):
    """``end`` of the latest round in metrics.jsonl (reads only the file's tail), or None."""
    return read_metrics(path, METRICS_TAIL_BYTES).last_round_end()


#: status.json is small; more than this is not a status file
STATUS_MAX_BYTES = 1 << 20


def last_status_time(path):
    """``time`` of the server's status.json (when it last rewrote it), or None (absent, torn, other)."""
    try:
        with open(path, "rb") as f:
            data = f.read(STATUS_MAX_BYTES + 1)
    except (IOError, OSError):
        return None
    if len(data) > STATUS_MAX_BYTES:
        return None
    st = parse_status(data.decode("utf-8", "replace"))
    return st.time if st is not None else None


_PERCENT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")  # same: float() takes "nan", "inf" and "1_0"
_IGNORED = set()  # nvidia-smi lines already logged: the same warning every poll would flood the log


def gpu_utilisation(cmd=("nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")):
    """The highest GPU utilisation on this host in percent, or None without a (working) nvidia-smi."""
    try:
        r = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    vals = []
    for line in r.stdout.splitlines():
        line = line.strip(" \t\r\n")
        # ASCII digits only: float() also takes "nan", "inf", "1_0" and non-ASCII digits, and
        # nvidia-smi prints warnings ("No devices were found") on stdout, at times with exit 0
        if _PERCENT.match(line):
            vals.append(float(line))
        elif line and line not in _IGNORED and len(_IGNORED) < 100:
            _IGNORED.add(line)
            log("nvidia-smi: ignored a line that is not a utilisation: %r" % line[:120])
    return max(vals) if vals else None


# -- the guard --------------------------------------------------------------------------------------------
def margin(spec, limit_s):
    m = float(spec.get("poll_s", 5)) + float(spec.get("grace_s", 10)) + float(spec.get("poweroff_delay_s", 0))
    return max(0.0, min(m, float(spec.get("margin_fraction", MARGIN_FRACTION)) * limit_s))


def check(spec, t, last_end, gpu, now_wall, started_wall, last_status=None):
    """(reason, message, value, limit) of the first guard that trips ``t`` seconds after start, or None.

    ``last_end``: the latest round's end; ``last_status``: when the server last rewrote status.json
    (a round's start, a client's progress report); wall-clock times of this host, None when unknown."""
    if spec.get("max_hours"):
        limit_s = float(spec["max_hours"]) * 3600.0
        elapsed = float(spec.get("elapsed_s", 0)) + t
        if elapsed + margin(spec, limit_s) >= limit_s:
            return ("max_hours", "held the hosts for %.4f h; max_hours is %s" % (elapsed / 3600, spec["max_hours"]),
                    elapsed / 3600.0, float(spec["max_hours"]))
    if spec.get("max_cost"):
        rate = float(spec.get("rate_per_hour") or 0)
        spent = float(spec.get("spent", 0)) + rate * t / 3600.0
        limit = float(spec["max_cost"])
        limit_s = limit / rate * 3600.0 if rate > 0 else 0.0
        if spent + rate * margin(spec, limit_s) / 3600.0 >= limit:
            return ("max_cost", "cost %.4f %s; max_cost is %s" % (spent, spec.get("currency", ""), limit), spent, limit)
    if spec.get("idle_minutes") and spec.get("metrics"):
        since = last_end if last_end is not None else started_wall
        if last_status is not None:  # the clients' progress, as the server saw it
            since = max(since, last_status)
        idle_s = max(0.0, now_wall - since)
        threshold = float(spec.get("idle_gpu_percent", 5.0))
        if idle_s >= float(spec["idle_minutes"]) * 60.0 and (gpu is None or gpu < threshold):
            return ("idle", "no round completed and no client progress for %.1f min%s; idle_minutes is %s"
                    % (idle_s / 60, "" if gpu is None else ", GPU %.0f%%" % gpu, spec["idle_minutes"]),
                    idle_s / 60.0, float(spec["idle_minutes"]))
    return None


def write_guard(path, data):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def power_off(spec):
    cmd = spec.get("poweroff_command") or "sudo -n poweroff || poweroff"
    log("powering off: %s" % cmd)
    try:
        r = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=120)
        log("power-off command exited %s: %s" % (r.returncode, r.stdout.strip()[-500:]))
    except (OSError, subprocess.SubprocessError) as e:
        log("power-off failed: %s" % e)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--spec":
        sys.stderr.write("usage: watchdog.py --spec SPEC.json\n")
        return 2
    spec = load_spec(argv[1])
    global MATCH
    MATCH = spec.get("match") or None
    t0 = time.monotonic()
    started_wall = time.time()
    poll = max(0.1, float(spec.get("poll_s", 5)))
    grace = float(spec.get("grace_s", 10))
    patterns = spec.get("pidfiles") or []
    poweroff = spec.get("on_finish") == "poweroff"
    guard_file = spec.get("guard_file") or os.path.join(spec["run_dir"], "guard.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # teardown stops us: exit quietly
    log("guarding run %s on %s (pid %d): %s" % (
        spec.get("run_id"), spec.get("host"), os.getpid(),
        ", ".join("%s=%s" % (k, spec.get(k)) for k in ("max_hours", "max_cost", "idle_minutes", "on_finish"))))
    seen_alive = False
    finished_at = None
    while True:
        t = time.monotonic() - t0
        pids = read_pids(patterns)
        alive = any_alive(pids)
        seen_alive = seen_alive or alive
        if not alive and (seen_alive or t >= float(spec.get("startup_s", 120))):
            if not poweroff:
                log("the run's processes are gone: nothing left to guard, exiting")
                return 0
            if finished_at is None:
                finished_at = t
                log("the run's processes are gone; powering off in %ss unless fedctl tears down first"
                    % spec.get("finish_wait_s", 900))
            elif t - finished_at >= float(spec.get("finish_wait_s", 900)):
                if not os.path.exists(guard_file):  # keep the reason of an earlier trip
                    write_guard(guard_file, {
                        "reason": "finished", "message": "the run finished and nobody tore it down within "
                        "finish_wait_s, so the watchdog powered the host off",
                        "time": time.time(), "value": 0.0, "limit": 0.0, "by": "watchdog"})
                power_off(spec)
                return 0
        gpu = gpu_utilisation() if (spec.get("idle_minutes") and spec.get("metrics")) else None
        last_end = last_round_end(spec["metrics"]) if spec.get("metrics") else None
        last_status = last_status_time(spec["status"]) if spec.get("status") else None
        trip = check(spec, t, last_end, gpu, time.time(), started_wall, last_status)
        if trip is not None:
            reason, message, value, limit = trip
            log("guard tripped: %s: %s" % (reason, message))
            write_guard(guard_file, {"reason": reason, "message": message, "time": time.time(),
                                     "value": value, "limit": limit, "by": "watchdog"})
            left = stop_groups(pids, grace)
            if left:
                log("still alive after KILL: %s" % left)
            else:
                log("stopped the run's processes: %s" % pids)
            if poweroff:
                delay = float(spec.get("poweroff_delay_s", 0))
                if delay > 0:
                    log("powering off in %ss" % delay)
                    time.sleep(delay)
                power_off(spec)
            return 0
        time.sleep(poll)


if __name__ == "__main__":
    sys.exit(main())
