"""The paper's table of a sweep: ``table.csv``, ``table.md``, ``table.tex`` (and ``table.json``), one row
per configuration, from the runs' own metrics (``outcomes``), never re-typed; then the curves and the
tracker logs beside them.

Columns: the grid keys, ``runs`` (seeds planned), ``n`` (finished seeds, the ones in the means),
``failed``, ``missing``, ``final_accuracy_mean``/``_std``, ``best_accuracy_mean``/``_std`` and, with a
target accuracy, ``rounds_to_target_mean``, ``seconds_to_target_mean`` (means over the seeds that reached
it) and ``reached_target`` (how many did); an asynchronous run adds ``updates_to_target_mean`` (client
updates). std is the sample standard deviation (ddof=1), empty below two seeds.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

from fedctl.fsutil import atomic_write
from fedctl.results.fmt import fmt_duration, fmt_value
from fedctl.sweep.outcomes import (
    FINISHED,
    TABLE_JSON,
    ConfigRow,
    config_label,
    fmt_param,
    group,
    sweep_record,
)
from fedctl.sweep.records import SweepRun

STD_NOTE = "std: sample standard deviation over the finished seeds (ddof=1); - below two seeds."


def columns(grid_keys: Sequence[str], target: float | None, updates: bool) -> list[str]:
    """table.csv's columns, in order."""
    cols = [*grid_keys, "runs", "n", "failed", "missing", "final_accuracy_mean", "final_accuracy_std",
            "best_accuracy_mean", "best_accuracy_std"]
    if target is not None:
        cols += ["rounds_to_target_mean", "seconds_to_target_mean", "reached_target"]
        if updates:
            cols.append("updates_to_target_mean")
    return cols


def header_note(target: float | None, rows: Sequence[ConfigRow]) -> list[str]:
    """What the numbers are, for a reader of the table (the same words in .md and .tex)."""
    seeds = max((len(r.outcomes) for r in rows), default=0)
    note = [f"One row per configuration; means over its finished seeds (n of {seeds} per configuration). {STD_NOTE}"]
    if target is not None:
        note.append(f"Target accuracy {target:g}: rounds and seconds to reach it are means over the seeds "
                    "that reached it (reached_target of n); seconds count from the first round's start.")
    return note


def not_counted(rows: Sequence[ConfigRow]) -> list[str]:
    """One line per run left out of the means, with why."""
    return [f"{o.run.key} ({config_label(r.params)}, seed {o.run.seed}): {o.outcome}: {o.reason}"
            for r in rows for o in r.outcomes if o.outcome != FINISHED]


# -- the three formats -------------------------------------------------------------------------------------
def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # full precision: the CSV is for re-analysis
    return fmt_param(v)


