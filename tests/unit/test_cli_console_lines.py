"""What the console prints of a run: progress lines are text (a host's pip line keeps its brackets),
the final line uses fedctl's formats (accuracy with 4 decimals, the wall time as a duration)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from fedctl.cli import common
from fedctl.cli.common import CliEnv
from fedctl.cli.console_ui import ConsoleUI

PIP_LINE = "h1: Collecting tensorflow[and-cuda]==2.21.0 (from -r requirements.txt) [bold]x[/]"


def _env() -> tuple[CliEnv, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    e = CliEnv(console=Console(file=out, width=200, highlight=False), err=Console(file=err, width=200, highlight=False))
    return e, out, err


def test_a_progress_line_keeps_the_brackets_of_a_pip_line(monkeypatch):
    e, _out, err = _env()
    ConsoleUI(e).progress(PIP_LINE)
    monkeypatch.setattr(common, "ENV", e)
    common.progress(PIP_LINE)  # the lifecycle commands' callback
    assert err.getvalue().splitlines() == ["· " + PIP_LINE] * 2


def test_a_control_character_in_a_progress_line_is_shown_not_sent():
    e, _out, err = _env()
    ConsoleUI(e).progress("h1: \x1b[31mred\x1b[0m")
    assert "\x1b" not in err.getvalue() and "red" in err.getvalue()


def test_the_final_line_formats_accuracy_and_wall_time():
    e, out, _err = _env()
    status = SimpleNamespace(phase="finished", summary={"rounds_completed": 3, "final_accuracy": 0.8941504178272981,
                                                        "wall_s": 75.31, "status": "finished"})
    ConsoleUI(e).finished(SimpleNamespace(status=status, detached=False))
    assert out.getvalue().strip() == "finished: 3 rounds, final accuracy 0.8942, wall 1m15s"


def test_a_round_line_has_four_decimals_and_a_dash_without_accuracy():
    e, out, _err = _env()
    ui = ConsoleUI(e)
    ui.round(SimpleNamespace(dead=(), round=2, rounds=3, accuracy=0.912345, phase="running"))
    ui.round(SimpleNamespace(dead=(), round=0, rounds=3, accuracy=None, phase="starting"))
    assert out.getvalue().splitlines() == ["round 2/3  accuracy 0.9123  (running)",
                                           "round 0/3  accuracy -  (starting)"]
