"""fedctl.units: one duration format for the dashboard and the reports (there were two)."""

from __future__ import annotations

import pytest

from fedctl.units import fmt_bytes, fmt_duration


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (float("nan"), "-"), (float("inf"), "-"), (-0.3, "0.0s"),  # a clock step back is not "-0.3s"
    (4.25, "4.2s"), (9.94, "9.9s"), (9.96, "10s"),  # rounded first, so never "10.0s"
    (42, "42s"), (59.6, "1m00s"), (75, "1m15s"), (3599.4, "59m59s"), (3599.9, "1h00m"),
    (3725, "1h02m"), (7199.9, "2h00m"), (90_000, "25h00m"),
])
def test_durations(seconds, text):
    assert fmt_duration(seconds) == text


def test_the_dashboard_and_the_reports_write_durations_alike():
    import importlib

    render, fmt, report, compare = (importlib.import_module(m) for m in (  # the package hides compare
        "fedctl.dashboard.render", "fedctl.results.fmt", "fedctl.results.report", "fedctl.results.compare"))

    # report/compare tables said "4.5 min" and "1.25 h" while the dashboard said "4m30s" and "1h15m"
    assert render.fmt_duration is fmt.fmt_duration is report.fmt_duration is compare.fmt_duration is fmt_duration
    assert fmt.fmt_duration(270) == "4m30s" and fmt.fmt_duration(4500) == "1h15m"


def test_bytes():
    assert [fmt_bytes(n) for n in (0, 999, 1_500, 1_500_000, 2_000_000_000)] == ["0 B", "999 B", "1.5 kB", "1.5 MB", "2.0 GB"]
