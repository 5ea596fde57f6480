"""A campaign's state: ``.fedctl/sweeps/<name>/sweep.json``, every run with its status.

Layout under ``.fedctl/sweeps/<name>/``: ``sweep.json`` (this file's ``CampaignState``, saved
atomically on every change), ``lock``, ``.fedctl/`` (the fleet's StateStore: it provisions and
tears down the campaign's one fleet, and is an ordinary fedctl folder: ``cd .fedctl/sweeps/<name>
&& fedctl status`` or ``fedctl teardown`` work there) and ``runs/<key>/`` (one StateStore per run, holding a copy of the
fleet's hosts with the run's own id, port, run dir, token and processes). Results go to
``results/sweeps/<name>/runs/<key>/``.

Resuming: a run is done once ``finished``; ``queued`` and ``interrupted`` runs are run again by
the same command, ``failed`` ones with ``--rerun-failed``. A run found ``running`` in the state
belonged to a fedctl that was killed: it is ``interrupted``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from fedctl.errors import StateError, StateLockedError
from fedctl.fsutil import atomic_write
from fedctl.sweep.records import SweepRun

STATE_VERSION = 1


def run_to_dict(run: SweepRun) -> dict[str, Any]:
    d = {f.name: getattr(run, f.name) for f in fields(run)}
    d["params"] = [[k, v] for k, v in run.params]
    return d


def run_from_dict(d: dict[str, Any]) -> SweepRun:
    known = {f.name for f in fields(SweepRun)}
    d = {k: v for k, v in d.items() if k in known}
    d["params"] = tuple((str(k), v) for k, v in d.get("params", []))
    return SweepRun(**d)


@dataclass
class CampaignState:
    """What ``sweep.json`` holds. ``runs`` keeps the sweep file's order; ``progress`` is each
    running run's last round, rounds and accuracy (for ``fedctl sweep status`` from elsewhere)."""

    name: str
    spec_path: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    runs: dict[str, SweepRun] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    parallel: int | None = None
    fleet: str | None = None  # the fleet's phase, as last seen
    error: str | None = None
    version: int = STATE_VERSION

    def set(self, key: str, clock: Any = time.time, **changes: Any) -> SweepRun:
        """Replace run ``key`` with ``changes`` applied; a status change is an event."""
        old = self.runs[key]
        new = self.runs[key] = replace(old, **changes)
        if new.status != old.status:
            self.events.append({"time": clock(), "key": key, "status": new.status, "run_id": new.run_id})
            del self.events[:-5000]
        return new

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("finished", "running", "queued", "failed", "interrupted")}
        for r in self.runs.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["runs"] = [run_to_dict(r) for r in self.runs.values()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CampaignState":
        d = dict(d)
        runs = [run_from_dict(r) for r in d.pop("runs", [])]
        known = {f.name for f in fields(cls)}
        st = cls(**{k: v for k, v in d.items() if k in known})
        st.runs = {r.key: r for r in runs}
        return st


class SweepStore:
    """``.fedctl/sweeps/<name>/``: the campaign's state file, its lock and its StateStores."""

    def __init__(self, state_dir: str | Path, name: str, clock: Any = time.time) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.name = name
        self.root = self.state_dir / "sweeps" / name
        self.clock = clock

    @property
    def file(self) -> Path:
        return self.root / "sweep.json"

    @property
    def project(self) -> Path:
        """The folder ``.fedctl`` is in: ``results/`` goes there."""
        return self.state_dir.parent

    @property
    def results(self) -> Path:
        return self.project / "results" / "sweeps" / self.name

    def run_results(self, key: str) -> Path:
        return self.results / "runs" / key

    def fleet_store(self) -> Any:
        from fedctl.state import StateStore

        # named .fedctl: the local provider keeps its hosts in <store's folder>/.fedctl/local, and
        # `cd .fedctl/sweeps/<name> && fedctl status` (or teardown) treats the fleet as any run
        return StateStore(self.root / ".fedctl", clock=self.clock)

    def run_store(self, key: str) -> Any:
        from fedctl.state import StateStore

        return StateStore(self.root / "runs" / key, clock=self.clock)

    def exists(self) -> bool:
        return self.file.exists()

    def load(self) -> CampaignState:
        """The campaign's state; StateError (exit 2) when it is missing or unreadable."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"not a version-{STATE_VERSION} campaign state")
            return CampaignState.from_dict(data)
        except FileNotFoundError:
            raise StateError(f"no campaign named {self.name} here: {self.file} does not exist",
                             hint="start it with `fedctl sweep SWEEP.yaml`") from None
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.file} is unreadable: {str(exc)[:200]}",
                             hint=f"move it aside (`mv {self.file} {self.file}.bad`) to start the campaign afresh")\
                from None

    def save(self, state: CampaignState) -> None:
        state.updated_at = self.clock()
        atomic_write(self.file, json.dumps(state.to_dict(), indent=1, default=str).encode(), mode=0o600)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One fedctl per campaign at a time (``.fedctl/sweeps/<name>/lock``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLockedError(f"another fedctl is running campaign {self.name} ({self.root})",
                                   hint="wait for it, or `fedctl sweep status` to see it") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def list_campaigns(state_dir: str | Path) -> list[str]:
    """Names of the campaigns with a state under ``state_dir``."""
    root = Path(state_dir) / "sweeps"
    return sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.is_dir() else []


def reconcile(state: CampaignState | None, plan: Any, clock: Any = time.time) -> CampaignState:
    """The campaign's state for this sweep file: runs it adds are queued; a run whose meaning
    changed (the base file, clients, rounds or a --set changed its resolved config) is refused,
    since its results would no longer compare with the others'; a run left ``running`` by a
    killed fedctl is ``interrupted``."""
    from fedctl.sweep.records import SweepRun

    spec = plan.spec
    if state is None:
        state = CampaignState(name=spec.name, created_at=clock())
    state.spec_path = spec.path
    changed = [p.run.key for p in plan.runs
               if p.run.key in state.fingerprints and state.fingerprints[p.run.key] != p.fingerprint
               and state.runs[p.run.key].status != "queued"]
    if changed:
        raise StateError(
            f"{spec.path} changed what {len(changed)} run(s) of campaign {spec.name} mean (e.g. {changed[0]}): "
            "their resolved experiment (base file, clients, rounds or --set) differs from the one they ran",
            hint=f"give the sweep a new name, or remove .fedctl/sweeps/{spec.name} and results/sweeps/{spec.name} "
            "to start it afresh (adding grid values or seeds is fine: only the new runs run)")
    for p in plan.runs:
        old = state.runs.get(p.run.key)
        state.runs[p.run.key] = old if old is not None else SweepRun(p.run.key, p.run.params, p.run.seed)
        state.fingerprints[p.run.key] = p.fingerprint
    for key, r in state.runs.items():
        if r.status == "running":
            state.set(key, clock, status="interrupted", error="fedctl stopped while it ran", finished_at=clock())
    state.progress = {}
    return state


def parse_only(texts: Iterable[str]) -> list[tuple[str, Any]]:
    """``--only KEY=VALUE`` as (key, value), the value parsed as YAML like ``--set``."""
    from fedctl.config.overrides import parse_override

    return [(o.dotted, o.value) for o in (parse_override(t) for t in texts)]


def select(state: CampaignState, keys: Sequence[str], only: Sequence[tuple[str, Any]] = (),
           rerun_failed: bool = False) -> list[str]:
    """The runs to run now, in order: queued and interrupted ones (failed ones too with
    ``rerun_failed``), among those matching every ``--only`` pair."""
    from fedctl.errors import UsageError

    wanted = {"queued", "interrupted"} | ({"failed"} if rerun_failed else set())
    grid = {k for r in state.runs.values() for k, _ in r.params} | {"seed"}
    for k, _ in only:
        if k not in grid:
            raise UsageError(f"--only {k}: not a grid key of campaign {state.name}",
                             hint="valid: " + ", ".join(sorted(grid)))
    out = []
    for key in keys:
        run = state.runs[key]
        values = {**dict(run.params), "seed": run.seed}
        if run.status in wanted and all(_same(values.get(k), v) for k, v in only):
            out.append(key)
    return out


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)
