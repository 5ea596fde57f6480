"""Slurm allocations of a fedctl run: submit, wait, read the nodes, find fedctl's own jobs, cancel them.

Small idempotent steps over Slurm's own commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``),
run on the login node: this machine (``SLURM_CONF`` and ``PATH`` as the caller's), or one reached
through a fedctl connector (SSH, with the login's ``environment``). No
slurmdbd is assumed: jobs are tracked with ``squeue``/``scontrol``, never ``sacct``.

A job is fedctl's when its name is ``fedctl-<run>`` AND its comment is ``fedctl-origin=<origin>``
(the folder that submitted it); teardown re-reads both with ``squeue`` just before ``scancel``, so a
stale or edited state cannot cancel someone else's job.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from fedctl.providers.base import ProviderError
from fedctl.providers.slurm_config import SlurmHostSettings

if TYPE_CHECKING:
    from fedctl.connectors.base import Connector

#: squeue's states of a job that is over or on its way out (not waited for by ``wait_running``)
ENDED = ("COMPLETED", "COMPLETING", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "OUT_OF_MEMORY")
#: minutes of allocation when neither slurm.time nor budget.max_hours says (the cluster ends it then)
DEFAULT_TIME_MIN = 24 * 60
#: on top of max_hours: pushing the payload, starting and collecting (minutes)
TIME_MARGIN_MIN = 30
_SEP = "\x1f"  # squeue field separator: not in job names or fedctl's comments


def job_name(run_id: str) -> str:
    """The name of the run's allocation."""
    return f"fedctl-{run_id}"


def job_comment(origin: str) -> str:
    """The comment that says which fedctl folder submitted the job."""
    return f"fedctl-origin={origin}"


@dataclass(frozen=True)
class Job:
    """One job as ``squeue`` shows it now."""

    id: str
    name: str
    comment: str
    state: str  # PENDING, RUNNING, COMPLETING ...
    reason: str  # why it is pending (Resources, Priority, PartitionDown ...), "None" when running
    nodes: str  # the node list expression (fl[1-2]; a het job's components joined: fl1,fl[2-3]); empty while pending
    #: a heterogeneous job's node list per component (het offset 0, 1 ...); () for a plain job
    components: tuple[str, ...] = ()

    @property
    def run_id(self) -> str | None:
        return self.name[len("fedctl-"):] if self.name.startswith("fedctl-") else None

    @property
    def origin(self) -> str | None:
        return self.comment[len("fedctl-origin="):] if self.comment.startswith("fedctl-origin=") else None


def slurm_time(s: SlurmHostSettings, max_hours: float | None) -> str:
    """``--time``: slurm.time, else the budget's max_hours plus a margin (so the cluster itself ends
    an allocation fedctl lost), else a day."""
    if s.time is not None:
        return s.time
    minutes = math.ceil(max_hours * 60) + TIME_MARGIN_MIN if max_hours else DEFAULT_TIME_MIN
    return str(minutes)


def sbatch_argv(s: SlurmHostSettings, run_id: str, origin: str, nodes: int, run_dir: PurePosixPath | Path,
                max_hours: float | None) -> list[str]:
    """The ``sbatch`` command line of the run's allocation (the batch script is ``run_dir/alloc.sh``).

    With ``server: own`` a heterogeneous job: component 0 is one node for the server (no GPUs, no
    constraint or extra arguments; ``server_partition`` if set), component 1 the ``nodes`` client
    nodes; both carry the run's name and comment, so fedctl finds (and cancels) either."""
    ours = [f"--job-name={job_name(run_id)}", f"--comment={job_comment(origin)}",
            f"--time={slurm_time(s, max_hours)}"]
    ours += [f"--{flag}={value}" for flag, value in (("account", s.account), ("qos", s.qos)) if value is not None]
    files = [f"--chdir={run_dir}", f"--output={run_dir / 'slurm-%j.out'}"]
    clients = [f"--nodes={nodes}"]
    for flag, value in (("partition", s.partition), ("constraint", s.constraint), ("mem", s.mem),
                        ("cpus-per-task", s.cpus_per_task), ("gpus-per-node", s.gpus_per_node)):
        if value is not None:
            clients.append(f"--{flag}={value}")
    clients += s.sbatch_args
    if s.server != "own":
        return ["sbatch", "--parsable", *ours, *files, *clients, str(run_dir / "alloc.sh")]
    server = ["--nodes=1", "--ntasks=1"]
    for flag, value in (("partition", s.server_partition or s.partition), ("mem", s.mem),
                        ("cpus-per-task", s.cpus_per_task)):
        if value is not None:
            server.append(f"--{flag}={value}")
    return ["sbatch", "--parsable", *ours, *files, *server, ":", *ours, *clients, str(run_dir / "alloc.sh")]


