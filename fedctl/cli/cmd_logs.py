"""``fedctl logs [TARGET] [-f] [-n N] [--grep PATTERN]``: payload process logs from every host.

TARGET is ``server``, ``client``, ``client-07`` (the process holding client id 7), a client process's
name (``clients-4-7``), a host name or ``all`` (default). Lines are prefixed with host and process,
a client process named after the client ids it holds (``fedctl.monitor.targets.process_name``), so
the name shown is one ``logs`` takes. ``-f`` follows all of them at once over one persistent
connection per host, reading only the bytes added since the last read.
"""

from __future__ import annotations

from typing import Optional

import typer

from fedctl.cli.common import env


def logs_cmd(
    target: Optional[str] = typer.Argument(
        None, help="server | client | client-<id> (the process holding that client) | clients-<first>-<last> | <host> | all"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines (Ctrl-C stops; training goes on)"),
    lines: int = typer.Option(20, "--lines", "-n", help="lines of history per process"),
    grep: Optional[str] = typer.Option(None, "--grep", "-g", help="only lines matching this regular expression"),
    interval: float = typer.Option(1.0, "--interval", help="seconds between reads when following"),
) -> None:
    """Print (and with -f follow) the logs of the run's processes, prefixed with their host."""
    import re

    from fedctl.errors import UsageError
    from fedctl.monitor.targets import display_name, resolve_targets

    if lines < 0:
        raise UsageError(f"--lines must be 0 or more (got {lines})")
    if interval <= 0:
        raise UsageError(f"--interval must be positive (got {interval})")
    try:
        pattern = re.compile(grep) if grep else None
    except re.error as exc:
        raise UsageError(f"--grep {grep!r} is not a valid regular expression: {exc}") from None
    e = env()
    store = e.store
    state = store.load()
    pairs = resolve_targets(state, target)
    if not pairs:
        raise UsageError(f"no payload process in run {state.run_id} yet", hint="start it with `fedctl start`")
    labels: dict[str, list[str]] = {}
    names: dict[tuple[str, str], str] = {}  # (host, label) -> the name shown: one numbering, the client ids
    for h, p in pairs:
        labels.setdefault(h.name, []).append(p.label)
        names[(h.name, p.label)] = display_name(p)
    records = [h for h in state.hosts if h.name in labels]

    from fedctl.dashboard.plain import format_log_line
    from fedctl.monitor.collect import build_probes, collect_once
    from fedctl.ops.common import open_fleet

    probes = build_probes(state, metrics=False, gpu=False, hosts=list(labels), log_labels=labels, clock=e.clock)
    for p in probes.values():
        p.system = False
        p.log_tail_bytes = max(16 * 1024, lines * 1024)
    out = e.console.file

    def show(host: str, label: str, text: str) -> None:
        if pattern is None or pattern.search(text):
            out.write(format_log_line(host, names.get((host, label), label), text) + "\n")

    failed = []
    with open_fleet(store, records) as fleet:
        for s in collect_once(fleet, probes):
            if not s.ok:
                failed.append(s)
                e.err.print(f"{s.host}: {s.error}", highlight=False, markup=False)
                continue
            per_label: dict[str, list[str]] = {}
            for label, text in s.log_lines:
                if pattern is None or pattern.search(text):
                    per_label.setdefault(label, []).append(text)
            for label, texts in per_label.items():
                for text in texts[-lines:] if lines else []:
                    out.write(format_log_line(s.host, names.get((s.host, label), label), text) + "\n")
        out.flush()
        if not follow:
            if failed and len(failed) == len(probes):
                from fedctl.errors import HostsFailed

                raise HostsFailed(f"no host answered ({len(failed)} failed)")
            return
        _follow(fleet, probes, interval, show, out)


def _follow(fleet, probes, interval, show, out) -> None:  # type: ignore[no-untyped-def]
    import queue

    from fedctl.monitor.collect import Collector

    q: "queue.Queue" = queue.Queue()
    reported: dict[str, str | None] = {}
    collector = Collector(fleet, probes, interval, q).start()
    try:
        while True:
            s = q.get()
            if not s.ok:
                if reported.get(s.host) != s.error:
                    out.write(f"[{s.host}: {s.error}]\n")
                    out.flush()
                reported[s.host] = s.error
                continue
            reported[s.host] = None
            for label, text in s.log_lines:
                show(s.host, label, text)
            out.flush()
    except KeyboardInterrupt:
        return
    finally:
        collector.stop(wait=0.5)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_cmd)
