"""The run's batch allocation (a Slurm job) for ``watch`` and ``status``: read through the provider's
``allocation_status`` hook, at most every ``ALLOCATION_CHECK_S`` (a scheduler command on a shared
login node), and off the UI thread in the live screen (``AllocationFeed``), so a slow login node
never freezes the dashboard. Provider-neutral: a run without an allocation has no reader.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from fedctl.errors import FedctlError
from fedctl.providers.base import AllocationStatus

if TYPE_CHECKING:
    from fedctl.state import RunState, StateStore

#: at most this often (seconds) fedctl asks the scheduler about the job (``ops.follow.ENDED_CHECK_S`` is this)
ALLOCATION_CHECK_S = 10.0


class AllocationReader:
    """The allocation's status, asked at most every ``every_s``; the last answer in between."""

    def __init__(self, read: Callable[[], AllocationStatus | None], every_s: float = ALLOCATION_CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.every_s = every_s
        self.clock = clock
        self._at: float | None = None
        self.last: AllocationStatus | None = None
        self.asked = 0  # how many times the scheduler was asked (tests check the throttle)

    @classmethod
    def for_run(cls, state: "RunState", store: "StateStore", every_s: float = ALLOCATION_CHECK_S) -> "AllocationReader | None":
        """The reader of the run's allocation, None when its provider has none (hosts, clouds)."""
        from fedctl.providers import for_run, provider_class

        if not provider_class(state.provider).has_allocation:
            return None
        provider = for_run(state, store)
        infos = [r.info for r in state.hosts]
        return cls(lambda: provider.allocation_status(infos), every_s)

    def get(self, force: bool = False) -> AllocationStatus | None:
        """The status now: asked again when ``every_s`` passed since the last time (or ``force``)."""
        now = self.clock()
        if force or self._at is None or now - self._at >= self.every_s:
            self._at = now
            self.asked += 1
            try:
                self.last = self._read()
            except (FedctlError, OSError) as e:  # the login node went away: said, and asked again later
                job = self.last.job if self.last is not None else "?"
                self.last = AllocationStatus(job, "UNKNOWN", problems=(f"cannot ask the scheduler: {e}",))
        return self.last


class AllocationFeed:
    """A daemon thread that puts ``("allocation", status, time)`` on the watch loop's queue every
    ``reader.every_s`` (the first at once); ``time`` is the caller's clock when it was read."""

    def __init__(self, reader: AllocationReader, out: "queue.Queue[Any]", clock: Callable[[], float] = time.time) -> None:
        self.reader = reader
        self.out = out
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedctl-watch-allocation", daemon=True)

    def start(self) -> "AllocationFeed":
        self._thread.start()
        return self

    def stop(self, wait: float = 0.5) -> None:
        self._stop.set()
        self._thread.join(wait)

    def _loop(self) -> None:
        while not self._stop.is_set():
            status = self.reader.get(force=True)
            if status is not None:
                self.out.put(("allocation", status, self.clock()))
            self._stop.wait(self.reader.every_s)  # the scheduler's cadence; stop() wakes it at once


def aged(status: AllocationStatus | None, read_at: float | None, now: float) -> AllocationStatus | None:
    """``status`` as it is at ``now``: a running job's elapsed time moved on since it was read."""
    import dataclasses

    if status is None or read_at is None or status.state != "RUNNING" or status.elapsed_s is None:
        return status
    return dataclasses.replace(status, elapsed_s=status.elapsed_s + max(0.0, now - read_at))
