"""Collectors: one probe per host per tick over the Fleet's persistent connection, fed into a queue.

``HostProbe`` owns one host's read offsets (a ``FileCursor`` per followed file) and turns one probe
command's output into a typed ``HostSample``. ``Collector`` runs one small loop per host (so a slow or
dead host delays only its own row) and puts every sample on a queue; the UI thread consumes it.
``collect_once`` probes every host once in parallel (``--once``, ``--json``, ``fedctl status``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fedctl.monitor.metrics import FileCursor, LineBuffer
from fedctl.monitor.nvidia import parse_gpus
from fedctl.monitor.probe import MAX_CHUNK_BYTES, FileReq, ProbeResult, ProcReq, build_probe, new_nonce, parse_probe
from fedctl.monitor.snapshot import GpuReport
from fedctl.model import HostStatus
from fedctl.state import HostRecord, RunState

if TYPE_CHECKING:
    from fedctl.connectors.base import Connector
    from fedctl.fleet import Fleet

log = logging.getLogger("fedctl.monitor")

METRICS_KEY = "metrics"
STATUS_KEY = "status"


def run_dir(host: HostRecord, run_id: str) -> str:
    """``<workdir>/runs/<run-id>`` on ``host`` (the lead's ``deploy.remote_run_dir``)."""
    from fedctl.deploy import remote_run_dir

    return remote_run_dir(host, run_id)


def server_host_name(state: RunState) -> str | None:
    """The name of the host that runs the server (from ``state.server`` or the roles)."""
    name = state.server.host
    if name:
        return str(name)
    for h in state.hosts:
        if any(p.role == "server" for p in h.processes) or "server" in h.info.roles:
            return h.name
    return None


@dataclass
class HostSample:
    """One probe of one host: system facts, process liveness, GPUs, and the new bytes of its files."""

    host: str
    time: float  # wall clock when the probe finished
    ok: bool
    duration: float
    error: str | None = None
    probe: ProbeResult | None = None
    gpu: GpuReport | None = None
    log_lines: list[tuple[str, str]] = field(default_factory=list)  # (process label, text)
    metrics_text: str = ""
    metrics_reset: bool = False
    metrics_behind: bool = False  # more metrics bytes are waiting (chunk was capped)
    status_text: str | None = None


class HostProbe:
    """The per-host reading state: which files to follow and from which offset."""

    def __init__(
        self,
        host: HostRecord,
        run_id: str,
        is_server: bool,
        logs: bool = True,
        metrics: bool = True,
        gpu: bool = True,
        system: bool = True,
        log_labels: Sequence[str] | None = None,
        log_tail_bytes: int = 16 * 1024,
        clock: Callable[[], float] = time.time,
        files: Any = None,
    ) -> None:
        """``files``: the run's payload files on this host (``contract.RunFiles``, from the manifest);
        None: the contract's default names."""
        self.host = host
        self.name = host.name
        self.run_id = run_id
        self.gpu = gpu
        self.system = system
        self.clock = clock
        self.log_tail_bytes = log_tail_bytes
        self.chunk_cap = MAX_CHUNK_BYTES  # most bytes of one file per probe (the rest comes next tick)
        self.nonce = new_nonce()
        self.procs = [ProcReq(p.label, p.pid, p.pidfile, p.start_time) for p in host.processes]
        self.cursors: dict[str, FileCursor] = {}
        self.labels: dict[str, str] = {}  # file key -> process label
        self.buffers: dict[str, LineBuffer] = {}
        if logs:
            for i, p in enumerate(host.processes):
                if p.log and (log_labels is None or p.label in log_labels):
                    key = f"L{i}"
                    self.cursors[key] = FileCursor(p.log, offset=-1)
                    self.labels[key] = p.label
                    self.buffers[key] = LineBuffer()
        self.status_path: str | None = None
        if is_server and metrics and host.workdir:
            from fedctl.contract import run_files

            files = files or run_files(run_dir(host, run_id), workdir=host.workdir, run_id=run_id)
            self.cursors[METRICS_KEY] = FileCursor(files.metrics, offset=0)
            self.status_path = files.status

    def command(self) -> str:
        """The probe command for this tick (depends on the current offsets)."""
        files = [
            FileReq(k, c.path, c.offset, c.inode, self.log_tail_bytes, self.chunk_cap)
            for k, c in self.cursors.items()
        ]
        if self.status_path:
            files.append(FileReq(STATUS_KEY, self.status_path, whole=True, cap=64 * 1024))
        return build_probe(self.nonce, self.procs, files, gpu=self.gpu, system=self.system)

    def sample(self, conn: "Connector", timeout: float | None = 15.0) -> HostSample:
        """Run one probe on ``conn`` and advance the offsets by what arrived."""
        start = time.monotonic()
        res = conn.run(self.command(), timeout=timeout)
        duration = time.monotonic() - start
        if res.timed_out:
            return HostSample(self.name, self.clock(), False, duration, error=f"probe timed out after {timeout:.0f}s")
        parsed = parse_probe(res.stdout, self.nonce)
        if not parsed.complete:
            err = (res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1][:300]
            return HostSample(self.name, self.clock(), False, duration, error=f"probe failed: {err}")
        return self.absorb(parsed, duration)

    def absorb(self, parsed: ProbeResult, duration: float = 0.0) -> HostSample:
        """Apply a parsed probe: advance cursors, split log lines, parse GPUs (no I/O)."""
        sample = HostSample(self.name, self.clock(), True, duration, probe=parsed)
        if self.gpu:
            if parsed.gpu_present:
                by_pid = {p.pid: p.label for p in self.procs if p.pid}
                labels = {pid: by_pid[g] for pid, g in parsed.pgid_of.items() if g in by_pid}
                labels.update(by_pid)
                sample.gpu = parse_gpus(parsed.gpu_text, parsed.gpu_rc, parsed.apps_text, parsed.pgid_pids, labels)
            else:
                sample.gpu = GpuReport("none")
        for key, chunk in parsed.files.items():
            if key == STATUS_KEY:
                sample.status_text = None if chunk.missing else chunk.text
                continue
            cur = self.cursors.get(key)
            if cur is None:
                continue
            if chunk.missing:
                cur.missing = True
                continue
            reset = cur.advance(chunk.size, chunk.inode, chunk.start, chunk.nbytes)
            if key == METRICS_KEY:
                sample.metrics_reset = reset
                sample.metrics_text = chunk.text
                sample.metrics_behind = cur.offset < chunk.size
            else:
                buf = self.buffers[key]
                if reset:
                    buf.reset()
                label = self.labels[key]
                sample.log_lines.extend((label, ln) for ln in buf.feed(chunk.text))
        # pids learnt from pidfiles are checked directly from now on
        self.procs = [
            p if p.pid else ProcReq(p.label, parsed.pids.get(p.label, (None, False))[0], p.pidfile,
                                    parsed.starts.get(p.label))
            for p in self.procs
        ]
        return sample


def build_probes(
    state: RunState,
    logs: bool = True,
    metrics: bool = True,
    gpu: bool = True,
    hosts: Sequence[str] | None = None,
    log_labels: dict[str, Sequence[str] | None] | None = None,
    clock: Callable[[], float] = time.time,
    system: bool = True,
) -> dict[str, HostProbe]:
    """One HostProbe per host of the run (or of ``hosts``)."""
    from fedctl.contract import host_files, manifest_of

    server = server_host_name(state)
    manifest = manifest_of(state)
    out = {}
    for h in state.hosts:
        if hosts is not None and h.name not in hosts:
            continue
        if h.status in (HostStatus.TORN_DOWN, HostStatus.TEARING_DOWN):
            continue
        labels = (log_labels or {}).get(h.name) if log_labels is not None else None
        out[h.name] = HostProbe(
            h, state.run_id, h.name == server, logs=logs, metrics=metrics, gpu=gpu, system=system,
            log_labels=labels, clock=clock,
            files=host_files(state, h, manifest) if h.workdir else None,
        )
    return out


def _describe(e: BaseException) -> str:
    from fedctl.fleet import describe_error

    return describe_error(e).splitlines()[0][:300]


class Collector:
    """Per-host probe loops feeding ``out``; ``stop()`` ends them (training keeps running)."""

    def __init__(
        self,
        fleet: "Fleet",
        probes: dict[str, HostProbe],
        interval: float,
        out: "queue.Queue[HostSample]",
        timeout: float | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.probes = probes
        self.interval = max(0.05, interval)
        self.out = out
        self.timeout = timeout if timeout is not None else max(10.0, 5 * self.interval)
        self.retry_s = retry_s if retry_s is not None else max(5.0, 3 * self.interval)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "Collector":
        for name in self.probes:
            t = threading.Thread(target=self._loop, args=(name,), name=f"fedctl-watch-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, wait: float = 2.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "Collector":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self, name: str) -> None:
        probe = self.probes[name]
        while not self._stop.is_set():
            t0 = time.monotonic()
            sample = probe_host(self.fleet, probe, self.timeout)
            if self._stop.is_set():
                return
            self.out.put(sample)
            if not sample.ok and name in self.fleet.unreachable:
                # the Fleet remembers a failed connect; try again after a pause, not every tick
                if self._stop.wait(self.retry_s):
                    return
                self.fleet.forget(name)
                continue
            if sample.ok and sample.metrics_behind:
                continue  # catch up on a long metrics file without waiting
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))


def probe_host(fleet: "Fleet", probe: HostProbe, timeout: float | None) -> HostSample:
    """Probe one host through the Fleet's connector; any failure becomes a failed sample."""
    start = time.monotonic()
    try:
        conn = fleet.connector(probe.name)
        return probe.sample(conn, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a host's failure is shown in its row, never fatal
        log.debug("probe %s failed", probe.name, exc_info=True)
        return HostSample(probe.name, probe.clock(), False, time.monotonic() - start, error=_describe(e))


def collect_once(
    fleet: "Fleet", probes: dict[str, HostProbe], timeout: float | None = 20.0, catch_up: int = 50
) -> list[HostSample]:
    """Probe every host once, in parallel; a host whose metrics were capped is probed again until
    it caught up (at most ``catch_up`` extra probes), so ``--once``/``--json`` see every round."""
    samples: list[HostSample] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        probe = probes[name]
        s = probe_host(fleet, probe, timeout)
        with lock:
            samples.append(s)
        for _ in range(catch_up):
            if not (s.ok and s.metrics_behind):
                break
            s = probe_host(fleet, probe, timeout)
            with lock:
                samples.append(s)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in probes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples
