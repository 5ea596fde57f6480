"""fedctl's one way to write a duration and a byte count for people (the dashboard, the reports)."""

from __future__ import annotations

import math


def fmt_duration(seconds: float | None) -> str:
    """``4.25 -> "4.2s"``, ``42 -> "42s"``, ``75 -> "1m15s"``, ``3725 -> "1h02m"``; None or NaN -> ``-``.

    Whole minutes and seconds rather than decimal ones (``1m15s``, not ``1.2 min``): a reader does not
    have to convert, and the text stays short enough for a dashboard cell."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(0.0, float(seconds))
    # each form is chosen after rounding, so 9.96 s is "10s", not "10.0s", and 59.6 s is "1m00s"
    if round(s, 1) < 10:
        return f"{s:.1f}s"
    whole = round(s)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = round(s / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def fmt_bytes(n: int) -> str:
    """``1_500_000 -> "1.5 MB"`` (decimal units, as network traffic is counted)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