def to_csv(cols: Sequence[str], dicts: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for d in dicts:
        w.writerow([_csv_cell(d.get(c)) for c in cols])
    return buf.getvalue()


def _md_cell(col: str, v: Any, grid: bool) -> str:
    if grid:
        text = fmt_param(v)
    elif col == "seconds_to_target_mean":
        text = fmt_duration(v)
    elif col.startswith(("rounds_", "updates_")) and v is not None:
        text = f"{v:.1f}"
    else:
        text = fmt_value(v)
    return text.replace("|", "\\|")


def to_markdown(name: str, cols: Sequence[str], grid_keys: Sequence[str], dicts: Sequence[dict[str, Any]],
                note: Sequence[str], left_out: Sequence[str]) -> str:
    lines = [f"# Sweep {name}", "", *note, "",
             "| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|" + "".join("---|" if c in grid_keys else "---:|" for c in cols)]
    for d in dicts:
        lines.append("| " + " | ".join(_md_cell(c, d.get(c), c in grid_keys) for c in cols) + " |")
    if left_out:
        lines += ["", f"Runs not in the means ({len(left_out)}):", ""] + [f"- {t}" for t in left_out]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def tex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally (one pass, so an escape is never escaped again)."""
    return re.sub(r"[\\&%$#_{}~^<>]", lambda m: _TEX[m.group()], text)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "--"
    return f"${mean:.4f} \\pm {std:.4f}$" if std is not None else f"${mean:.4f}$"


def to_latex(name: str, grid_keys: Sequence[str], target: float | None, updates: bool,
             dicts: Sequence[dict[str, Any]], note: Sequence[str], left_out: Sequence[str]) -> str:
    """A booktabs table (``\\usepackage{booktabs}``): accuracy cells as mean $\\pm$ std."""
    heads = [tex_escape(k) for k in grid_keys] + ["$n$", "failed", "missing", "final accuracy", "best accuracy"]
    if target is not None:
        heads += [f"rounds to {target:g}", f"seconds to {target:g}", "reached"]
        if updates:
            heads.append("updates to target")
    body = []
    for d in dicts:
        cells = [tex_escape(fmt_param(d[k])) for k in grid_keys]
        cells += [str(d["n"]), str(d["failed"]), str(d["missing"]),
                  _pm(d["final_accuracy_mean"], d["final_accuracy_std"]),
                  _pm(d["best_accuracy_mean"], d["best_accuracy_std"])]
        if target is not None:
            r, s = d["rounds_to_target_mean"], d["seconds_to_target_mean"]
            cells += ["--" if r is None else f"{r:.1f}", "--" if s is None else f"{s:.1f}",
                      f"{d['reached_target']}/{d['n']}"]
            if updates:
                u = d["updates_to_target_mean"]
                cells.append("--" if u is None else f"{u:.1f}")
        body.append(" & ".join(cells) + r" \\")
    caption = " ".join(note)
    if left_out:
        caption += f" Runs not in the means: {'; '.join(left_out)}."
    align = "l" * len(grid_keys) + "r" * (len(heads) - len(grid_keys))
    return "\n".join([
        f"% fedctl sweep {name}: written from the runs' metrics.jsonl; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{Sweep {tex_escape(name)}. {tex_escape(caption)}}}",
        rf"\label{{tab:sweep-{re.sub(r'[^A-Za-z0-9-]', '-', name)}}}",
        rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(heads) + r" \\", r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


# -- the entry point -----------------------------------------------------------------------------------------
def build_rows(grid_keys: Sequence[str], runs: Sequence[SweepRun],
               target: float | None) -> tuple[list[ConfigRow], list[str], bool, list[dict[str, Any]]]:
    """(rows, columns, any asynchronous run, the rows as dicts by column)."""
    rows = group(runs, target)
    updates = any(o.asynchronous for r in rows for o in r.finished)
    return rows, columns(grid_keys, target, updates), updates, [r.to_dict(grid_keys, target, updates) for r in rows]


def write_sweep_outputs(out_dir: Path, name: str, grid_keys: Sequence[str], runs: Sequence[SweepRun],
                        target_accuracy: float | None, mlflow: str | None = None) -> Path:
    """Write the sweep's table (csv, md, tex, json), curves and TensorBoard log into ``out_dir``
    (results/sweeps/<name>/), and log the runs to MLflow when ``mlflow`` (a tracking URI or a local
    folder; "" for ./mlruns) is given. Returns ``out_dir``.

    Safe to call again after a resumed campaign: every file is rewritten from the runs' metrics and a
    run already logged to MLflow is not logged twice. What could not be written (no matplotlib, no
    tensorboard) is said in table.md and table.json's ``notes``; MLflow asked for but not installed
    raises ``UsageError`` naming the install command, after the table is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, cols, updates, dicts = build_rows(grid_keys, runs, target_accuracy)
    note, left_out = header_note(target_accuracy, rows), not_counted(rows)
    notes: list[str] = []
    from fedctl.sweep.curves import write_curves
    from fedctl.sweep.trackers import log_mlflow, write_tensorboard

    notes += write_curves(out_dir, grid_keys, rows, target_accuracy)
    notes += write_tensorboard(out_dir / "tensorboard", grid_keys, rows)
    atomic_write(out_dir / "table.csv", to_csv(cols, dicts))
    atomic_write(out_dir / "table.md", to_markdown(name, cols, grid_keys, dicts, note, left_out)
                 + "".join(f"\nnote: {n}\n" for n in notes))
    atomic_write(out_dir / "table.tex", to_latex(name, grid_keys, target_accuracy, updates, dicts, note, left_out))
    record = {**sweep_record(out_dir, name, grid_keys, runs, target_accuracy), "columns": cols, "rows": dicts,
              "notes": notes}
    atomic_write(out_dir / TABLE_JSON, json.dumps(record, indent=2, default=str) + "\n")
    if mlflow is not None:
        log_mlflow(mlflow, name, grid_keys, rows)
    return out_dir


def sweep_notes(out_dir: Path) -> list[str]:
    """What ``write_sweep_outputs`` could not write (for the CLI to print), from table.json."""
    try:
        return list(json.loads((Path(out_dir) / TABLE_JSON).read_text()).get("notes") or [])
    except (OSError, ValueError):
        return []
