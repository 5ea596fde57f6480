"""The watch loop: ONE thread owns rich.Live; collector threads feed it HostSamples through a queue.

Keys (when stdin is a terminal): ``q`` quits (training keeps running: nothing is stopped), ``f``
cycles the log filter through all / server / client / each host. Ctrl-C quits the same way in
``fedctl watch``. In ``fedctl run`` (``run_mode``) Ctrl-C is not a quit: it propagates, and the run
is stopped, collected and torn down; leaving the run going is the explicit ``d`` key (``q`` too).
The keys are on the screen's first line (``screen.fit_screen``). Without a terminal the loop prints
plain lines instead (a status line when it changes, new alerts, new log lines).
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence

from rich.console import Console

from fedctl.dashboard.fmt import allocation_text
from fedctl.dashboard.plain import format_log_line, render_lines, status_line
from fedctl.dashboard.screen import DETACH_HELP, DETACH_KEYS, NO_KEYS_HELP, WATCH_KEYS, WATCH_NO_KEYS, fit_screen
from fedctl.monitor.allocation import AllocationFeed, AllocationReader
from fedctl.monitor.collect import Collector, build_probes, collect_once
from fedctl.monitor.model import WatchModel, log_filter_matches
from fedctl.monitor.snapshot import LogLine, Snapshot
from fedctl.state import RunState

if TYPE_CHECKING:
    from fedctl.fleet import Fleet


@dataclass
class WatchOutcome:
    """How a watch ended: ``quit`` (q / Ctrl-C), ``detached`` (d in run mode), ``done`` (the run
    finished), ``stopped`` (stop_when), ``timeout``; the last snapshot."""

    reason: str
    snapshot: Snapshot


def filter_choices(state: RunState) -> list[str | None]:
    """What ``f`` cycles through: all, server, client, then every host name."""
    return [None, "server", "client", *[h.name for h in state.hosts]]


def snapshot_once(
    state: RunState,
    fleet: "Fleet",
    interval: float = 1.0,
    log_filter: str | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = 20.0,
    allocation: AllocationReader | None = None,
) -> Snapshot:
    """Probe every host once (reading all of metrics.jsonl) and return the Snapshot; ``allocation``:
    the run's batch allocation's reader (``AllocationReader.for_run``), asked once.

    This is what ``watch --once/--json`` prints; ``fedctl status`` can reuse it for per-host
    reachable / processes alive / round / accuracy (``Snapshot.hosts``, ``.federation``, ``.accuracy``).
    """
    model = WatchModel(state, interval=interval, clock=clock)
    probes = build_probes(state, clock=clock)
    model.apply_all(collect_once(fleet, probes, timeout=timeout))
    if allocation is not None:
        model.set_allocation(allocation.get(), clock())
    return model.snapshot(log_filter=log_filter)


class _KeyReader:
    """Reads single keys from a terminal in cbreak mode on a daemon thread; restores the tty on stop."""

    def __init__(self, out: "queue.Queue[Any]", stream: IO[str] | None = None) -> None:
        self.out = out
        self.stream = stream or sys.stdin
        self._stop = threading.Event()
        self._saved: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> "_KeyReader":
        import termios
        import tty

        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._loop, args=(fd,), name="fedctl-watch-keys", daemon=True)
        self._thread.start()
        return self

    def _loop(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                data = os.read(fd, 32)
                if not data:
                    return
                for ch in data.decode(errors="replace"):
                    self.out.put(("key", ch))

    def stop(self) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(0.5)
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


class WatchLoop:
    """Runs the watch until q / Ctrl-C, or until the run is done (``until_done``)."""

    def __init__(
        self,
        state: RunState,
        fleet: "Fleet",
        console: Console,
        interval: float = 1.0,
        until_done: bool = False,
        log_filter: str | None = None,
        keys: bool | None = None,
        plain: bool | None = None,
        clock: Callable[[], float] = time.time,
        reload_state: Callable[[], RunState | None] | None = None,
        max_duration: float | None = None,
        stop_when: Callable[[Snapshot], Any] | None = None,
        run_mode: bool = False,
        allocation: AllocationReader | None = None,
    ) -> None:
        self.state = state
        #: the run's batch allocation (a Slurm job), read off this thread every ~10 s
        self.allocation = allocation
        #: ``fedctl run``: Ctrl-C propagates (the caller tears the run down), ``d`` detaches
        self.run_mode = run_mode
        #: checked on every frame; a truthy answer ends the watch with reason "stopped" (fedctl run's
        #: budget guard uses it) and is kept in ``stop_value``
        self.stop_when = stop_when
        self.stop_value: Any = None
        self.fleet = fleet
        self.console = console
        self.interval = interval
        self.until_done = until_done
        self.log_filter = log_filter
        self.plain = (not console.is_terminal) if plain is None else plain
        self.keys = (not self.plain and sys.stdin.isatty()) if keys is None else keys
        self.clock = clock
        self.reload_state = reload_state
        self.max_duration = max_duration
        self.events: "queue.Queue[Any]" = queue.Queue()
        self.model = WatchModel(state, interval=interval, clock=clock)
        self.choices = filter_choices(state)

    def run(self) -> WatchOutcome:
        """Start the collectors, show the screen, return how it ended. Never stops the training."""
        probes = build_probes(self.state, clock=self.clock)
        collector = Collector(self.fleet, probes, self.interval, self.events)
        reader = _KeyReader(self.events) if self.keys else None
        feed = AllocationFeed(self.allocation, self.events, self.clock) if self.allocation is not None else None
        collector.start()
        if feed is not None:
            feed.start()
        try:
            if reader is not None:
                reader.start()
            try:
                if self.plain:
                    return self._run_plain()
                return self._run_live()
            except KeyboardInterrupt:
                if self.run_mode:  # fedctl run: Ctrl-C stops the run, it is not a way out of the screen
                    raise
                return WatchOutcome("quit", self.model.snapshot(log_filter=self.log_filter))
        finally:
            if reader is not None:
                reader.stop()
            if feed is not None:
                feed.stop()
            collector.stop(wait=0.5)

    # -- event handling --------------------------------------------------------------------------
    def _drain(self, until: float, on_lines: Callable[[list[LogLine]], None] | None = None) -> str | None:
        """Apply queued samples until ``until`` (monotonic); return a key pressed, if any."""
        while True:
            remaining = until - time.monotonic()
            try:
                item = self.events.get(timeout=max(0.0, remaining)) if remaining > 0 else self.events.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, tuple) and item and item[0] == "key":
                return str(item[1])
            if isinstance(item, tuple) and item and item[0] == "allocation":
                self.model.set_allocation(item[1], item[2])
                continue
            new = self.model.apply(item)
            if on_lines is not None and new:
                on_lines(new)

    def _key(self, ch: str) -> bool:
        """Handle a key; True means quit (in run mode: detach)."""
        if self.run_mode and ch in ("\x03",):  # a Ctrl-C that arrived as a character still stops the run
            raise KeyboardInterrupt
        if ch in ("q", "Q", "\x03", "\x04") or (self.run_mode and ch in ("d", "D")):
            return True
        if ch in ("f", "F"):
            i = self.choices.index(self.log_filter) if self.log_filter in self.choices else 0
            self.log_filter = self.choices[(i + 1) % len(self.choices)]
        return False

    def _maybe_reload(self, last: list[float]) -> None:
        if self.reload_state is None or time.monotonic() - last[0] < 5.0:
            return
        last[0] = time.monotonic()
        new = self.reload_state()
        if new is not None and new.run_id == self.state.run_id:
            self.state = new
            self.model.update_state(new)

    def _ended(self, snap: Snapshot, start: float) -> WatchOutcome | None:
        """The outcome when this frame ends the watch (run done, stop_when, duration), else None."""
        if self.until_done and snap.done:
            return WatchOutcome("done", snap)
        if self._should_stop(snap):
            return WatchOutcome("stopped", snap)
        if self._timed_out(start):
            return WatchOutcome("timeout", snap)
        return None

    def _should_stop(self, snap: Snapshot) -> bool:
        if self.stop_when is None:
            return False
        self.stop_value = self.stop_when(snap)
        return bool(self.stop_value)

    def _timed_out(self, start: float) -> bool:
        return self.max_duration is not None and time.monotonic() - start > self.max_duration

    # -- the two front ends ----------------------------------------------------------------------
    def _run_live(self) -> WatchOutcome:
        from rich.live import Live

        start = time.monotonic()
        reloaded = [start]
        snap = self.model.snapshot(log_filter=self.log_filter)
        with Live(console=self.console, auto_refresh=False, screen=True, transient=False) as live:
            while True:
                snap = self.model.snapshot(log_filter=self.log_filter)
                live.update(fit_screen(snap, self.console, self._keys()), refresh=True)
                ended = self._ended(snap, start)
                if ended is not None:
                    return ended
                key = self._drain(time.monotonic() + self.interval)
                if key is not None and self._key(key):
                    return WatchOutcome(self._quit_reason(), self.model.snapshot(log_filter=self.log_filter))
                self._maybe_reload(reloaded)

    def _footer(self) -> str | None:
        """``fedctl run``'s keys in full (None in ``fedctl watch``)."""
        if not self.run_mode:
            return None
        return DETACH_HELP if self.keys else NO_KEYS_HELP

    def _keys(self) -> Sequence[str]:
        """The keys line of this screen, longest first (``keys_text`` picks the one that fits)."""
        if self.run_mode:
            return DETACH_KEYS if self.keys else (NO_KEYS_HELP,)
        return WATCH_KEYS if self.keys else WATCH_NO_KEYS

    def _quit_reason(self) -> str:
        return "detached" if self.run_mode else "quit"

    def _run_plain(self) -> WatchOutcome:
        start = time.monotonic()
        reloaded = [start]
        shown_alerts: set[str] = set()
        last_status = ""
        out = self.console.file

        def on_lines(lines: list[LogLine]) -> None:
            for ln in lines:
                if log_filter_matches(ln, self.log_filter, self.model.clients_map):
                    out.write(format_log_line(ln.host, ln.shown, ln.text) + "\n")

        while True:
            snap = self.model.snapshot(log_filter=self.log_filter)
            line = status_line(snap)
            if line != last_status:
                out.write(time.strftime("%H:%M:%S ") + line + "\n")
                last_status = line
            for a in snap.alerts:
                if a.message not in shown_alerts:
                    shown_alerts.add(a.message)
                    out.write(f"ALERT {a.level}: {a.message}\n")
            out.flush()
            ended = self._ended(snap, start)
            if ended is not None:
                return ended
            key = self._drain(time.monotonic() + self.interval, on_lines)
            if key is not None and self._key(key):
                return WatchOutcome(self._quit_reason(), self.model.snapshot(log_filter=self.log_filter))
            self._maybe_reload(reloaded)


