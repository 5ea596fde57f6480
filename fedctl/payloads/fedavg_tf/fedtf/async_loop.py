"""The asynchronous server loop (fedbuff, fedasync): one server update per round line.

`rounds` counts server updates (model versions). FedBuff applies one update when K client updates
are buffered; FedAsync after each one. Every server update writes a round line through the
payload contract (docs/contracts.md) with the fields of a sync round plus `aggregated`, the
staleness of its updates (`staleness_min/mean/max`), `in_flight`, and the run's running totals
`client_updates` and `dropped_stale`; so watch, results and the budget guards read it unchanged.

Checkpoint at each server update (the buffer is empty then, by construction): a resumed server
starts from that version with an empty buffer; updates in flight before the crash are judged by
their version (fedtf/async_coord.py).
"""
from __future__ import annotations

import time
from . import checkpoint
from .async_coord import Arrival
from .metrics import log


def run_async(srv, t_start: float) -> int:
    """Run server updates start_round..rounds on `srv` (server.Server); the process's exit code."""
    cfg, coord = srv.cfg, srv.coord
    st, sm = cfg["strategy"], cfg["sampling"]
    k_buf = 1 if st["name"] == "fedasync" else st["buffer_size"]
    version = srv.start_round - 1
    coord.publish(version, srv.weights, {"rounds": cfg["rounds"]})
    if version < cfg["rounds"]:
        srv.wait_clients()
    stall_s = sm["round_timeout_s"] * (sm["retries"] + 1)
    buffer: list[Arrival] = []
    started = last_arrival = time.time()
    shown = None
    while version < cfg["rounds"]:
        coord.dispatch(srv.rng)
        flying = coord.in_flight()
        now_shown = (version, flying, [a.update.client for a in buffer])
        if now_shown != shown:  # only on a change: an idle run's status.json time must stand still
            shown = now_shown   # (the budget watchdog's idle test); progress reports move it too
            srv.status(round=version + 1, rounds=cfg["rounds"], phase="training", sampled=flying,
                       reported=now_shown[2], waiting=flying, version=version, buffered=len(buffer))
        got = coord.take(time.time() + 1.0)
        now = time.time()
        if got:
            last_arrival = now
        elif now - last_arrival > stall_s:
            return srv.finish("failed", f"no client update for {stall_s:g}s (sampling.round_timeout_s "
                                        f"x (retries + 1)) at model version {version}", t_start)
        buffer.extend(got)
        while len(buffer) >= k_buf and version < cfg["rounds"]:
            batch, buffer = buffer[:k_buf], buffer[k_buf:]
            batch = _fresh(coord, batch, version)
            if not batch:
                continue
            version += 1
            _apply(srv, version, batch, started)
            started = time.time()
    return srv.finish("finished", None, t_start)


def _fresh(coord, batch: list[Arrival], version: int) -> list[Arrival]:
    """The batch's updates with their staleness as of `version`, those past max_staleness dropped."""
    out = []
    for a in batch:
        a.staleness = a.update.staleness = a.metrics["staleness"] = version - a.version
        if a.staleness > coord.max_staleness:
            with coord.cv:
                coord.note_drop("dropped_stale", a.update.client, f"stale: {a.staleness} versions old")
            continue
        out.append(a)
    return out


def _apply(srv, version: int, batch: list[Arrival], started: float) -> None:
    """One server update: aggregate, publish, evaluate, checkpoint, round line."""
    from .robust import safe_aggregate  # noqa: PLC0415
    cfg, coord = srv.cfg, srv.coord
    new, left_out = safe_aggregate(srv.strategy, srv.weights, [a.update for a in batch])
    for k, why in sorted(left_out.items()):
        coord.note_rejection(k, why, version)
    used = [a for a in batch if a.update.client not in left_out]
    srv.weights = new
    coord.publish(version, new, {"rounds": cfg["rounds"]})
    srv.client_updates += len(used)
    loss = acc = None
    if version % cfg["evaluate_every"] == 0 or version == cfg["rounds"]:
        loss, acc = srv.evaluate_now()
    stale = [a.staleness for a in used]
    # what did not reach the model since the last server update: stale, timed out, dropped out, bad
    dropped = [{"id": k, "reason": why} for k, why in coord.take_dropped()] + \
        [{"id": k, "reason": f"rejected: {v}"} for k, v in sorted(left_out.items())]
    with coord.cv:  # bytes are per server update, as they are per sync round
        counts = dict(coord.counts)
        bytes_in, bytes_out = coord.state.bytes_in, coord.state.bytes_out
        coord.state.bytes_in = coord.state.bytes_out = 0
    line = {"type": "round", "round": version, "rounds": cfg["rounds"], "start": started,
            "end": time.time(), "sampled": sorted({a.update.client for a in batch}),
            "reported": sorted({a.update.client for a in used}),
            "dropped": dropped, "rejected": sum(d["reason"].startswith("rejected: ") for d in dropped),
            "clients": {str(a.update.client): a.metrics for a in used},
            "updates": [{"client": a.update.client, "version": a.version, "staleness": a.staleness,
                         "examples": a.update.examples} for a in used],
            "loss": loss, "accuracy": acc, "eval_round": version if loss is not None else None,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out, "strategy": cfg["strategy"]["name"],
            "aggregated": len(used), "staleness_min": min(stale, default=None),
            "staleness_mean": round(sum(stale) / len(stale), 4) if stale else None,
            "staleness_max": max(stale, default=None), "in_flight": len(coord.in_flight()),
            "client_updates": srv.client_updates, "dropped_stale": counts["dropped_stale"]}
    srv.save_checkpoint(version, line, {"client_updates": srv.client_updates, "counts": counts})
    srv.metrics.write(line)
    srv._tensorboard(version, loss, acc, line["end"] - started)
    log("server", f"update {version}/{cfg['rounds']}: {len(used)} client updates (staleness "
                  f"{line['staleness_min']}..{line['staleness_max']}), loss {_fmt(loss)} "
                  f"accuracy {_fmt(acc)}; {srv.client_updates} client updates so far, "
                  f"{counts['dropped_stale']} dropped as stale")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
