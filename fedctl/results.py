"""The paper-ready results folder of a run, and comparisons of several runs.

``build_report`` works only on the local folder that ``deploy.collect_raw`` filled
(``results/<run-id>/metrics.jsonl``, ``summary.json``, ``final_model.weights.h5``, ``logs/<host>/*.log``)
and on the run state, so it is tested with a fabricated metrics.jsonl. It adds:

    accuracy.png, loss.png          per round
    response_heatmap.png            clients x rounds response time; dropped and not-sampled marked
    participation.png               clients x rounds: reported / dropped / not sampled
    cost.png                        the run's cumulative cost over time (from the ledger)
    summary.md                      a table a paper can use, plus hosts, cost, versions
    config.yaml, inventory.yaml     resolved, with secrets removed
    versions.json, cost.json, report.json

Secrets: no file written here holds a password, token or key material. Values of keys named like a
secret are replaced (``password_env`` keeps only the variable's NAME), PEM blocks are removed, and every
known secret value (the run token, passwords from ``password_env`` variables) is masked in every text
file of the folder, the collected logs included.

matplotlib is imported only inside the plotting functions (Agg backend): the CLI stays light.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedctl.cost import _is_num, cost_timeline, estimate, format_money, read_jsonl, run_cost
from fedctl.state import RunState, atomic_write

#: every plot is written at exactly this size (pixels), so a paper's layout does not shift
PLOT_SIZE_PX = (1000, 600)
PLOT_DPI = 100
REMOVED = "<removed>"
KEY_MATERIAL_REMOVED = "<key material removed>"

_SECRET_KEY = re.compile(
    r"(^|[_\-.])(pass(word|wd|phrase)?|secret|token|api[_\-]?key|private[_\-]?key|credentials?|auth|key)($|[_\-.])",
    re.IGNORECASE,
)
#: keys whose value names a secret without being one (an env variable's name, a file's path)
_SAFE_SUFFIX = re.compile(r"(_env|_file|_path|_name)$", re.IGNORECASE)
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_KEY_MARKERS = ("-----BEGIN", "b3BlbnNzaC1rZXktdjE")  # PEM header; base64 of "openssh-key-v1"


# -- metrics -------------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """metrics.jsonl, parsed: round lines in round order, event lines, the final summary line."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Metrics":
        m = cls()
        by_round: dict[int, dict[str, Any]] = {}
        for line in read_jsonl(path):
            kind = line.get("type")
            if kind == "round" and isinstance(line.get("round"), int):
                by_round[line["round"]] = line  # a resumed run may repeat a round: keep the last
            elif kind == "event":
                m.events.append(line)
            elif kind == "summary":
                m.summary = line
        m.rounds = [by_round[k] for k in sorted(by_round)]
        return m

    def series(self, key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for r in self.rounds:
            if _is_num(r.get(key)):
                xs.append(int(r["round"]))
                ys.append(float(r[key]))
        return xs, ys

    def client_ids(self, clients: int = 0) -> list[int]:
        ids: set[int] = set(range(clients))
        for r in self.rounds:
            for key in ("sampled", "reported"):
                ids.update(int(c) for c in r.get(key) or [] if _int_like(c))
            ids.update(int(d["id"]) for d in r.get("dropped") or [] if isinstance(d, Mapping) and _int_like(d.get("id")))
            ids.update(int(c) for c in (r.get("clients") or {}) if _int_like(c))
        return sorted(ids)

    @property
    def wall_s(self) -> float | None:
        if self.summary and _is_num(self.summary.get("wall_s")):
            return float(self.summary["wall_s"])
        starts = [float(r["start"]) for r in self.rounds if _is_num(r.get("start"))]
        ends = [float(r["end"]) for r in self.rounds if _is_num(r.get("end"))]
        return max(ends) - min(starts) if starts and ends else None

    def round_seconds(self) -> list[float]:
        return [float(r["end"]) - float(r["start"]) for r in self.rounds
                if _is_num(r.get("start")) and _is_num(r.get("end"))]

    def strategy(self) -> str | None:
        for r in self.rounds:
            if isinstance(r.get("strategy"), str):
                return r["strategy"]
        return None

    def reach(self, target: float) -> tuple[int | None, float | None]:
        """(round, seconds since the first round started) at which accuracy first reached ``target``."""
        first = min((float(r["start"]) for r in self.rounds if _is_num(r.get("start"))), default=None)
        for r in self.rounds:
            if _is_num(r.get("accuracy")) and r["accuracy"] >= target:
                wall = float(r["end"]) - first if first is not None and _is_num(r.get("end")) else None
                return int(r["round"]), wall
        return None, None


def _int_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, str) and v.lstrip("-").isdigit()


