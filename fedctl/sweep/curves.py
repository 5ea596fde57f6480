"""A sweep's accuracy curves: per configuration, the mean over its finished seeds as a line and the
seeds' min-max range as a band (with 2-5 seeds a band of +-std would suggest a spread the seeds do not
have; min-max shows exactly where every seed was).

    curves.png              every configuration in one panel, one colour each (legend outside)
    curves_by_<key>.png     one per grid key: what a paper asks of a dimension, "what does <key> change,
                            the rest held fixed?": one panel per combination of the OTHER keys' values,
                            in each a line per value of <key>, coloured the same in every panel

The x axis is the round for synchronous runs, client updates when every run is asynchronous (FedBuff,
FedAsync: a "round" there is a server update) and wall-clock seconds when a sweep mixes both, the one
axis they share. Seeds are averaged where all of them have a point (the common rounds; on a continuous
axis a common grid over the range all seeds cover), so a mean never mixes a different set of seeds.
matplotlib is imported only inside ``write_curves`` (Agg backend).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from fedctl.sweep.outcomes import ConfigRow, config_label, fmt_param

#: at most this many panels in one per-key figure, and this many entries in a legend
MAX_PANELS = 12
MAX_LEGEND = 20
WIDTH_PX, PANEL_PX, DPI = 1000, 330, 100
AXIS_LABEL = {"round": "round", "updates": "client updates", "time": "seconds since the first round started"}
BAND_NOTE = "line: mean over seeds; band: min-max over seeds"

Curve = tuple[list[float], list[float], list[float], list[float]]  # x, mean, min, max


def curve_axis(rows: Sequence[ConfigRow]) -> str:
    """``round``, ``updates`` (every run asynchronous) or ``time`` (a mix)."""
    kinds = {o.asynchronous for r in rows for o in r.finished}
    if kinds == {True}:
        return "updates"
    return "time" if kinds == {True, False} else "round"


def _points(o: Any, axis: str) -> tuple[list[float], list[float]]:
    from fedctl.results.plots import accuracy_by

    if axis == "round":
        xs, ys = o.log.series("accuracy")
        return [float(x) for x in xs], ys
    return accuracy_by(o.log, axis)


def config_curve(row: ConfigRow, axis: str, grid_points: int = 100) -> Curve | None:
    """The mean and min-max of the configuration's finished seeds; None when none has a point."""
    import numpy as np

    seeds = [p for o in row.finished if o.log is not None and (p := _points(o, axis))[0]]
    if not seeds:
        return None
    if axis == "round":  # the rounds every seed has
        common = sorted(set.intersection(*(set(xs) for xs, _ in seeds)))
        ys = np.array([[dict(zip(xs, vals))[x] for x in common] for xs, vals in seeds])
        xs_out = common
    else:  # interpolate on the range every seed covers
        lo, hi = max(xs[0] for xs, _ in seeds), min(xs[-1] for xs, _ in seeds)
        if hi < lo:
            return None
        grid = np.linspace(lo, hi, grid_points) if hi > lo else np.array([lo])
        ys = np.array([np.interp(grid, xs, vals) for xs, vals in seeds])
        xs_out = [float(x) for x in grid]
    if not len(xs_out):
        return None
    return xs_out, ys.mean(axis=0).tolist(), ys.min(axis=0).tolist(), ys.max(axis=0).tolist()


def file_for(key: str) -> str:
    """curves_by_<key>.png with the key's characters kept to a safe set."""
    return "curves_by_" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".png"


def legend_label(params: Sequence[tuple[str, Any]], n: int | None = None, width: int = 30) -> str:
    """One ``key=value`` a line (so the legend fits beside the plot), each at most ``width`` characters."""
    lines = [f"{k}={fmt_param(v)}" for k, v in params] or ["all runs"]
    lines = [t if len(t) <= width else t[:width - 3] + "..." for t in lines]
    if n is not None:
        lines[-1] += f" (n={n})"
    return "\n".join(lines)


def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _draw(ax: Any, curve: Curve | None, colour: Any, label: str) -> bool:
    if curve is None:
        return False
    xs, m, lo, hi = curve
    ax.plot(xs, m, color=colour, linewidth=1.6, label=label, marker="o" if len(xs) < 30 else None, markersize=2.5)
    ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
    return True


