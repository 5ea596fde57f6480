"""The paper-ready results folder of a run, and comparisons of several runs.

``build_report`` works only on the local folder that ``collect_raw`` filled (metrics.jsonl, the
manifest's result files, ``logs/<host>/*.log``) and on the run state. It adds:

    accuracy.png, loss.png          per round
    response_heatmap.png            clients x rounds response time; dropped and not-sampled marked
    participation.png               clients x rounds: reported / dropped / not sampled
    cost.png                        the run's cumulative cost over time (from the ledger)
    accuracy_vs_time.png,           an asynchronous run only (round lines with client_updates):
    accuracy_vs_updates.png,        accuracy against wall-clock time and against client updates,
    staleness.png                   and a histogram of the applied updates' staleness
    summary.md                      a table a paper can use, every metric the payload reported,
                                    hosts, cost, versions
    config.yaml, inventory.yaml     resolved, with secrets removed
    versions.json, cost.json, report.json

The package, by seam:

    report       build_report, the summary numbers and summary.md
    plots        the figures (matplotlib imported inside them only) and the participation matrix
    redact       no password, token or key material in any file of the folder
    provenance   inventory as reached, versions (Python + the payload's required modules), git commit
    compare      several runs' accuracy on one plot, rounds, time (and client updates) to a target
    runs         the current or an archived run's state; a results folder for a run id
    fmt          how the tables write values, bytes and durations

metrics.jsonl is read by the payload contract (``fedctl.contract``) only.
"""

from fedctl.results.compare import Comparison, CompareRow, compare, reach
from fedctl.results.plots import PLOT_SIZE_PX, participation_matrix
from fedctl.results.provenance import inventory_dict, versions
from fedctl.results.redact import KEY_MATERIAL_REMOVED, REMOVED, known_secrets, redact_text, redact_tree, scrub
from fedctl.results.report import Report, build_report, run_summary, summary_markdown
from fedctl.results.runs import find_collected_metrics, load_run_state, resolve_run, results_root

__all__ = [
    "KEY_MATERIAL_REMOVED", "PLOT_SIZE_PX", "REMOVED", "CompareRow", "Comparison", "Report", "build_report",
    "compare", "find_collected_metrics", "inventory_dict", "known_secrets", "load_run_state",
    "participation_matrix", "reach", "redact_text", "redact_tree", "resolve_run", "results_root", "run_summary",
    "scrub", "summary_markdown", "versions",
]