def summary_lines(snap: Snapshot) -> list[str]:
    """The end-of-run summary printed by ``watch --until-done`` (and reusable by ``fedctl run``)."""
    s = snap.summary or {}
    f = snap.federation
    acc = s.get("final_accuracy", snap.accuracy)
    loss = s.get("final_loss", snap.loss)
    lines = [
        f"run {snap.run_id} {s.get('status') or f.phase}: {s.get('rounds_completed', len(f.history))} rounds,"
        f" final accuracy {acc if acc is None else f'{acc:.4f}'}, final loss {loss if loss is None else f'{loss:.4f}'}",
    ]
    if s.get("best_accuracy") is not None:
        lines.append(f"best accuracy {s['best_accuracy']:.4f}")
    if s.get("wall_s") is not None or snap.elapsed_s is not None:
        wall = s.get("wall_s") if s.get("wall_s") is not None else snap.elapsed_s
        lines.append(f"wall time {wall:.1f}s")
    if snap.allocation is not None:
        lines.append(allocation_text(snap.allocation, snap.node_hours))
    if snap.cost is not None:
        lines.append(f"cost so far {snap.cost:.4f} {snap.currency} ({snap.cost_per_hour or 0:.2f} {snap.currency}/h)")
    elif snap.node_hours is not None:
        lines.append(f"cost so far {snap.node_hours:.3f} node-hours (no price per node-hour in the inventory)")
    if s.get("reason"):
        lines.append(f"reason: {s['reason']}")
    return lines


__all__ = [
    "DETACH_HELP",
    "WatchLoop",
    "WatchOutcome",
    "fit_screen",
    "filter_choices",
    "render_lines",
    "snapshot_once",
    "summary_lines",
]
