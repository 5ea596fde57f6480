"""How the report's tables write numbers: plain values here; durations and byte counts are fedctl's
one format (``fedctl.units``, the dashboard's too); money: ``cost``."""

from __future__ import annotations

from typing import Any

from fedctl.units import fmt_bytes, fmt_duration

__all__ = ["fmt_bytes", "fmt_duration", "fmt_value"]


def fmt_value(v: Any, digits: int = 4) -> str:
    """A table cell: None -> ``-``, a float with ``digits`` decimals, anything else as text."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