def participation_matrix(m: Metrics, clients: int = 0) -> tuple[list[int], list[int], list[list[int]], list[list[float]]]:
    """(client ids, rounds, status[c][r], response_s[c][r]).

    status: 0 not sampled, 1 reported, 2 dropped (or sampled and never reported). response: NaN
    where there is no response time.
    """
    ids = m.client_ids(clients)
    rounds = [int(r["round"]) for r in m.rounds]
    row = {c: i for i, c in enumerate(ids)}
    status = [[0] * len(rounds) for _ in ids]
    resp = [[math.nan] * len(rounds) for _ in ids]
    for j, r in enumerate(m.rounds):
        sampled = {int(c) for c in r.get("sampled") or [] if _int_like(c)}
        reported = {int(c) for c in r.get("reported") or [] if _int_like(c)}
        dropped = {int(d["id"]) for d in r.get("dropped") or [] if isinstance(d, Mapping) and _int_like(d.get("id"))}
        for c in sampled | dropped:
            status[row[c]][j] = 2
        for c in reported:
            status[row[c]][j] = 1
        for c in dropped:
            status[row[c]][j] = 2
        for cid, info in (r.get("clients") or {}).items():
            if _int_like(cid) and isinstance(info, Mapping) and _is_num(info.get("response_s")):
                if status[row[int(cid)]][j] == 1:
                    resp[row[int(cid)]][j] = float(info["response_s"])
    return ids, rounds, status, resp


# -- plots (matplotlib imported here only) ---------------------------------------------------------------
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


def plot_curve(m: Metrics, key: str, path: Path, title: str, ylabel: str) -> Path:
    """One metric per round (accuracy or loss) as a line with markers."""
    plt, fig, ax = _figure(title)
    xs, ys = m.series(key)
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, color="#1f77b4", label=key)
        best = max(ys) if key == "accuracy" else min(ys)
        ax.axhline(best, color="#ff7f0e", linestyle="--", linewidth=1, label=f"best {best:.4f}")
        ax.legend(loc="best")
    else:
        _empty(ax, f"no {key} reported")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def plot_response_heatmap(m: Metrics, path: Path, clients: int = 0) -> Path:
    """Clients x rounds: response time of each reported update; dropped cells red, not sampled grey."""
    import numpy as np

    plt, fig, ax = _figure("client response time per round")
    ids, rounds, status, resp = participation_matrix(m, clients)
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


def _finish_client_axes(plt, fig, ax, ids: Sequence[int] | None, path: Path):  # type: ignore[no-untyped-def]
    """The clients x rounds figures' shared ending: client ticks (or 'no rounds'), labels, save."""
    if ids:
        _ticks(ax, ids)
    else:
        _empty(ax, "no rounds completed")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel("client")
    return _save(plt, fig, path)


def _ticks(ax, ids: Sequence[int]) -> None:  # type: ignore[no-untyped-def]
    step = max(1, math.ceil(len(ids) / 30))
    ax.set_yticks(range(0, len(ids), step))
    ax.set_yticklabels([str(ids[i]) for i in range(0, len(ids), step)])


def plot_participation(m: Metrics, path: Path, clients: int = 0) -> Path:
    """Clients x rounds: reported (green), dropped (red), not sampled (light grey)."""
    import numpy as np

    plt, fig, ax = _figure("participation: who was sampled and who reported")
    ids, rounds, status, _ = participation_matrix(m, clients)
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


