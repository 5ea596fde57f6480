"""The report's figures, and the clients x rounds matrices two of them draw.

Every plot is a PNG of exactly ``PLOT_SIZE_PX``, so a paper's layout does not shift. matplotlib is
imported only inside the plotting functions (Agg backend): importing this module stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from fedctl.contract import MetricsLog
from fedctl.cost import cost_timeline
from fedctl.state import RunState

#: every plot is written at exactly this size (pixels), so a paper's layout does not shift
PLOT_SIZE_PX = (1000, 600)
PLOT_DPI = 100


# -- the data -------------------------------------------------------------------------------------------
def client_ids(log: MetricsLog, clients: int = 0) -> list[int]:
    """Every client id the rounds name (sampled, reported, dropped, with metrics), and ``0..clients-1``."""
    ids: set[int] = set(range(clients))
    for r in log.rounds.values():
        ids.update(r.sampled, r.reported, r.dropped, r.clients)
    return sorted(ids)


def participation_matrix(
    log: MetricsLog, clients: int = 0
) -> tuple[list[int], list[int], list[list[int]], list[list[float]]]:
    """(client ids, rounds, status[c][r], response_s[c][r]), each round once (the contract's reader).

    status: 0 not sampled, 1 reported, 2 dropped (or sampled and never reported). response: NaN
    where there is no response time.
    """
    ids = client_ids(log, clients)
    rounds = log.ordered
    row = {c: i for i, c in enumerate(ids)}
    status = [[0] * len(rounds) for _ in ids]
    resp = [[math.nan] * len(rounds) for _ in ids]
    for j, r in enumerate(rounds):
        for c in set(r.sampled) | set(r.dropped):
            status[row[c]][j] = 2
        for c in r.reported:
            status[row[c]][j] = 1
        for c in r.dropped:
            status[row[c]][j] = 2
        for c in r.reported:
            v = r.response(c)
            if v is not None and status[row[c]][j] == 1:
                resp[row[c]][j] = v
    return ids, [r.round for r in rounds], status, resp


# -- asynchronous runs (FedBuff, FedAsync): one round line per server update ------------------------------
def is_async(log: MetricsLog) -> bool:
    """Do the round lines carry the running total of client updates (an asynchronous strategy's)?"""
    return any("client_updates" in r.values for r in log.rounds.values())


def update_staleness(log: MetricsLog) -> list[int]:
    """The staleness (server versions behind) of every client update that went into the model.

    The round line's ``updates[]`` holds one entry per update (a client may send two into one server
    update; the contract's record gives it as ``updates``). A line without it (an older payload)
    falls back to each reported client's ``clients.<id>.staleness``.
    """
    out: list[int] = []
    for r in log.ordered:
        if r.updates:
            vals = [u.get("staleness") for u in r.updates]
        else:
            vals = [r.clients.get(c, {}).get("staleness") for c in r.reported]
        out += [int(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    return out


def accuracy_by(log: MetricsLog, axis: str) -> tuple[list[float], list[float]]:
    """(x, accuracy) of every round that reports accuracy; x is ``time`` (seconds from the first
    round's start to the round's end) or ``updates`` (the running total of client updates)."""
    rounds = log.ordered
    first = min((r.start for r in rounds if r.start is not None), default=None)
    xs, ys = [], []
    for r in rounds:
        if r.accuracy is None:
            continue
        if axis == "time":
            x = r.end - first if r.end is not None and first is not None else None
        else:
            x = r.values.get("client_updates")
        if x is not None:
            xs.append(float(x))
            ys.append(float(r.accuracy))
    return xs, ys


# -- figure plumbing ---------------------------------------------------------------------------------------
def _figure(title: str):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(PLOT_SIZE_PX[0] / PLOT_DPI, PLOT_SIZE_PX[1] / PLOT_DPI), dpi=PLOT_DPI)
    ax.set_title(title)
    return plt, fig, ax


def _int_rounds(ax) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(plt, fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    # no bbox_inches="tight": the file keeps exactly PLOT_SIZE_PX
    fig.savefig(path, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    return path


def _empty(ax, text: str) -> None:  # type: ignore[no-untyped-def]
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def _finish_client_axes(plt, fig, ax, ids: Sequence[int] | None, path: Path):  # type: ignore[no-untyped-def]
    """The clients x rounds figures' shared ending: client ticks (or 'no rounds'), labels, save."""
    if ids:
        step = max(1, math.ceil(len(ids) / 30))
        ax.set_yticks(range(0, len(ids), step))
        ax.set_yticklabels([str(ids[i]) for i in range(0, len(ids), step)])
    else:
        _empty(ax, "no rounds completed")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel("client")
    return _save(plt, fig, path)


# -- the figures -----------------------------------------------------------------------------------------
def plot_curve(log: MetricsLog, key: str, path: Path, title: str, ylabel: str, best: str = "max") -> Path:
    """One metric per round as a line with markers, its best value (``max`` or ``min``) marked."""
    plt, fig, ax = _figure(title)
    xs, ys = log.series(key)
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, color="#1f77b4", label=key)
        top = max(ys) if best == "max" else min(ys)
        ax.axhline(top, color="#ff7f0e", linestyle="--", linewidth=1, label=f"best {top:.4f}")
        ax.legend(loc="best")
    else:
        _empty(ax, f"no {key} reported")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def plot_accuracy_by(log: MetricsLog, axis: str, path: Path) -> Path:
    """Accuracy against wall-clock time (``axis="time"``) or against client updates (``"updates"``),
    so a synchronous and an asynchronous run compare on the axis that costs them."""
    label = "seconds since the first round started" if axis == "time" else "client updates"
    plt, fig, ax = _figure(f"global model accuracy against {'wall-clock time' if axis == 'time' else 'client updates'}")
    xs, ys = accuracy_by(log, axis)
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, color="#1f77b4", label="accuracy")
        ax.axhline(max(ys), color="#ff7f0e", linestyle="--", linewidth=1, label=f"best {max(ys):.4f}")
        ax.legend(loc="best")
    else:
        _empty(ax, "no accuracy reported")
    ax.set_xlabel(label)
    if axis == "updates":
        _int_rounds(ax)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def plot_staleness(log: MetricsLog, path: Path) -> Path:
    """A histogram of the staleness of the client updates the server applied (one bar per value)."""
    plt, fig, ax = _figure("staleness of the applied client updates")
    vals = update_staleness(log)
    if vals:
        top = max(vals)
        ax.hist(vals, bins=[b - 0.5 for b in range(top + 2)], color="#1f77b4", edgecolor="white")
        _int_rounds(ax)  # integer ticks on x: staleness counts versions
    else:
        _empty(ax, "no staleness reported")
    ax.set_xlabel("staleness (server versions behind)")
    ax.set_ylabel("client updates")
    ax.grid(True, alpha=0.3, axis="y")
    return _save(plt, fig, path)


def plot_curves(curves: Sequence[tuple[str, list[int], list[float]]], path: Path, title: str, ylabel: str,
                target: float | None = None) -> Path:
    """Several runs' (label, rounds, values) on one plot, with a dotted target line if given."""
    plt, fig, ax = _figure(title)
    for label, xs, ys in curves:
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(target, color="#777777", linestyle=":", linewidth=1, label=f"target {target:.4f}")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


def plot_response_heatmap(log: MetricsLog, path: Path, clients: int = 0) -> Path:
    """Clients x rounds: response time of each reported update; dropped cells red, not sampled grey."""
    import numpy as np

    plt, fig, ax = _figure("client response time per round")
    ids, rounds, status, resp = participation_matrix(log, clients)
    if ids and rounds:
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        data = np.ma.masked_invalid(np.array(resp, dtype=float))
        cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
        extent = (rounds[0] - 0.5, rounds[-1] + 0.5, len(ids) - 0.5, -0.5)
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, extent=extent)
        st = np.array(status)
        dropped = np.ma.masked_where(st != 2, np.ones_like(st, dtype=float))
        ax.imshow(dropped, aspect="auto", interpolation="nearest", cmap=ListedColormap(["#d62728"]),
                  extent=extent, vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, label="response time (s)")
        ax.legend(handles=[Patch(color="#d62728", label="dropped / no answer"),
                           Patch(color="#e6e6e6", label="not sampled")],
                  loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    return _finish_client_axes(plt, fig, ax, ids if (ids and rounds) else None, path)


def plot_participation(log: MetricsLog, path: Path, clients: int = 0) -> Path:
    """Clients x rounds: reported (green), dropped (red), not sampled (light grey)."""
    import numpy as np

    plt, fig, ax = _figure("participation: who was sampled and who reported")
    ids, rounds, status, _ = participation_matrix(log, clients)
    if ids and rounds:
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        colours = ["#eeeeee", "#2ca02c", "#d62728"]
        extent = (rounds[0] - 0.5, rounds[-1] + 0.5, len(ids) - 0.5, -0.5)
        ax.imshow(np.array(status), aspect="auto", interpolation="nearest", cmap=ListedColormap(colours),
                  vmin=0, vmax=2, extent=extent)
        ax.legend(handles=[Patch(color=c, label=l) for c, l in
                           zip(colours, ("not sampled", "reported", "dropped"))],
                  loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    return _finish_client_axes(plt, fig, ax, ids if (ids and rounds) else None, path)


def plot_cost(state: RunState, now: float, path: Path, max_cost: float | None = None) -> Path:
    """The run's cumulative cost over time, one line per currency, with the budget if there is one."""
    plt, fig, ax = _figure("cost of the run over time")
    times, series = cost_timeline(state, now)
    if times and series:
        for cur, ys in series.items():
            ax.plot([t / 60.0 for t in times], ys, label=cur)
        if max_cost is not None:
            ax.axhline(max_cost, color="#d62728", linestyle="--", linewidth=1, label=f"budget {max_cost:g}")
        ax.legend(loc="best")
        ax.set_ylabel("cost (" + ", ".join(series) + ")")
    else:
        _empty(ax, "no priced hosts (set price_per_hour in the inventory)")
    ax.set_xlabel("minutes since the first host was acquired")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)
