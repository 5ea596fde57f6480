"""The run state in ``.fedctl/``: what fedctl intends, did and believes exists.

Rules (so a crash at any line can be torn down):
- write intent BEFORE acting (host ``provisioning``, process ``starting``) and confirm after;
- every write is atomic (``fedctl.fsutil``: temp file, fsync, rename, fsync of the folder): a reader
  never sees half a file, and a crash after a save does not bring back the previous one;
- one fedctl at a time changes the state: ``StateStore.lock()`` takes ``.fedctl/lock`` (flock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fedctl.model import (
    PHASE_MOVES,
    HostInfo,
    HostStatus,
    Phase,
    Plan,
    PlannedHost,
    ProcStatus,
    host_from_dict,
    host_to_dict,
)
from fedctl.errors import StateError, StateLockedError
from fedctl.runtypes import HostFacts, RunConfig, ServerEndpoint
from fedctl.fsutil import atomic_write  # noqa: F401 - re-exported: cli/app.py and older callers import it here

STATE_VERSION = 1

#: run phases, in the order a run normally goes through them
PHASES = tuple(p.value for p in Phase)

#: host statuses: pending -> provisioning -> provisioned | failed -> tearing_down -> torn_down
HOST_STATUSES = tuple(s.value for s in HostStatus)


def new_run_id(clock: Callable[[], float] = time.time) -> str:
    """A sortable, unique run id such as ``20261124-171500-a1b2``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock()))
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass
class ProcessRecord:
    """One payload process (the server or a client process) on one host."""

    role: str  # server | client
    index: int  # 0 for the server; k for the k-th client process on that host
    client_ids: list[int] = field(default_factory=list)
    gpu: int | None = None  # the GPU it was given (CUDA_VISIBLE_DEVICES); None: none
    pid: int | None = None
    start_time: int | None = None  # /proc/<pid>/stat field 22: tells this process from a reused pid
    pidfile: str = ""  # in the run dir, which is also the process's run mark (FEDCTL_RUN_DIR)
    log: str = ""
    status: ProcStatus = ProcStatus.STARTING
    started_at: float | None = None
    error: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "status" and not isinstance(value, ProcStatus):
            value = ProcStatus(value)  # typed at the door, like HostRecord.status
        object.__setattr__(self, name, value)

    @property
    def label(self) -> str:
        return "server" if self.role == "server" else f"client-{self.index}"


@dataclass
class OwnedPath:
    """A path fedctl created on a host, so teardown may remove it (and nothing else).

    ``kind``: ``tree`` is fedctl's entirely (a run dir, a payload or data folder it made) and is
    removed with everything in it; ``dir`` is a folder it made to hold those (the workdir, its
    ``runs/``), removed only when empty.
    """

    path: str
    kind: str = "tree"  # tree | dir
    keep: bool = False  # teardown leaves it (an environment kept with keep_env: true)


@dataclass
class HostRecord:
    """One host of the run: how to reach it, what fedctl did there, what runs there."""

    info: HostInfo
    status: str = HostStatus.PENDING
    role: str = "-"  # from the plan: server | client | server+client (never guessed from the inventory)
    client_processes: list[list[int]] = field(default_factory=list)  # from the plan: client ids per process
    client_gpus: list[int | None] = field(default_factory=list)  # the GPU of each client process
    error: str | None = None
    workdir: str | None = None  # absolute, resolved on the host at provision time
    python: str | None = None  # the interpreter the payload runs with there (a venv's, or info.python)
    owned: list[OwnedPath] = field(default_factory=list)  # what fedctl created there, in creation order
    facts: HostFacts | None = None  # what provision learned there (None: not looked yet)
    acquired_at: float | None = None  # ledger: when the host became part of the run (billing starts)
    released_at: float | None = None  # ledger: when fedctl let the host go
    processes: list[ProcessRecord] = field(default_factory=list)

    def __setattr__(self, name: str, value: Any) -> None:
        # typed at the door: a status given as its string and facts given as a mapping (an older
        # state file, a test) become the enum and HostFacts, so readers never meet the raw form
        if name == "status" and not isinstance(value, HostStatus):
            value = HostStatus(value)
        elif name == "facts" and value is not None and not isinstance(value, HostFacts):
            value = HostFacts.from_dict(value) if value else None
        object.__setattr__(self, name, value)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def gpu_count(self) -> int:
        """GPUs provision found on the host (0 before it looked)."""
        return self.facts.gpu_count if self.facts is not None else 0

    def own(self, path: str, kind: str, keep: bool = False) -> None:
        """Record that fedctl created ``path`` (once; the first kind recorded stays), and journal it
        at once when a journal is attached (provision: a kill during a host's set-up must not leave
        a folder the state does not know about)."""
        if not any(o.path == path for o in self.owned):
            self.owned.append(OwnedPath(path, kind, keep))
            journal = getattr(self, "journal", None)  # not a field: never persisted or compared
            if journal is not None:
                journal()

    def assign(self, ph: PlannedHost) -> "HostRecord":
        """Take what the plan gives the host: how to reach it, its role, its client processes."""
        self.info = ph.host
        return self.place(ph)

    def place(self, ph: PlannedHost) -> "HostRecord":
        """Take the plan's placement for the host (role, client processes, their GPUs) and keep how
        to reach it (a created machine's address is the record's, not the plan's)."""
        self.role = ph.role
        self.client_processes = [list(p) for p in ph.client_processes]
        self.client_gpus = list(ph.client_gpus)
        return self

    @classmethod
    def planned(cls, ph: PlannedHost) -> "HostRecord":
        """A new record for a host of the plan, with what the plan gives it."""
        return cls(info=ph.host).assign(ph)