# -- secrets -------------------------------------------------------------------------------------------
_SAFE_KEYS = {"host_key_policy"}


def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _SAFE_SUFFIX.search(key) and key.lower() not in _SAFE_KEYS


def scrub(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``data`` without secrets: values of secret-named keys, key material, known values."""
    secrets = [s for s in secrets if s]
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            if not _secret_key(str(k)) or isinstance(v, (Mapping, list, tuple)):
                out[k] = scrub(v, secrets)  # a mapping under a secret-looking key: judge its keys
            else:
                out[k] = v if v in (None, "") else REMOVED
        return out
    if isinstance(data, (list, tuple)):
        return [scrub(v, secrets) for v in data]
    if isinstance(data, str):
        return redact_text(data, secrets)
    return data


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values and remove key material from a text."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    if any(m in text for m in _KEY_MARKERS):
        text = _PEM_BLOCK.sub(KEY_MATERIAL_REMOVED, text)
        text = re.sub(r"\S*b3BlbnNzaC1rZXktdjE\S*", KEY_MATERIAL_REMOVED, text)
        text = text.replace("-----BEGIN", KEY_MATERIAL_REMOVED)
    return text


def known_secrets(state: RunState, extra: Iterable[str] = ()) -> list[str]:
    """Secret values to mask: ``extra`` (the run token) and passwords from hosts' ``password_env``."""
    out = [s for s in extra if s]
    for h in state.hosts:
        name = h.info.password_env
        if name and os.environ.get(name):
            out.append(os.environ[name])
    # longest first, so a secret that contains another is masked whole; very short ones would mask
    # ordinary text and are not credible secrets
    return sorted({s for s in out if len(s) >= 4}, key=len, reverse=True)


_TEXT_SUFFIXES = {".log", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".out", ".err", ""}


def redact_tree(root: Path, secrets: Iterable[str] = ()) -> list[str]:
    """Scrub every text file under ``root`` in place; drop token files. Returns the files changed."""
    secrets = list(secrets)
    changed = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.name in ("token", "token.txt") or path.suffix in (".pem", ".key"):
            path.unlink()
            changed.append(str(path.relative_to(root)))
            continue
        if path.suffix.lower() not in _TEXT_SUFFIXES and not path.name.endswith(".log.1"):
            continue
        raw = path.read_bytes()
        if b"\0" in raw[:4096]:
            continue  # binary
        text = raw.decode("utf-8", errors="replace")
        new = redact_text(text, secrets)
        if new != text:
            atomic_write(path, new.encode(), mode=0o644)
            changed.append(str(path.relative_to(root)))
    return changed


def inventory_dict(state: RunState) -> dict[str, Any]:
    """The resolved inventory of the run (hosts as fedctl reached them), before scrubbing."""
    hosts = []
    for h in state.hosts:
        d = asdict(h.info)
        d["roles"] = list(d["roles"])
        d["extra"] = dict(d["extra"])
        hosts.append({k: v for k, v in d.items() if v not in (None, {}, [])})
    return {"provider": state.provider, "hosts": hosts}


# -- versions ------------------------------------------------------------------------------------------
def git_commit(folder: Path | None) -> dict[str, Any] | None:
    """The git commit of ``folder`` (and whether it has uncommitted changes), None if not a repo."""
    if folder is None or not folder.is_dir():
        return None
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"path": str(folder), "commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _fact_version(facts: Mapping[str, Any], name: str) -> str | None:
    v = facts.get(name)
    if isinstance(v, str):
        return v
    imp = (facts.get("imports") or {}).get(name)
    if isinstance(imp, Mapping) and imp.get("ok", True) and imp.get("version"):
        return str(imp["version"])
    return None


def versions(state: RunState, experiment_dir: Path | None) -> dict[str, Any]:
    """Python/TensorFlow per host (from provision facts), fedctl, this machine, the experiment's commit."""
    from fedctl import __version__

    per_host: dict[str, dict[str, str]] = {}
    for h in state.hosts:
        row = {k: v for k in ("python", "tensorflow", "keras", "numpy") if (v := _fact_version(h.facts, k))}
        if row:
            per_host[h.name] = row
    return {
        "fedctl": __version__,
        "python": sorted({r["python"] for r in per_host.values() if "python" in r}),
        "tensorflow": sorted({r["tensorflow"] for r in per_host.values() if "tensorflow" in r}),
        "hosts": per_host,
        "local": {"python": platform.python_version(), "platform": platform.platform()},
        "experiment_git": git_commit(experiment_dir),
        "payload": state.payload_name or None,
    }


# -- the report ------------------------------------------------------------------------------------------
@dataclass
class Report:
    """What ``build_report`` wrote (paths relative to ``dir``) and the numbers of the summary table."""

    dir: Path
    files: list[str]
    plots: list[str]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "files": self.files, "plots": self.plots,
                "summary": self.summary, "warnings": self.warnings}