def _legend(fig: Any, handles: list[Any], labels: list[str], target: float | None = None) -> None:
    """The figure's legend outside the panels on the right, at most MAX_LEGEND entries (+ the target)."""
    if not handles:
        return
    from matplotlib.lines import Line2D

    more = len(handles) - MAX_LEGEND
    if more > 0:
        handles = handles[:MAX_LEGEND] + [Line2D([], [], color="none")]
        labels = labels[:MAX_LEGEND] + [f"... {more} more (table.csv)"]
    if target is not None:
        handles = handles + [Line2D([], [], color="#777777", linestyle=":", linewidth=1)]
        labels = labels + [f"target {target:g}"]
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.79, 0.93), fontsize=8, frameon=False,
               labelspacing=0.9)


def _figure(panels: int, title: str) -> tuple[Any, Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    height = max(600, PANEL_PX * nrows + 90)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI, squeeze=False,
                             sharey=True)
    fig.suptitle(title, fontsize=11)
    flat = [a for row in axes for a in row]
    for a in flat[panels:]:
        a.set_visible(False)
    return plt, fig, flat[:panels]


def _finish(plt: Any, fig: Any, axes: list[Any], axis: str, target: float | None, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        if target is not None:
            ax.axhline(target, color="#777777", linestyle=":", linewidth=1)
        if axis != "time":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(AXIS_LABEL[axis], fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.tight_layout(rect=(0, 0, 0.78, 0.95))  # the right 22 %: the legend
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def plot_all(rows: Sequence[ConfigRow], axis: str, target: float | None, path: Path, title: str) -> Path:
    """Every configuration on one panel (also what ``fedctl results compare`` draws for a sweep)."""
    plt, fig, (ax,) = _figure(1, f"{title}\n{BAND_NOTE}")
    handles, labels = [], []
    for row, colour in zip(rows, _colours(len(rows))):
        if _draw(ax, config_curve(row, axis), colour, row.label):
            handles.append(ax.lines[-1])
            labels.append(legend_label(row.params, len(row.finished)))
    if not handles:
        ax.text(0.5, 0.5, "no finished run reported accuracy", ha="center", va="center", transform=ax.transAxes)
    _legend(fig, handles, labels, target)
    return _finish(plt, fig, [ax], axis, target, path)


def plot_by(rows: Sequence[ConfigRow], key: str, axis: str, target: float | None, path: Path) -> Path:
    """One panel per combination of the other keys; a line per value of ``key`` in each."""
    values: list[Any] = []
    panels: dict[tuple[tuple[str, Any], ...], list[ConfigRow]] = {}
    for row in rows:
        v = dict(row.params).get(key)
        if v not in values:
            values.append(v)
        panels.setdefault(tuple((k, x) for k, x in row.params if k != key), []).append(row)
    shown = list(panels.items())[:MAX_PANELS]
    title = f"accuracy by {key}"
    if len(panels) > MAX_PANELS:
        title += f" (first {MAX_PANELS} of {len(panels)} panels)"
    plt, fig, axes = _figure(len(shown), f"{title}\n{BAND_NOTE}")
    colour = dict(zip(map(fmt_param, values), _colours(len(values))))
    handles: dict[str, Any] = {}
    for ax, (rest, group_rows) in zip(axes, shown):
        ax.set_title(config_label(rest) if rest else "", fontsize=9)
        for row in group_rows:
            v = fmt_param(dict(row.params).get(key))
            if _draw(ax, config_curve(row, axis), colour[v], f"{key}={v}"):
                handles.setdefault(v, ax.lines[-1])
    order = [fmt_param(v) for v in values if fmt_param(v) in handles]
    _legend(fig, [handles[v] for v in order], [legend_label([(key, v)]) for v in order], target)
    return _finish(plt, fig, axes, axis, target, path)


def write_curves(out_dir: Path, grid_keys: Sequence[str], rows: Sequence[ConfigRow],
                 target: float | None) -> list[str]:
    """curves.png and one curves_by_<key>.png per grid key in ``out_dir``; returns notes (what was not
    drawn and why) instead of raising, so the table is written regardless."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["curves not drawn: matplotlib is not installed (pip install 'fedctl-fl[results]')"]
    axis = curve_axis(rows)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    plot_all(rows, axis, target, Path(out_dir) / "curves.png", "accuracy of every configuration")
    for key in grid_keys:
        plot_by(rows, key, axis, target, Path(out_dir) / file_for(key))
    if not any(r.finished for r in rows):
        return ["curves are empty: no run finished with accuracy"]
    return []
