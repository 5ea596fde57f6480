"""The watch screen sized to a terminal: the keys line on top, then ``render`` with as many client
and host rows as fit, then the logs in the lines left. Never taller or wider than the terminal, so
rich.Live (which crops the bottom) never hides the keys, and no line wraps.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from fedctl.dashboard.fmt import gpu_text
from fedctl.dashboard.render import names_width, render, render_logs
from fedctl.monitor.snapshot import Snapshot

#: the keys of ``fedctl run``'s screen (the only place a user learns them), longest first: the
#: longest that fits the terminal's width is shown, on the screen's first line
DETACH_HELP = ("d: detach (the run goes on; `fedctl watch` to come back, `fedctl teardown` to end it)"
               "  ·  Ctrl-C: stop the run, collect results, tear down  ·  f: filter logs")
DETACH_KEYS = (DETACH_HELP,
               "d: detach (run goes on)  ·  Ctrl-C: stop the run, collect, tear down  ·  f: logs",
               "d: detach  ·  Ctrl-C: stop the run  ·  f: logs")
NO_KEYS_HELP = "Ctrl-C: stop the run, collect results, tear down"
#: the keys of ``fedctl watch``: quitting never stops the training
WATCH_KEYS = ("q: quit (the run keeps going; `fedctl watch` again to come back)  ·  f: filter logs",
              "q: quit (the run keeps going)  ·  f: filter logs",
              "q: quit  ·  f: logs")
WATCH_NO_KEYS = ("Ctrl-C: quit (the run keeps going)", "Ctrl-C: quit")
#: a terminal at least this wide and tall gets the boxed screen with one line per GPU
FULL_SIZE = (120, 40)


def keys_text(keys: str | Sequence[str], width: int) -> Text:
    """The keys line: the longest of ``keys`` that fits ``width``, else the shortest, cut at the end."""
    options = [keys] if isinstance(keys, str) else list(keys)
    pick = next((k for k in options if len(k) <= width), options[-1])
    return Text(pick, style="bold reverse", no_wrap=True, overflow="ellipsis")


def alert_lines_for(height: int) -> int:
    """How many alert lines a ``height``-line screen shows (the rest: a "more" line, and --json)."""
    return max(1, min(8, (height - 18) // 2))


def split_rows(snap: Snapshot, room: int, compact: bool) -> tuple[int, int]:
    """(client rows, host rows) within ``room`` lines: what both need if it fits, else a fair share
    (the rows shown are the problem rows first, see ``render.pick_rows``)."""
    host_lines = [1 if compact else max(1, len(gpu_text(h.gpu))) for h in snap.hosts]
    need_c, need_h = len(snap.clients), sum(host_lines)
    room = max(0, room)
    if need_c + need_h <= room:
        return need_c, len(snap.hosts)
    half = room // 2
    c_room = room - need_h if need_h <= half else need_c if need_c <= half else half
    h_room = room - c_room
    rows, used = 0, 0
    for n in host_lines:
        if used + n > h_room:
            break
        used += n
        rows += 1
    return c_room, rows


def fit_screen(snap: Snapshot, console: Console, keys: str | Sequence[str] | None = None) -> RenderableType:
    """``render(snap)`` sized to the terminal, never taller or wider than it.

    The keys line goes first (a terminal too short for everything still shows it: Live crops the
    bottom); then the panels, measured with empty tables first so the rows get exactly the lines
    left; the logs take what remains, at least ``min_logs`` lines."""
    width, height = console.size
    compact = width < FULL_SIZE[0] or height < FULL_SIZE[1]
    parts: list[RenderableType] = []
    if keys is not None:
        parts.append(keys_text(keys, width))
        height -= 1
    log_frame, min_logs = (1, 3 if height >= 20 else 1) if compact else (2, 5)
    alerts = alert_lines_for(height) if compact else 8

    def upper(c_rows: int, h_rows: int) -> list[Any]:
        screen = render(snap, max_log_lines=0, heat_columns=12, max_client_rows=c_rows, max_host_rows=h_rows,
                        width=width, compact=compact, max_alerts=alerts)
        return console.render_lines(screen, console.options, pad=False, new_lines=True)

    base = len(upper(0, 0))
    lines = upper(*split_rows(snap, height - base - log_frame - min_logs, compact))[:max(0, height)]
    parts.append(_Segments([seg for line in lines for seg in line]))
    room = height - len(lines) - log_frame
    if room >= 1:
        parts.append(render_logs(snap, room, compact, names_width(snap, width, compact)))
    return Group(*parts)


class _Segments:
    """Already rendered segments as a renderable (so the upper panels are rendered once per frame)."""

    def __init__(self, segments: list[Any]) -> None:
        self.segments = segments

    def __rich_console__(self, console: Console, options: Any) -> Any:
        yield from self.segments
