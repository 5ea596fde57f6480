"""The plain-text renderer of a watch Snapshot: lines without colours, for pipes and logs.

``status_line`` (one line per change, what ``fedctl watch`` prints without a terminal),
``render_lines`` (the whole snapshot, ``watch --once`` into a pipe) and ``format_log_line`` (the
prefix of every log line, in watch and in ``fedctl logs``). Pure: no rich, no I/O, no clock.
"""

from __future__ import annotations

import math

from fedctl.dashboard.fmt import (allocation_text, compact_seconds, fmt_count, fmt_ids, fmt_money, fmt_num, fmt_staleness, gpu_text,
                                  host_reach, sparkline)
from fedctl.monitor.snapshot import Snapshot
from fedctl.units import fmt_duration


def status_line(s: Snapshot) -> str:
    """One line summing up the run (for non-TTY streaming output)."""
    f = s.federation
    reach = sum(1 for h in s.hosts if h.reachable)
    last = f.history[-1] if f.history else None
    strag = (f" straggler=c{last.straggler}({fmt_num(last.straggler_s, 2)}s)"
             if last and last.straggler is not None else "")
    a = f.asynchronous
    asyn = (f" in_flight={fmt_count(a.in_flight)} staleness={fmt_staleness(a)}"
            f" client_updates={fmt_count(a.client_updates)} dropped_stale={fmt_count(a.dropped_stale)}") if a else ""
    al = s.allocation
    # the job's state, reason and nodes (not its time left: this line is printed when it changes)
    job = (f" job={al.job} job_state={al.state}" + (f" job_reason={al.reason.replace(' ', '_')}" if al.reason else "")
           + (f" nodes={al.nodelist}" if al.nodelist else "")) if al else ""
    return (
        f"run={s.run_id} phase={f.phase} round={f.round}/{f.rounds} acc={fmt_num(s.accuracy)} loss={fmt_num(s.loss)}"
        f" sampled={len(f.sampled)} reported={len(f.reported)} waiting={len(f.waiting)}{asyn}"
        f" hosts={reach}/{len(s.hosts)} alerts={len(s.alerts)}{strag}{job}"
    )


def render_lines(s: Snapshot, max_log_lines: int = 10) -> list[str]:
    """The whole snapshot as plain text lines (no colours), for pipes and logs."""
    f = s.federation
    out = [
        f"run {s.run_id}  payload {s.payload or '-'}  strategy {s.strategy or '-'}  phase {f.phase}",
        f"round {f.round} of {f.rounds or '?'}  elapsed {fmt_duration(s.elapsed_s)}  ETA {fmt_duration(s.eta_s)}"
        f"  cost {fmt_money(s.cost, s.currency)} ({fmt_money(s.cost_per_hour, s.currency)}/h)",
        f"federation: sampled {fmt_ids(f.sampled)}  reported {fmt_ids(f.reported)}  waiting {fmt_ids(f.waiting)}",
        f"accuracy {fmt_num(s.accuracy)} {sparkline([p.accuracy for p in f.history])}"
        f"  loss {fmt_num(s.loss)} {sparkline([p.loss for p in f.history])}",
    ]
    if s.allocation is not None:
        out.insert(2, allocation_text(s.allocation, s.node_hours))
    a = f.asynchronous
    if a:  # the last server update of an asynchronous run
        out.insert(len(out) - 1, f"asynchronous: in flight {fmt_count(a.in_flight)}  staleness min/mean/max {fmt_staleness(a)}"
                      f"  client updates {fmt_count(a.client_updates)}  dropped stale {fmt_count(a.dropped_stale)}")
    for p in f.history[-5:]:
        strag = f" straggler client {p.straggler} ({fmt_num(p.straggler_s, 2)}s)" if p.straggler is not None else ""
        drop = f" dropped {','.join(map(str, p.dropped))}" if p.dropped else ""
        out.append(f"  round {p.round}: acc {fmt_num(p.accuracy)} loss {fmt_num(p.loss)}"
                   f" {p.reported}/{p.sampled} reported in {fmt_duration(p.duration_s)}{strag}{drop}")
    for a in s.alerts:
        out.append(f"ALERT {a.level}: {a.message}")
    out.append("clients:")
    for c in s.clients:
        resp = "-" if c.last_response_s is None else f"{c.last_response_s:.2f}s"
        heat = " ".join(_plain_heat(v) for v in c.heat)
        out.append(f"  client {c.id:>3} {c.host:<12} {c.state:<9} resp {resp:>7} rounds {c.rounds_taken:>3}"
                   f" loss {fmt_num(c.last_loss)}  [{heat}]")
    out.append("hosts:")
    for h in s.hosts:
        reach, _ = host_reach(h)
        load = "-" if h.load1 is None else f"{h.load1:.2f}"
        ram = "-" if h.mem_total_mib is None else f"{(h.mem_used_mib or 0) / 1024:.1f}/{h.mem_total_mib / 1024:.1f}G"
        procs = " ".join(f"{p.label}:{'alive' if p.alive else 'dead' if p.alive is False else '?'}"
                         for p in h.processes)
        out.append(f"  {h.name:<12} {h.role:<13} reachable {reach}  load {load}  RAM {ram}  {procs}")
        for g in gpu_text(h.gpu):
            out.append(f"    gpu {g}")
    if max_log_lines > 0:
        for ln in s.logs[-max_log_lines:]:
            out.append(format_log_line(ln.host, ln.shown, ln.text))
    return out


def _plain_heat(v: float | None) -> str:
    if v is None:
        return "."
    if v < 0:
        return "X"
    if math.isnan(v):
        return "?"
    return compact_seconds(v, 4)


def format_log_line(host: str, label: str, text: str) -> str:
    """``h2 client-0 | text``: how every log line is prefixed, in watch and in ``fedctl logs``."""
    return f"{host} {label} | {text}"
