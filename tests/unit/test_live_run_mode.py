"""``fedctl run``'s live screen: Ctrl-C is not a way out (it stops the run), ``d`` detaches, and the
keys line is on screen even when the terminal is too short for everything."""

from __future__ import annotations

import pytest
from rich.console import Console

from fedctl.dashboard.live import DETACH_HELP, WatchLoop, fit_screen
from tests.unit.test_render import build_model


def loop(run_mode: bool) -> WatchLoop:
    model = build_model()
    console = Console(width=120, height=30, force_terminal=True)
    return WatchLoop(model.state, fleet=None, console=console, keys=True, plain=False,  # type: ignore[arg-type]
                     run_mode=run_mode)


def test_run_mode_keys():
    run = loop(run_mode=True)
    assert run._key("d") and run._quit_reason() == "detached"
    assert run._key("f") is False
    with pytest.raises(KeyboardInterrupt):
        run._key("\x03")
    watch = loop(run_mode=False)
    assert watch._key("d") is False and watch._key("\x03") and watch._quit_reason() == "quit"
    assert run._footer() == DETACH_HELP and watch._footer() is None


def test_keys_line_survives_a_short_terminal():
    snap = build_model().snapshot()
    console = Console(width=200, height=20, force_terminal=True)
    lines = console.render_lines(fit_screen(snap, console, DETACH_HELP), console.options, pad=False)
    first = "".join(seg.text for seg in lines[0])
    assert first.startswith("d: detach (the run goes on; `fedctl watch` to come back")