def _yaml(data: Any) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True).encode()


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def run_summary(m: Metrics, state: RunState, rc: Any, guard: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers of the paper table (None where unknown)."""
    accs = m.series("accuracy")[1]
    losses = m.series("loss")[1]
    secs = m.round_seconds()
    ids, rounds, status, resp = participation_matrix(m, state.clients)
    sampled = sum(1 for row in status for s in row if s)
    reported = sum(1 for row in status for s in row if s == 1)
    resp_vals = [v for row in resp for v in row if not math.isnan(v)]
    summ = m.summary or {}
    best_i = max(range(len(accs)), key=lambda i: accs[i]) if accs else None
    return {
        "run_id": state.run_id,
        "strategy": m.strategy() or (state.experiment.get("strategy") if isinstance(state.experiment.get("strategy"), str) else None),
        "clients": state.clients or len(ids),
        "rounds_planned": state.rounds or (m.rounds[-1].get("rounds") if m.rounds else None),
        "rounds_completed": summ.get("rounds_completed", len(m.rounds)),
        "final_accuracy": summ.get("final_accuracy", accs[-1] if accs else None),
        "best_accuracy": summ.get("best_accuracy", max(accs) if accs else None),
        "best_round": m.series("accuracy")[0][best_i] if best_i is not None else None,
        "final_loss": summ.get("final_loss", losses[-1] if losses else None),
        "wall_s": m.wall_s,
        "mean_round_s": statistics.fmean(secs) if secs else None,
        "median_round_s": statistics.median(secs) if secs else None,
        "mean_response_s": statistics.fmean(resp_vals) if resp_vals else None,
        "participation": reported / sampled if sampled else None,
        "dropped": sampled - reported,
        "bytes_in": sum(int(r.get("bytes_in") or 0) for r in m.rounds),
        "bytes_out": sum(int(r.get("bytes_out") or 0) for r in m.rounds),
        "status": summ.get("status") or state.phase,
        "stopped_by": (guard or {}).get("reason"),
        "cost": dict(rc.total),
        "host_hours": sum(r.hours for r in rc.rows),
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def summary_markdown(s: Mapping[str, Any], rc: Any, vers: Mapping[str, Any], guard: Mapping[str, Any] | None,
                     plots: Sequence[str]) -> str:
    cost = " + ".join(format_money(v, c) for c, v in sorted(s["cost"].items())) or "-"
    part = "-" if s["participation"] is None else f"{100 * s['participation']:.1f}%"
    lines = [
        f"# Run {s['run_id']}",
        "",
        "| Run | Strategy | Clients | Rounds | Final accuracy | Best accuracy (round) | Final loss | Wall time | Mean round | Participation | Cost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['run_id']} | {s['strategy'] or '-'} | {s['clients']} | {s['rounds_completed']}/{s['rounds_planned'] or '-'} "
        f"| {_fmt(s['final_accuracy'])} | {_fmt(s['best_accuracy'])} ({_fmt(s['best_round'])}) | {_fmt(s['final_loss'])} "
        f"| {_duration(s['wall_s'])} | {_duration(s['mean_round_s'])} "
        f"| {part} | {cost} |",
        "",
        f"Status: **{s['status']}**" + (f" (stopped by the budget guard: {guard.get('reason')}: {guard.get('message')})"
                                        if guard else ""),
        "",
        f"Dropped updates: {s['dropped']}. Median round: {_duration(s['median_round_s'])}. "
        f"Mean client response: {_duration(s['mean_response_s'])}. "
        f"Traffic: {_bytes(s['bytes_in'])} in, {_bytes(s['bytes_out'])} out.",
        "",
        "## Hosts and cost",
        "",
        "| Host | Role | Price per hour | Hours | Cost |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rc.rows:
        price = "-" if r.price_per_hour is None else format_money(r.price_per_hour, r.currency)
        lines.append(f"| {r.name} | {r.role} | {price} | {r.hours:.3f} | {format_money(r.cost, r.currency)} |")
    lines.append(f"| **total** | | | {s['host_hours']:.3f} | {cost} |")
    git = vers.get("experiment_git") or {}
    lines += [
        "",
        "## Versions",
        "",
        f"- fedctl {vers['fedctl']}",
        f"- Python {', '.join(vers['python']) or '-'} (hosts); TensorFlow {', '.join(vers['tensorflow']) or '-'}",
        f"- experiment commit: {git.get('commit', '-')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def build_report(
    results_dir: Path,
    state: RunState,
    now: float | None = None,
    secrets: Iterable[str] = (),
    guard: Mapping[str, Any] | None = None,
    experiment_dir: Path | None = None,
) -> Report:
    """Turn the folder ``collect_raw`` filled into the paper-ready results folder (see module doc).

    ``now``: the ledger's time (default: when the last host was released, else the current time).
    ``secrets``: values to mask everywhere (the run token). ``guard``: the GuardTrip dict if a budget
    guard stopped the run (else ``results_dir/guard.json`` is read if collect_raw copied it).
    ``experiment_dir``: the folder whose git commit is recorded (default: the config file's folder).
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    if now is None:
        held = [h for h in state.hosts if h.acquired_at is not None]
        if held and all(h.released_at is not None for h in held):
            now = max(h.released_at for h in held)  # type: ignore[type-var]
        else:
            now = time.time()
    if guard is None and (results_dir / "guard.json").exists():
        try:
            guard = json.loads((results_dir / "guard.json").read_text())
        except ValueError:
            warnings.append("guard.json is unreadable")
    if experiment_dir is None and state.config_path:
        experiment_dir = Path(state.config_path).expanduser().absolute().parent
    secret_values = known_secrets(state, secrets)

    metrics_path = results_dir / "metrics.jsonl"
    if not metrics_path.exists():
        warnings.append("no metrics.jsonl: the run reported no rounds (or results were not collected)")
    m = Metrics.load(metrics_path)
    rc = run_cost(state, now)

    from fedctl.budget import Budget

    budget = Budget.from_experiment(state.experiment) if isinstance(state.experiment.get("budget"), (Mapping, type(None))) else Budget()
    plots = [
        plot_curve(m, "accuracy", results_dir / "accuracy.png", "global model accuracy per round", "accuracy"),
        plot_curve(m, "loss", results_dir / "loss.png", "global model loss per round", "loss"),
        plot_response_heatmap(m, results_dir / "response_heatmap.png", state.clients),
        plot_participation(m, results_dir / "participation.png", state.clients),
        plot_cost(state, now, results_dir / "cost.png", budget.max_cost),
    ]
    plot_names = [p.name for p in plots]

    written: dict[str, bytes] = {}
    written["config.yaml"] = _yaml(scrub(state.experiment, secret_values))
    written["inventory.yaml"] = _yaml(scrub(inventory_dict(state), secret_values))
    vers = versions(state, experiment_dir)
    written["versions.json"] = _json(vers)
    est = estimate(state, state.rounds or len(m.rounds))
    if m.rounds:
        est = est.updated_from_metrics(m.rounds)
    cost_doc = {**rc.to_dict(), "budget": budget.to_dict(), "guard": dict(guard) if guard else None,
                "estimate": est.to_dict()}
    written["cost.json"] = _json(cost_doc)
    summ = run_summary(m, state, rc, guard)
    written["summary.md"] = summary_markdown(summ, rc, vers, guard, plot_names).encode()
    if guard and not (results_dir / "guard.json").exists():
        written["guard.json"] = _json(dict(guard))
    for name, data in written.items():
        atomic_write(results_dir / name, redact_text(data.decode(), secret_values).encode())

    redact_tree(results_dir, secret_values)
    files = sorted(str(p.relative_to(results_dir)) for p in results_dir.rglob("*") if p.is_file())
    report = Report(results_dir, files + (["report.json"] if "report.json" not in files else []), plot_names, summ, warnings)
    atomic_write(results_dir / "report.json", _json(report.to_dict()))
    return report


# -- compare ---------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    run: str
    label: str
    strategy: str | None
    rounds: int
    final_accuracy: float | None
    best_accuracy: float | None
    rounds_to_target: int | None
    seconds_to_target: float | None
    wall_s: float | None


@dataclass
class Comparison:
    target: float | None
    rows: list[CompareRow]
    plot: Path
    table: Path

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": [asdict(r) for r in self.rows], "plot": str(self.plot),
                "table": str(self.table)}


def resolve_run(arg: str, results_root: Path = Path("results")) -> Path:
    """A run argument: a folder holding metrics.jsonl, or a run id under ``results_root``."""
    from fedctl.errors import UsageError

    for cand in (Path(arg), results_root / arg):
        if (cand / "metrics.jsonl").is_file():
            return cand
    raise UsageError(f"{arg}: no metrics.jsonl there nor in {results_root / arg}",
                     hint="pass a run id from results/ or a results folder (run `fedctl results` first)")


def compare(runs: Sequence[Path], out: Path, target: float | None = None) -> Comparison:
    """Accuracy curves of several runs on one plot (``out``, a PNG) and a table (``out`` with .md).

    ``target`` None: the highest accuracy every run reached (the lowest of the runs' best), so the
    "rounds / time to target" columns compare like with like.
    """
    loaded = [(Path(r), Metrics.load(Path(r) / "metrics.jsonl")) for r in runs]
    bests = [max(m.series("accuracy")[1]) for _, m in loaded if m.series("accuracy")[1]]
    if target is None and bests:
        target = min(bests)
    rows = []
    for path, m in loaded:
        accs = m.series("accuracy")[1]
        strategy = m.strategy()
        rnd, secs = m.reach(target) if target is not None else (None, None)
        name = path.name
        rows.append(CompareRow(name, f"{strategy} ({name})" if strategy else name, strategy, len(m.rounds),
                               accs[-1] if accs else None, max(accs) if accs else None, rnd, secs, m.wall_s))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plt, fig, ax = _figure("accuracy per round")
    for row, (_, m) in zip(rows, loaded):
        xs, ys = m.series("accuracy")
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=row.label)
    if target is not None:
        ax.axhline(target, color="#777777", linestyle=":", linewidth=1, label=f"target {target:.4f}")
    ax.set_xlabel("round")
    _int_rounds(ax)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    _save(plt, fig, out)
    table = out.with_suffix(".md")
    lines = [
        f"Target accuracy: {_fmt(target)}",
        "",
        "| Run | Strategy | Rounds | Final accuracy | Best accuracy | Rounds to target | Time to target | Wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.run} | {r.strategy or '-'} | {r.rounds} | {_fmt(r.final_accuracy)} | {_fmt(r.best_accuracy)} "
                     f"| {_fmt(r.rounds_to_target) if r.rounds_to_target else 'not reached'} "
                     f"| {_duration(r.seconds_to_target)} | {_duration(r.wall_s)} |")
    atomic_write(table, ("\n".join(lines) + "\n").encode())
    return Comparison(target, rows, out, table)