@dataclass
class RunState:
    """Everything ``.fedctl/state.json`` holds. Mutated in place, saved with ``StateStore.save``."""

    run_id: str
    phase: Phase = Phase.PROVISIONING
    provider: str = "local"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    inventory_path: str | None = None
    config_path: str | None = None
    clients: int = 0
    rounds: int = 0
    payload_name: str = ""
    payload_dir: str = ""
    experiment: RunConfig = field(default_factory=RunConfig)  # the resolved experiment, typed
    plan: Plan | None = None  # roles and placement, as made at provision
    server: ServerEndpoint = field(default_factory=ServerEndpoint)  # host from the plan; address, port at start
    hosts: list[HostRecord] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    results_dir: str | None = None
    error: str | None = None
    previous_runs: list[str] = field(default_factory=list)  # earlier run ids started on these hosts
    overrides: list[str] = field(default_factory=list)  # --set given at provision; start applies them first
    events: list[dict[str, Any]] = field(default_factory=list)
    version: int = STATE_VERSION

    def __setattr__(self, name: str, value: Any) -> None:
        # typed at the door (an older state file's dicts, a test's few keys): readers meet the types
        if name == "phase" and not isinstance(value, Phase):
            value = Phase(value)
        elif name == "experiment" and not isinstance(value, RunConfig):
            value = RunConfig.from_dict(value, getattr(self, "payload_name", ""), getattr(self, "payload_dir", ""))
        elif name == "server" and not isinstance(value, ServerEndpoint):
            value = ServerEndpoint.from_dict(value)
        object.__setattr__(self, name, value)

    @property
    def config(self) -> RunConfig:
        """The run's configuration (the typed experiment)."""
        return self.experiment

    def transition(self, new: Phase | str) -> None:
        """Move the run to phase ``new``; StateError for a move ``PHASE_MOVES`` does not allow
        (a torn-down run that would come back, a finish that never started)."""
        new = Phase(new)
        if new != self.phase and new not in PHASE_MOVES[self.phase]:
            raise StateError(f"run {self.run_id} cannot go from {self.phase} to {new}",
                             hint="`fedctl status` shows where the run is")
        self.phase = new

    def host(self, name: str) -> HostRecord:
        for h in self.hosts:
            if h.name == name:
                return h
        raise StateError(f"no host named {name!r} in run {self.run_id}")

    def event(self, message: str, clock: Callable[[], float] = time.time, **data: Any) -> None:
        """Append a line to the run's event history (kept short: the last 500)."""
        self.events.append({"time": clock(), "message": message, **data})
        del self.events[:-500]

    @property
    def run_dir_rel(self) -> str:
        return f"runs/{self.run_id}"

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (enums as their values)."""
        # the plan has its own form (asdict would flatten its HostInfos the wrong way)
        d = dataclasses.asdict(dataclasses.replace(self, plan=None, experiment=RunConfig(), server=ServerEndpoint()))
        d["plan"] = self.plan.to_dict() if self.plan is not None else None
        d["experiment"] = self.experiment.to_dict()
        d["server"] = self.server.to_dict()
        d["phase"] = str(self.phase)
        for h, rec in zip(d["hosts"], self.hosts):
            h["info"] = host_to_dict(rec.info)
            h["status"] = str(rec.status)
            h["facts"] = rec.facts.to_dict() if rec.facts is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        """The RunState that ``to_dict`` wrote, with typed hosts, plan, processes and owned paths."""
        d = dict(d)
        plan = Plan.from_dict(d.pop("plan")) if d.get("plan") else None
        d.pop("plan", None)
        planned = {ph.name: ph for ph in plan.hosts} if plan else {}
        hosts = []
        known_host = {f.name for f in dataclasses.fields(HostRecord)}
        for h in d.pop("hosts", []):
            h = dict(h)
            info = host_from_dict(h.pop("info"))
            procs = [ProcessRecord(**p) for p in h.pop("processes", [])]
            owned = [OwnedPath(**o) for o in h.pop("owned", [])]
            if "role" not in h and info.name in planned:  # written by an older fedctl: ask the plan
                h["role"] = planned[info.name].role
                h["client_processes"] = [list(p) for p in planned[info.name].client_processes]
            hosts.append(HostRecord(info=info, processes=procs, owned=owned,
                                    **{k: v for k, v in h.items() if k in known_host}))
        known = {f.name for f in dataclasses.fields(cls)}
        # the experiment after payload_name/payload_dir: an older file's flat dict takes them from there
        experiment = d.pop("experiment", None)
        state = cls(hosts=hosts, plan=plan, **{k: v for k, v in d.items() if k in known})
        state.experiment = experiment or {}
        return state


class StateStore:
    """The ``.fedctl/`` directory: state.json, the lock, fedctl's known_hosts, archived runs."""

    def __init__(self, root: str | Path = ".fedctl", clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root).absolute()
        self.clock = clock
        self._lock_fd: int | None = None
        #: the command's open connections (``fedctl.ops.common.Session``), bound while it runs
        self.session: Any = None

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def local_root(self) -> Path:
        """Where the local provider makes its host workspaces."""
        return self.root / "local"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> RunState:
        """Read the state; a missing or corrupt file is a StateError that says what to do."""
        try:
            raw = self.state_file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateError(
                f"{self.state_file} is unreadable: not UTF-8 text ({exc.reason} at byte {exc.start})",
                hint=f"move it aside (`mv {self.state_file} {self.state_file}.bad`) to start afresh",
            ) from None
        except FileNotFoundError:
            raise StateError(
                f"no run here: {self.state_file} does not exist",
                hint="start one with `fedctl provision --clients N` or `fedctl run --clients N`",
            ) from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError(f"the top level is {type(data).__name__}, not an object")
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"state version {data.get('version')!r}, expected {STATE_VERSION}")
            return RunState.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(
                f"{self.state_file} is unreadable: {str(exc)[:200]}",
                hint=f"move it aside (`mv {self.state_file} {self.state_file}.bad`) to start afresh; hosts it "
                "named may still hold a run's processes and files: check them with `fedctl exec` or by hand",
            ) from None

    def load_or_none(self) -> RunState | None:
        return self.load() if self.exists() else None

    def save(self, state: RunState) -> None:
        """Atomically replace state.json (mode 0600: it names hosts and paths, never secrets)."""
        state.updated_at = self.clock()
        data = json.dumps(state.to_dict(), indent=1, sort_keys=True).encode()
        atomic_write(self.state_file, data, mode=0o600)

    def keep_copy(self, state: RunState) -> Path:
        """Write a copy of a finished run's state under ``runs/<run-id>/`` (state.json stays, so
        ``status`` and ``results`` still find the run until the next ``provision`` replaces it)."""
        dest = self.root / "runs" / state.run_id / "state.json"
        atomic_write(dest, json.dumps(state.to_dict(), indent=1, sort_keys=True).encode(), 0o600)
        return dest

    @contextlib.contextmanager
    def lock(self, create: bool = True) -> Iterator[None]:
        """Hold ``.fedctl/lock`` for the block; a second fedctl gets StateLockedError at once.

        ``create=False`` is for commands that act on an existing run (start, stop, teardown): with
        no ``.fedctl/`` here they raise "no run here" instead of leaving an empty ``.fedctl/`` behind."""
        if not create and not self.root.is_dir():
            self.load()  # raises the StateError that says there is no run here and how to start one
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateLockedError(
                f"another fedctl (pid {holder}) is changing the run in {self.root}",
                hint="wait for it to finish; if it was killed, the lock is released with it",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
