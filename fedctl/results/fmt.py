"""How the report's tables write numbers: plain values, byte counts, durations (money: ``cost``)."""

from __future__ import annotations

import math
from typing import Any


def fmt_value(v: Any, digits: int = 4) -> str:
    """A table cell: None -> ``-``, a float with ``digits`` decimals, anything else as text."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_bytes(n: int) -> str:
    """``1_500_000 -> "1.5 MB"`` (decimal units, as network traffic is counted)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_duration(s: float | None) -> str:
    """A paper table's duration: ``12.3 s``, ``4.5 min``, ``1.25 h``; None (or NaN) -> ``-``."""
    if s is None or not math.isfinite(s):
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
