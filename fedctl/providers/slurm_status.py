"""The run's Slurm allocation as slurmctld sees it now: what ``watch`` and ``status`` show (job id,
state with its pending or end reason, node list, time left) and what the cost ledger's live view uses.

One read-only command on the login node, ``scontrol show job -o JOB`` (it answers for pending,
running and ended jobs alike while slurmctld remembers them; no slurmdbd, so never ``sacct``).
Parsing is strict and bounded: the fields used must be there in Slurm's own formats; anything
else is reported in ``AllocationStatus.problems``, never guessed. Callers ask at most every
``fedctl.ops.follow.ENDED_CHECK_S`` (it is a Slurm command on a shared login node).
"""

from __future__ import annotations

import re
from typing import Sequence

from fedctl.connectors.base import HostInfo
from fedctl.providers.base import AllocationStatus, ProviderError
from fedctl.providers.slurm_jobs import SlurmCli

#: at most this much of scontrol's answer is read (one job's record is ~1-2 KB; a het job a few)
MAX_OUTPUT = 64 * 1024
MAX_RECORDS = 16
#: what the job's state is called once slurmctld forgot it (MinJobAge after its end)
FORGOTTEN = "FORGOTTEN"
#: the job could not be asked about (the login node, slurmctld): ``problems`` says why
UNKNOWN = "UNKNOWN"
_STATE = re.compile(r"^[A-Z_]{2,32}$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")  # [D-]HH:MM:SS (scontrol's RunTime/TimeLimit)
_NODES = re.compile(r"^(\d+)(?:-(\d+))?$")  # NumNodes: 2, or 2-4 (min-max) while pending
_NO_VALUE = ("", "(null)", "None", "N/A")


def slurm_seconds(text: str) -> float | None:
    """``1-02:03:04`` -> 93784.0; None when it is not Slurm's ``[D-]HH:MM:SS``."""
    m = _TIME.match(text)
    if m is None:
        return None
    days, h, mi, s = (int(g) if g else 0 for g in m.groups())
    if mi >= 60 or s >= 60:
        return None
    return float(((days * 24 + h) * 60 + mi) * 60 + s)


def parse_show_job(job: str, text: str) -> AllocationStatus:
    """``scontrol show job -o JOB``'s answer -> the job's status. Strict: a field that is missing
    or not in Slurm's format is left None and said in ``problems``; records of other jobs (a het
    job's components) and lines that are not records are reported, not merged."""
    problems: list[str] = []
    if len(text) > MAX_OUTPUT:
        problems.append(f"scontrol printed {len(text)} characters; read the first {MAX_OUTPUT}")
        text = text[:MAX_OUTPUT]
    mine: dict[str, str] | None = None
    parts: list[dict[str, str]] = []  # a heterogeneous job's other components (HetJobId=job)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for n, line in enumerate(lines[:MAX_RECORDS], 1):
        fields = _fields(line)
        if "JobId" not in fields:
            problems.append(f"line {n} is not a job record: {line[:80]!r}")
        elif fields["JobId"] == job and mine is None:
            mine = fields
        elif fields["JobId"] == job:
            problems.append(f"line {n}: job {job} printed twice; the first record is used")
        elif fields.get("HetJobId") == job:
            parts.append(fields)
        else:
            problems.append(f"line {n} is job {fields['JobId'][:20]}, no part of job {job}")
    if len(lines) > MAX_RECORDS:
        problems.append(f"{len(lines) - MAX_RECORDS} more line(s) not read")
    if mine is None:
        problems.append(f"no record of job {job} in scontrol's answer")
        return AllocationStatus(job, UNKNOWN, problems=tuple(problems))

    state = mine.get("JobState", "")
    if not _STATE.match(state):
        problems.append(f"JobState {state[:40]!r} is not a Slurm job state")
        state = UNKNOWN
    reason = mine.get("Reason", "")
    reason = None if reason in _NO_VALUE else reason
    exit_code = mine.get("ExitCode", "0:0")
    live = AllocationStatus(job, state).ended is False
    if not live and exit_code not in ("0:0", ""):
        reason = ", ".join(r for r in (reason, f"exit {exit_code}") if r)
    # a heterogeneous job (the server on a node of its own): its components' nodes together
    lists = [r.get("NodeList", "") for r in (mine, *parts)]
    nodelist = ",".join(x for x in lists if x not in _NO_VALUE)
    counts = [_NODES.match(r.get("NumNodes", "")) for r in (mine, *parts)]
    nodes: int | None = None
    if any(m is None for m in counts):
        bad = next(r.get("NumNodes", "(missing)") for r, m in zip((mine, *parts), counts) if m is None)
        problems.append(f"NumNodes {bad[:40]!r} is not a node count")
    else:
        nodes = sum(int(m.group(1)) for m in counts if m is not None)
    elapsed = _duration(mine, "RunTime", problems)
    limit_text = mine.get("TimeLimit", "")
    limit = None if limit_text == "UNLIMITED" else _duration(mine, "TimeLimit", problems)
    return AllocationStatus(job, state, reason, nodelist, nodes, elapsed, limit, tuple(problems))


def _fields(line: str) -> dict[str, str]:
    """``Key=value`` tokens of one record (a value holds no blank in the fields fedctl reads)."""
    out: dict[str, str] = {}
    for tok in line.split():
        key, eq, value = tok.partition("=")
        if eq and key not in out:
            out[key] = value
    return out


def _duration(fields: dict[str, str], key: str, problems: list[str]) -> float | None:
    text = fields.get(key)
    if text is None:
        problems.append(f"{key} missing")
        return None
    seconds = slurm_seconds(text)
    if seconds is None:
        problems.append(f"{key} {text[:40]!r} is not [D-]HH:MM:SS")
    return seconds


def recorded_job(hosts: Sequence[HostInfo]) -> str | None:
    """The job id the state recorded for the run's hosts (None before sbatch printed it)."""
    ids = sorted({h.machine.id for h in hosts if h.machine is not None and h.machine.id})
    return ids[0] if ids else None


def allocation_status(hosts: Sequence[HostInfo], cli: SlurmCli | None = None,
                      known_hosts: str | None = None) -> AllocationStatus | None:
    """The run's allocation as slurmctld says now (one ``scontrol show job -o``), None when no job
    was recorded yet. ``cli``: the provider's (its login connector); None: one to the login node of
    the hosts' settings (``slurm.login_connector``, pinning keys into ``known_hosts``). A login node
    or slurmctld that does not answer gives state ``UNKNOWN`` with the error in ``problems``."""
    job = recorded_job(hosts)
    if job is None:
        return None
    if cli is None:
        from fedctl.providers.slurm import login_connector
        from fedctl.providers.slurm_config import settings

        cli = SlurmCli(connector=login_connector(settings(hosts[0]), known_hosts), timeout_s=20.0)
    try:
        out = cli.run(["scontrol", "show", "job", "-o", job])
    except ProviderError as e:
        if "Invalid job id" in str(e):  # slurmctld forgot it: over for good (no slurmdbd to ask)
            return AllocationStatus(job, FORGOTTEN, "no longer known to slurmctld (its record expired)")
        return AllocationStatus(job, UNKNOWN, problems=(f"cannot ask slurmctld: {e}",))
    except OSError as e:  # the login node's SSH connection
        return AllocationStatus(job, UNKNOWN, problems=(f"cannot reach {cli.where}: {e}",))
    return parse_show_job(job, out)
