"""Waiting for a condition, never for time: the one helper tests use instead of a bare sleep.

``wait_until(predicate, timeout)`` polls ``predicate`` until it returns something truthy and returns
that value; when the timeout passes it raises ``AssertionError`` with the description (and the last
value seen), so a test that waits for something that never happens fails with a reason instead of
hanging or passing by luck.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, *, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Poll ``predicate`` every ``interval`` seconds until it is truthy; return its value.

    Raises ``AssertionError`` naming ``what`` when ``timeout`` seconds pass first. Exceptions from the
    predicate propagate (a broken predicate is a test bug, not a condition not yet met)."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = predicate()
    return last
