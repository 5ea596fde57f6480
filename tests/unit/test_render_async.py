"""watch of an asynchronous run (FedBuff/FedAsync): clients in flight and the last server update's
staleness, from its round line through the contract; a synchronous run shows neither."""

from __future__ import annotations

import json
import re

from fedctl.dashboard.plain import render_lines, status_line
from fedctl.dashboard.render import render
from tests.unit.test_render import NOW, build_model, check_fits, screen, text_of

#: (staleness of each update applied, clients in flight) of server updates 1..6 (buffer K = 2)
UPDATES = [((0, 0), 4), ((0, 1), 4), ((1, 0), 3), ((2, 1), 4), ((0, 1), 4), ((3, 1), 3)]


def async_metrics() -> str:
    """Round lines as docs/contracts.md describes them for an asynchronous strategy."""
    lines, total = [], 0
    for v, (stale, in_flight) in enumerate(UPDATES, start=1):
        ups = [{"client": (2 * v + i) % 10, "version": v - 1 - s, "staleness": s, "examples": 100}
               for i, s in enumerate(stale)]
        total += len(ups)
        lines.append(json.dumps({
            "type": "round", "round": v, "rounds": 20, "start": NOW - 60 + 5 * v, "end": NOW - 57 + 5 * v,
            "sampled": [u["client"] for u in ups], "reported": [u["client"] for u in ups],
            "dropped": [{"id": 9, "reason": "stale: 3 versions old"}] if v == 5 else [],
            "clients": {str(u["client"]): {"response_s": 1.0 + u["client"] / 10, "loss": 0.5,
                                           "version": u["version"], "staleness": u["staleness"]} for u in ups},
            "loss": 0.5, "accuracy": 0.5 + v / 100, "strategy": "fedbuff", "aggregated": len(ups), "updates": ups,
            "staleness_min": min(stale), "staleness_mean": sum(stale) / len(stale), "staleness_max": max(stale),
            "in_flight": in_flight, "client_updates": total, "dropped_stale": 1 if v >= 5 else 0,
        }))
    return "\n".join(lines) + "\n"


STATUS = {"round": 7, "rounds": 20, "phase": "training", "sampled": [1, 3, 5], "reported": [7],
          "waiting": [1, 3, 5]}


def test_async_snapshot_carries_in_flight_and_staleness_of_the_last_server_update():
    a = build_model(metrics=async_metrics(), status=STATUS).snapshot().federation.asynchronous
    assert a is not None
    assert (a.in_flight, a.aggregated, a.client_updates, a.dropped_stale) == (3, 2, 12, 1)
    assert (a.staleness_min, a.staleness_mean, a.staleness_max) == (1, 2.0, 3)
    assert build_model().snapshot().federation.asynchronous is None  # a synchronous run: nothing new


def test_federation_panel_shows_in_flight_and_staleness():
    snap = build_model(metrics=async_metrics(), status=STATUS).snapshot()
    text = text_of(render(snap))
    assert re.search(r"in flight\s+3\b", text)
    assert re.search(r"staleness\s+1/2\.00/3 \(min/mean/max, 2 updates\)", text)
    assert re.search(r"updates\s+12 applied, 1 dropped stale", text)
    compact = text_of(render(snap, width=80, compact=True), width=80)
    assert "in flight 3  staleness 1/2.00/3  waiting 3: 1,3,5" in compact
    assert re.search(r"loss \S+ 0\.500  updates 12 \(1 stale\)", compact)


def test_plain_lines_say_it_too():
    snap = build_model(metrics=async_metrics(), status=STATUS).snapshot()
    assert "in_flight=3 staleness=1/2.00/3 client_updates=12 dropped_stale=1" in status_line(snap)
    assert ("asynchronous: in flight 3  staleness min/mean/max 1/2.00/3  client updates 12  dropped stale 1"
            in render_lines(snap))


def test_async_run_fits_80x24():
    from fedctl.dashboard.screen import WATCH_KEYS

    snap = build_model(hosts=3, metrics=async_metrics(), status=STATUS).snapshot()
    lines = screen(snap, 80, 24, WATCH_KEYS)
    check_fits(lines, 80, 24)
    text = "\n".join(lines)
    assert "in flight 3  staleness 1/2.00/3  waiting 3: 1,3,5" in text, text
    assert "updates 12 (1 stale)" in text


def test_sync_run_screens_show_no_async_fields():
    snap = build_model().snapshot()
    for text in (text_of(render(snap)), text_of(render(snap, width=80, compact=True), width=80),
                 "\n".join(render_lines(snap)), status_line(snap)):
        assert "in flight" not in text and "in_flight" not in text and "staleness" not in text
