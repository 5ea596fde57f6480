"""The payload contract: the one owner of the files a payload writes (docs/contracts.md).

Nothing else in fedctl parses metrics.jsonl, status.json or the ready file, or knows their names:

    metrics   metrics.jsonl and its reader (stdlib only: the budget watchdog carries a copy of it)
    status    status.json and the ready file, and their readers
    paths     where the files are: the manifest's templates on a host, the collected copy locally

    from fedctl import contract
    log = contract.read_metrics(path)     # each round once (the last line wins), bad lines skipped, no NaN
    log.ordered, log.summary, log.series("accuracy"), log.round_times(), log.last_round_end()
"""

from fedctl.contract.metrics import (
    METRICS_FILE,
    Event,
    LineBuffer,
    MetricsLog,
    RoundRecord,
    Summary,
    integer,
    number,
    parse_metrics,
    parse_round,
    read_metrics,
)
from fedctl.contract.paths import RunFiles, collected_metrics, host_files, manifest_of, metrics_name, run_files
from fedctl.contract.status import READY_FILE, STATUS_FILE, ReadyInfo, ServerStatus, parse_ready, parse_status

__all__ = [
    "METRICS_FILE", "READY_FILE", "STATUS_FILE", "Event", "LineBuffer", "MetricsLog", "ReadyInfo", "RoundRecord",
    "RunFiles", "ServerStatus", "Summary", "collected_metrics", "host_files", "integer", "manifest_of",
    "metrics_name", "number", "parse_metrics", "parse_ready", "parse_round", "parse_status", "read_metrics",
    "run_files",
]