class SlurmCli:
    """Slurm's commands and the run folder's files on the login node: this machine, or the host
    ``connector`` reaches (its files are the compute nodes' too: the shared filesystem)."""

    COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")

    def __init__(self, env: dict[str, str] | None = None, timeout_s: float = 60.0,
                 connector: "Connector | None" = None) -> None:
        self.env = env
        self.timeout_s = timeout_s
        self.connector = connector

    @property
    def where(self) -> str:
        """The login node in words."""
        return "this machine" if self.connector is None else f"login node {self.connector.host.address}"

    def available(self) -> str | None:
        """None when sbatch, squeue, scontrol and scancel are on the login node's PATH, else what is missing."""
        if self.connector is None:
            path = (self.env or os.environ).get("PATH")
            missing = [c for c in self.COMMANDS if shutil.which(c, path=path) is None]
        else:
            res = self.connector.run(" ".join(f"command -v {c} >/dev/null || echo {c};" for c in self.COMMANDS),
                                     timeout=self.timeout_s)
            missing = (res.stdout.split() if res.ok
                       else [f"(cannot ask: exit {res.exit_code} {res.stderr.strip()[:200]})"])
        return f"Slurm's commands are not on PATH on {self.where}: {', '.join(missing)}" if missing else None

    def expand(self, path: str) -> PurePosixPath:
        """``path`` with ``~`` resolved on the login node."""
        if self.connector is not None:
            return PurePosixPath(self.connector.expand(path))
        return PurePosixPath(os.path.abspath(os.path.expanduser(path)))

    def write(self, path: PurePosixPath, data: bytes, mode: int = 0o644) -> None:
        """Write a file of the run folder whole (its parents made), on the login node."""
        if self.connector is None:
            Path(str(path)).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{path}.tmp")
            tmp.write_bytes(data)
            tmp.chmod(mode)
            os.replace(tmp, str(path))  # whole, so the agent never reads half a file
            return
        self.run(["mkdir", "-p", str(path.parent)])
        self.connector.put_bytes(data, str(path), mode=mode)  # atomic: a temp file renamed

    def read(self, path: PurePosixPath) -> str | None:
        """A file of the run folder on the login node (None while it does not exist)."""
        if self.connector is None:
            try:
                return Path(str(path)).read_text()
            except FileNotFoundError:
                return None
        res = self.connector.run(f"test -e {shlex.quote(str(path))} && cat {shlex.quote(str(path))}",
                                 timeout=self.timeout_s)
        return res.stdout if res.ok else None

    def run(self, argv: Sequence[str]) -> str:
        """Run one command; its stdout, or ProviderError with its stderr."""
        if self.connector is not None:
            res = self.connector.run(shlex.join(argv), timeout=self.timeout_s)
            if res.timed_out:
                raise ProviderError(f"{argv[0]} on {self.where} timed out after {self.timeout_s:g}s")
            proc = subprocess.CompletedProcess(list(argv), res.exit_code, res.stdout, res.stderr)
        else:
            try:
                proc = subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                                      timeout=self.timeout_s, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ProviderError(f"{argv[0]} failed: {e}") from None
        if proc.returncode != 0:
            # Slurm prints a chain of errors; the last line says what went wrong in the end
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no message)"]
            raise ProviderError(f"{' '.join(argv[:2])} failed ({proc.returncode}): {lines[-1][:300]}")
        return proc.stdout

    def submit(self, argv: Sequence[str]) -> str:
        """``sbatch --parsable ...``: the job id (without a ``;cluster`` suffix)."""
        out = self.run(argv).strip()
        job = out.split(";")[0]
        if not re.fullmatch(r"\d+", job):
            raise ProviderError(f"sbatch printed {out[:100]!r}, not a job id")
        return job

    def jobs(self, run_ids: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> list[Job]:
        """This user's jobs that squeue shows now: those named ``fedctl-<run>`` for ``run_ids``
        (None: every fedctl job), or exactly ``ids`` (whatever their names)."""
        argv = ["squeue", "-h", "--me", "-o", _SEP.join(("%i", "%j", "%k", "%T", "%r", "%N"))]
        id_list = list(ids) if ids is not None else None
        if id_list is not None:
            if not id_list:
                return []
            argv.append(f"--jobs={','.join(id_list)}")
        try:
            out = self.run(argv)
        except ProviderError as e:
            if id_list is not None and "Invalid job id" in str(e):
                return []  # every one of them is gone from slurmctld's memory
            raise
        found = []
        for job in _merge_components(out):
            if id_list is not None:
                found.append(job)
            elif job.run_id is not None and (run_ids is None or job.run_id in set(run_ids)):
                found.append(job)
        return found

    def job_gpus(self, job_id: str) -> dict[str, tuple[int, ...]]:
        """Each node's allocated GPU indices (``scontrol show job -d``; every component of a
        heterogeneous job): the truth for placement, the node's nvidia-smi may show more."""
        from fedctl.providers.slurm_gpus import parse_job_gpus

        return parse_job_gpus(self.run(["scontrol", "show", "job", "-d", job_id]), self.hostnames)

    def hostnames(self, nodelist: str) -> list[str]:
        """``fl[1-2]`` -> ``["fl1", "fl2"]`` (``scontrol show hostnames``)."""
        return [h for h in self.run(["scontrol", "show", "hostnames", nodelist]).split() if h]

    def node_addresses(self, nodelist: str) -> dict[str, str]:
        """Each node's ``NodeAddr`` (``scontrol show node``): the address slurmctld reaches it at,
        which is where the clients reach a server on it (a node name need not resolve)."""
        out = self.run(["scontrol", "show", "node", "-o", nodelist])
        found = {}
        for line in out.splitlines():
            fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
            if fields.get("NodeName") and fields.get("NodeAddr"):
                found[fields["NodeName"]] = fields["NodeAddr"]
        return found

    def make_tree(self, path: PurePosixPath, marker: str) -> None:
        """Create ``path`` as fedctl's folder (``marker`` in it) on the login node; an existing one
        is adopted only when it holds the marker (fedctl made it), else ProviderError: fedctl writes
        nothing into a folder it did not make."""
        p = shlex.quote(str(path))
        m = shlex.quote(f"{path}/{marker}")
        script = (f"if [ -L {p} ] || {{ [ -e {p} ] && [ ! -f {m} ]; }}; then echo foreign; exit 0; fi; "
                  f"mkdir -p -- {p} && : > {m}")
        if self.run(["sh", "-c", script]).strip() == "foreign":
            raise ProviderError(f"{path} on {self.where} already exists and was not made by fedctl; fedctl writes "
                                "nothing into a folder it did not create (move it, or set slurm.login.workdir)")

    def show_job(self, job_id: str) -> dict[str, str] | None:
        """``scontrol show job -o``'s fields (JobState, Reason, ExitCode ...), None once slurmctld
        forgot the job (MinJobAge after its end; there is no slurmdbd to ask)."""
        try:
            out = self.run(["scontrol", "show", "job", "-o", job_id])
        except ProviderError as e:
            if "Invalid job id" in str(e):
                return None
            raise
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def end_report(self, job_id: str) -> str:
        """How a job ended, in words: ``TIMEOUT (TimeLimit)``, ``FAILED (NonZeroExitCode, exit 3:0)``,
        ``PREEMPTED``, ``NODE_FAIL`` ... (what ``scontrol show job`` says while it remembers the job)."""
        info = self.show_job(job_id)
        if info is None:
            return "no longer known to slurmctld (its record expired)"
        out = info.get("JobState", "?")
        extra = [r for r in (info.get("Reason"),) if r and r != "None"]
        if info.get("ExitCode", "0:0") != "0:0":
            extra.append(f"exit {info['ExitCode']}")
        return out + (f" ({', '.join(extra)})" if extra else "")

    def cancel(self, ids: Sequence[str]) -> None:
        """``scancel`` these jobs (an ended one is no error)."""
        if ids:
            self.run(["scancel", *ids])


_HET_ID = re.compile(r"^(\d+)\+(\d+)$")


def _merge_components(out: str) -> list[Job]:
    """squeue's rows as jobs: a heterogeneous job's components (``12+0``, ``12+1``) become one
    job ``12`` (running when all run; ended when one ended; its node lists joined and kept per component)."""
    jobs: dict[str, list[tuple[int, Job]]] = {}
    for line in out.splitlines():
        parts = line.split(_SEP)
        if len(parts) != 6:
            continue
        job = Job(*[p.strip() for p in parts])
        m = _HET_ID.match(job.id)
        base, offset = (m.group(1), int(m.group(2))) if m else (job.id, -1)
        jobs.setdefault(base, []).append((offset, dataclasses.replace(job, id=base)))
    merged = []
    for base, rows in jobs.items():
        rows.sort(key=lambda r: r[0])
        if rows[0][0] < 0:  # a plain job
            merged.append(rows[0][1])
            continue
        comps = [j for _, j in rows]
        states = [j.state for j in comps]
        state = next((st for st in states if st in ENDED), None) or next(
            (st for st in states if st != "RUNNING"), "RUNNING")
        reason = next((j.reason for j in comps if j.reason not in ("", "None")), comps[0].reason)
        nodes = tuple(j.nodes for j in comps)
        merged.append(dataclasses.replace(comps[0], state=state, reason=reason,
                                          nodes=",".join(n for n in nodes if n) if all(nodes) else "",
                                          components=nodes))
    return merged


def wait_running(cli: SlurmCli, job_id: str, timeout_s: float, poll_s: float,
                 progress: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> Job:
    """Until ``job_id`` runs: the job then. Each poll says its state and squeue's pending reason
    (a live line). ProviderError when it ends first or ``timeout_s`` passes (it is left to teardown)."""
    deadline = clock() + timeout_s
    last = ""
    while True:
        found = cli.jobs(ids=[job_id])
        if not found or found[0].state in ENDED:
            raise ProviderError(f"job {job_id} ended before fedctl could use it: {cli.end_report(job_id)}")
        job = found[0]
        if job.state == "RUNNING" and job.nodes:
            return job
        line = f"job {job_id} {job.state.lower()}" + (f" ({job.reason})" if job.reason not in ("", "None") else "")
        if line != last:
            progress(line)
            last = line
        if clock() >= deadline:
            raise ProviderError(f"job {job_id} did not start within {timeout_s:g}s: {line}")
        time.sleep(poll_s)  # polling slurmctld: its own cadence, not a test's synchronisation


def cancel_ours(cli: SlurmCli, run_id: str, origin: str, recorded: Sequence[str], timeout_s: float,
                poll_s: float, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Cancel the run's jobs (recorded ids and jobs named for the run) whose name AND comment are
    this run's and origin's, re-read with squeue just before; wait until squeue shows none of them.
    A recorded id whose name or comment say otherwise is refused and said so. Returns the ids cancelled."""
    found = {j.id: j for j in cli.jobs(run_ids=[run_id])}
    found.update({j.id: j for j in cli.jobs(ids=[i for i in recorded if i not in found])})
    mine = []
    for jid, job in sorted(found.items()):
        if job.run_id == run_id and job.origin == origin:
            mine.append(jid)
        else:
            say(f"refusing to cancel job {jid}: named {job.name!r}, comment {job.comment!r}, not run {run_id} "
                f"from origin {origin}")
    if not mine:
        return []
    # re-check on the spot: the ids squeue showed a moment ago may have ended or been reused
    recheck = [j.id for j in cli.jobs(ids=mine) if j.run_id == run_id and j.origin == origin]
    cli.cancel(recheck)
    wait_gone(cli, recheck, {(run_id, origin)}, timeout_s, poll_s, say, clock)
    return recheck


def wait_gone(cli: SlurmCli, ids: Sequence[str], ours: set[tuple[str, str]], timeout_s: float, poll_s: float,
              say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
    """Wait until squeue shows none of the cancelled ``ids`` still named and commented as one of
    ``ours`` ((run id, origin) pairs); ProviderError after ``timeout_s``."""
    deadline = clock() + timeout_s
    while True:
        left = [j.id for j in cli.jobs(ids=list(ids)) if (j.run_id, j.origin) in ours]
        if not left:
            return
        if clock() >= deadline:
            raise ProviderError(f"jobs {', '.join(left)} still in squeue {timeout_s:g}s after scancel")
        say(f"waiting for job(s) {', '.join(left)} to leave squeue")
        time.sleep(poll_s)  # polling slurmctld
