"""The watch model: folds HostSamples into what is known, and builds a Snapshot at any instant.

Only the UI thread touches a WatchModel (collectors hand samples over a queue), so it needs no locks.
``snapshot(now)`` derives everything shown (client states, stragglers, alerts, ETA, cost) from the
run state, the latest sample of each host and the metrics aggregated so far.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fedctl.contract import ServerStatus, parse_status
from fedctl.cost import run_cost
from fedctl.monitor.allocation import aged
from fedctl.monitor.collect import HostSample, server_host_name
from fedctl.monitor.targets import client_hosts, log_filter_matches  # noqa: F401 - re-exported
from fedctl.monitor.metrics import MetricsAggregator
from fedctl.monitor.snapshot import (
    Alert,
    AsyncProgress,
    ClientSnapshot,
    Federation,
    GpuReport,
    HostSnapshot,
    LogLine,
    ProcSnapshot,
    RoundPoint,
    Snapshot,
)
from fedctl.model import LIVE_PROCS, Phase
from fedctl.providers.base import AllocationStatus
from fedctl.state import RunState

DONE_PHASES = (Phase.FINISHED, Phase.FAILED, Phase.STOPPED, Phase.TEARING_DOWN, Phase.TORN_DOWN)


@dataclass
class _HostView:
    last: HostSample | None = None  # the latest attempt
    last_ok: HostSample | None = None  # the latest successful probe


class WatchModel:
    """Everything watch has learnt so far about one run."""

    def __init__(
        self,
        state: RunState,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        heat_rounds: int = 12,
        history: int = 30,
        max_logs: int = 1000,
    ) -> None:
        self.state = state
        self.interval = interval
        self.clock = clock
        self.heat_n = heat_rounds
        self.history_n = history
        self.metrics = MetricsAggregator()
        self.status: ServerStatus | None = None  # the server's status.json, as last read
        self.hosts: dict[str, _HostView] = {h.name: _HostView() for h in state.hosts}
        self.logs: deque[LogLine] = deque(maxlen=max_logs)
        self._seq = 0
        self.server = server_host_name(state)
        self.clients_map = client_hosts(state)
        self._roles = {h.name: h.role for h in state.hosts}
        self.allocation: AllocationStatus | None = None  # the run's Slurm job, as last read
        self.allocation_at: float | None = None  # when (this model's clock)

    def set_allocation(self, status: AllocationStatus | None, read_at: float) -> None:
        """Take the allocation's status read at ``read_at`` (``monitor.allocation``)."""
        self.allocation, self.allocation_at = status, read_at

    def update_state(self, state: RunState) -> None:
        """Take a re-read state (phase, processes) without losing what was collected."""
        self.state = state
        for h in state.hosts:
            self.hosts.setdefault(h.name, _HostView())
        self.server = server_host_name(state)
        self.clients_map = client_hosts(state)
        self._roles = {h.name: h.role for h in state.hosts}

    # -- input -------------------------------------------------------------------------------------
    def apply(self, sample: HostSample) -> list[LogLine]:
        """Fold one sample in; returns the new log lines it brought (for plain-line output)."""
        view = self.hosts.setdefault(sample.host, _HostView())
        view.last = sample
        if not sample.ok:
            return []
        view.last_ok = sample
        if sample.metrics_reset:
            self.metrics.reset()
        if sample.metrics_text:
            self.metrics.feed(sample.metrics_text)
        if sample.status_text is not None:
            st = parse_status(sample.status_text)
            if st is not None:
                self.status = st
        new = []
        from fedctl.monitor.targets import display_name

        procs = {p.label: p for p in self._host_procs(sample.host)}
        for label, text in sample.log_lines:
            self._seq += 1
            p = procs.get(label)
            line = LogLine(sample.host, label, p.role if p else self._roles.get(sample.host, ""), text, self._seq,
                           name=display_name(p) if p else "")
            self.logs.append(line)
            new.append(line)
        return new

    def apply_all(self, samples: Iterable[HostSample]) -> None:
        for s in samples:
            self.apply(s)

    def _host_procs(self, name: str) -> list[Any]:
        for h in self.state.hosts:
            if h.name == name:
                return list(h.processes)
        return []

    # -- derived facts -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """The run is over: a summary line arrived, the server said so, or the state says so."""
        if self.metrics.summary is not None:
            return True
        if self.status is not None and self.status.phase in ("finished", "failed"):  # the payload's status.json
            return True
        return self.state.phase in DONE_PHASES

    def summary(self) -> dict[str, Any]:
        """The run's summary line, or what is known when there is none."""
        if self.metrics.summary is not None:
            return self.metrics.summary.to_dict()
        last = self.metrics.last_round
        return {
            "type": "summary",
            "rounds_completed": len(self.metrics.rounds),
            "final_accuracy": last.accuracy if last else None,
            "final_loss": last.loss if last else None,
            "status": (self.status.phase if self.status else None) or self.state.phase,
            "reason": self.state.error,
        }

    def _alive(self) -> dict[tuple[str, str], bool | None]:
        out: dict[tuple[str, str], bool | None] = {}
        for h in self.state.hosts:
            view = self.hosts.get(h.name)
            pids = view.last_ok.probe.pids if view and view.last_ok and view.last_ok.probe else {}
            for p in h.processes:
                out[(h.name, p.label)] = pids[p.label][1] if p.label in pids else None
        return out

    def snapshot(self, now: float | None = None, log_filter: str | None = None, max_logs: int = 200) -> Snapshot:
        """Build the Snapshot shown at ``now`` (pure over the model's current contents)."""
        now = self.clock() if now is None else now
        alive = self._alive()
        done = self.done
        fed = self._federation(now)
        clients = self._clients(fed, alive, done)
        hosts = self._hosts(now, alive)
        alerts = self._alerts(now, fed, hosts, done)
        elapsed, eta = self._timing(now, fed, done)
        cost, per_hour, currency, node_hours = self._cost(now)
        logs = [ln for ln in self.logs if log_filter_matches(ln, log_filter, self.clients_map)][-max_logs:]
        strategy = self.metrics.strategy or ""  # what the payload's round lines say, nothing else
        return Snapshot(
            run_id=self.state.run_id,
            payload=self.state.payload_name,
            strategy=strategy,
            run_phase=self.state.phase,
            now=now,
            elapsed_s=elapsed,
            eta_s=eta,
            cost=cost,
            cost_per_hour=per_hour,
            currency=currency,
            federation=fed,
            clients=tuple(clients),
            hosts=tuple(hosts),
            alerts=tuple(alerts),
            logs=tuple(logs),
            log_filter=log_filter,
            done=done,
            summary=self.summary() if done else None,
            interval_s=self.interval,
            allocation=aged(self.allocation, self.allocation_at, now),
            node_hours=node_hours,
        )

    def _federation(self, now: float) -> Federation:
        agg = self.metrics
        last = agg.last_round
        st = self.status or ServerStatus()
        rounds = int(st.rounds or agg.total_rounds or self.state.rounds or 0)
        if agg.summary is not None:
            phase = agg.summary.status
        elif st.phase:
            phase = st.phase
        elif self.state.phase in DONE_PHASES:
            phase = self.state.phase
        else:
            phase = "training" if last is not None else "waiting"
        if st.round is not None:
            rnd = st.round
        elif last is not None:
            rnd = last.round if phase in DONE_PHASES or (rounds and last.round >= rounds) else last.round + 1
        else:
            rnd = 0
        sampled, reported, waiting = st.sampled, st.reported, st.waiting
        if self.status is None and last is not None and phase in DONE_PHASES:
            sampled, reported = last.sampled, last.reported
        round_start = last.end if last and last.round < rnd else (self.state.started_at if rnd <= 1 else None)
        age = max(0.0, now - round_start) if round_start and phase not in DONE_PHASES else None
        history = []
        for r in agg.recent(self.history_n):
            sid, ss = r.straggler()
            history.append(
                RoundPoint(r.round, r.accuracy, r.loss, r.duration_s, sid, ss, len(r.sampled), len(r.reported),
                           tuple(sorted(r.dropped)))
            )
        heat = tuple(r.round for r in agg.recent(self.heat_n))
        return Federation(rnd, rounds, phase, sampled, reported, waiting, age, tuple(history), heat,
                          AsyncProgress.of_round(last.values) if last else None)

    def _clients(self, fed: Federation, alive: dict[tuple[str, str], bool | None], done: bool) -> list[ClientSnapshot]:
        agg = self.metrics
        ids = set(range(self.state.clients)) | set(agg.clients) | set(self.clients_map)
        last = agg.last_round
        uploading = set(self.status.uploading) if self.status else set()
        out = []
        for cid in sorted(ids):
            host, label = self.clients_map.get(cid, ("?", ""))
            st = agg.clients.get(cid)
            proc_alive = alive.get((host, label))
            if done:
                state = "finished"
            elif proc_alive is False:
                state = "dead"
            elif cid in uploading:
                state = "uploading"
            elif cid in fed.waiting:
                state = "training"
            elif cid in fed.reported:
                state = "reported"
            elif cid in fed.sampled:
                state = "dropped"
            elif last is not None and cid in last.dropped and self.status is None:
                state = "dropped"
            elif proc_alive is None and self.status is None and last is None:
                state = "unknown"
            else:
                state = "waiting"
            heat = []
            for rnum in fed.heat_rounds:
                rec = agg.rounds[rnum]
                if cid in rec.reported:
                    r = rec.response(cid)
                    heat.append(r if r is not None else math.nan)
                elif cid in rec.sampled or cid in rec.dropped:
                    heat.append(-1.0)
                else:
                    heat.append(None)
            out.append(
                ClientSnapshot(
                    id=cid,
                    host=host,
                    state=state,
                    last_response_s=st.last_response_s if st else None,
                    rounds_taken=st.rounds_taken if st else 0,
                    last_loss=st.last_loss if st else None,
                    heat=tuple(heat),
                )
            )
        return out

    def _hosts(self, now: float, alive: dict[tuple[str, str], bool | None]) -> list[HostSnapshot]:
        out = []
        stale_after = max(3 * self.interval, self.interval + 5.0)
        for h in self.state.hosts:
            view = self.hosts.get(h.name) or _HostView()
            last, ok = view.last, view.last_ok
            procs = tuple(
                ProcSnapshot(p.label, p.role,
                             (ok.probe.pids.get(p.label, (p.pid, False))[0] if ok and ok.probe else p.pid) or p.pid,
                             alive.get((h.name, p.label)), tuple(p.client_ids), p.status)
                for p in h.processes
            )
            pr = ok.probe if ok else None
            age = now - ok.time if ok else None
            mem_total = pr.mem_total_kib / 1024 if pr and pr.mem_total_kib else None
            mem_used = (pr.mem_total_kib - pr.mem_avail_kib) / 1024 if pr and pr.mem_total_kib and pr.mem_avail_kib is not None else None
            out.append(
                HostSnapshot(
                    name=h.name,
                    role=h.role,
                    address=h.info.address,
                    reachable=None if last is None else last.ok,
                    error=None if last is None or last.ok else last.error,
                    age_s=age,
                    stale=age is not None and age > stale_after,
                    load1=pr.load1 if pr else None,
                    ncpu=pr.ncpu if pr else None,
                    mem_used_mib=mem_used,
                    mem_total_mib=mem_total,
                    gpu=(ok.gpu if ok and ok.gpu else GpuReport("unknown")),
                    processes=procs,
                    probe_s=last.duration if last else None,
                )
            )
        return out

    def _alerts(self, now: float, fed: Federation, hosts: list[HostSnapshot], done: bool) -> list[Alert]:
        alerts: list[Alert] = []
        agg = self.metrics
        for h in hosts:
            if h.reachable is False:
                alerts.append(Alert("host_unreachable", f"{h.name} unreachable: {h.error}", "error", host=h.name))
            elif h.stale and h.age_s is not None:
                alerts.append(Alert("host_unreachable", f"{h.name} has not answered for {h.age_s:.0f}s", "warning", host=h.name))
            if not done:
                for p in h.processes:
                    if p.alive is False and p.recorded_status in LIVE_PROCS:
                        alerts.append(Alert("process_died", f"{p.label} on {h.name} (pid {p.pid}) is not running",
                                            "error", host=h.name, client=p.client_ids[0] if p.client_ids else None))
        for rnum in agg.nan_rounds()[-3:]:
            alerts.append(Alert("nan_loss", f"round {rnum}: loss is NaN", "error", round=rnum))
        for rec in agg.recent(3):
            for cid, reason in sorted(rec.dropped.items()):
                if "reject" in reason:
                    alerts.append(Alert("update_rejected", f"round {rec.round}: update of client {cid} rejected ({reason})",
                                        "warning", client=cid, round=rec.round))
                elif "timeout" in reason or "timed out" in reason:
                    alerts.append(Alert("round_timeout", f"round {rec.round}: client {cid} timed out",
                                        "warning", client=cid, round=rec.round))
        for ev in agg.events[-5:]:
            kind = "update_rejected" if "reject" in ev.message.lower() else "warning"
            level = "error" if ev.level == "error" else "warning"
            alerts.append(Alert(kind, ev.message, level, client=ev.client, round=ev.round))
        durations = [p.duration_s for p in fed.history if p.duration_s]
        if fed.round_age_s is not None and durations and not done:
            usual = statistics.median(durations)
            if fed.round_age_s > max(30.0, 3 * usual):
                alerts.append(Alert("round_timeout", f"round {fed.round} running for {fed.round_age_s:.0f}s "
                                    f"(usual {usual:.1f}s)", "warning", round=fed.round))
        if agg.summary is not None and agg.summary.status == "failed":
            alerts.append(Alert("run_failed", f"run failed: {agg.summary.reason or 'no reason given'}", "error"))
        if agg.bad_lines:
            alerts.append(Alert("warning", f"metrics.jsonl: {agg.bad_lines} unreadable line(s)", "warning"))
        alerts.sort(key=lambda a: a.level != "error")
        return alerts[:20]

    def _timing(self, now: float, fed: Federation, done: bool) -> tuple[float | None, float | None]:
        agg = self.metrics
        start = self.state.started_at
        if start is None and agg.rounds:
            start = agg.rounds[min(agg.rounds)].start
        if done:
            if agg.summary is not None and agg.summary.wall_s is not None:
                return agg.summary.wall_s, 0.0
            end = self.state.finished_at or (agg.last_round.end if agg.last_round else None) or now
            return (end - start if start else None), 0.0
        elapsed = now - start if start else None
        recent = [r for r in agg.recent(5) if r.duration_s is not None]
        eta = None
        if recent and fed.rounds:
            first, lastr = recent[0], recent[-1]
            per_round = ((lastr.end or 0) - (first.start or 0)) / len(recent)  # gaps between rounds count
            remaining = max(0, fed.rounds - len(agg.rounds))
            eta = max(0.0, remaining * per_round - (fed.round_age_s or 0.0) * (remaining > 0))
        return elapsed, eta

    def _cost(self, now: float) -> tuple[float | None, float | None, str, float | None]:
        rc = run_cost(self.state, now)
        if not rc.total and not rc.per_hour:
            return None, None, "USD", rc.node_hours
        currency = sorted(set(rc.total) | set(rc.per_hour))[0]
        return rc.total.get(currency, 0.0), rc.per_hour.get(currency, 0.0), currency, rc.node_hours
