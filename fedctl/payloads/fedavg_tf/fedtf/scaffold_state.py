"""A client process's SCAFFOLD control variates c_i, kept so that the server's c = mean over all
clients of c_i (Karimireddy et al. 2020, option II; the server adds dc_i / N for each update it
aggregates).

Rules, each for a way the two sides used to drift apart:
- c_i moves by dc_i when the server answered the update with 200 (``commit``): a dropped, late
  (409) or rejected (400) update changes nothing on either side.
- A 200 says the server took the update, not that it aggregated it: the round's close can still
  leave it out (far above the round's median norm, or a non-finite aggregate). And an update the
  server took whose 200 was lost is retried and answered 409, so the client cannot tell it was
  counted. The server therefore says in every task, and in its final "finished" answer, which
  updates it aggregated (``counted``: the last settled round, and per client the last round its
  update went in; fedtf/coordinator.py). ``settle`` takes that word: a 200-commit the server left
  out is undone, and an update answered 409 or never answered (``uncertain``, held in memory) is
  committed when the server counted it. An answer that comes after that word is judged by it at
  once. So c = mean(c_i) holds once each client process has seen the task after the round, or the
  end of the run.
- Each commit is saved at once, atomically, per virtual client (``<run dir>/client-state/
  scaffold-<id>.npz``: temp file, fsync, rename), with the c_i before it and its round, so a
  restarted client process goes on from what the server has counted.
- A server that runs round t again (a retry after too few updates, or a restart from the
  checkpoint before t) never aggregated the updates it took in the earlier run of t: a task for
  round t undoes a commit of round t (``task_seen``); an answer that arrives after such a task is
  not committed. Round 1 means c = 0 on the server, so every c_i is 0 again.

Known limits: an update held as uncertain is in memory only, so a client process restarted after
its 200 was lost and before the next task drifts by that update; a verdict cannot tell whether an
update of round t was counted once the same client's update of a later round has been aggregated
(an answer more than a round late): a 200 is then kept, an uncertain update dropped, and the log
says so.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .checkpoint import load_arrays, save_arrays

STATE_DIR = "client-state"  # in the run dir: what a restarted client process must not lose


def state_path(run_dir: str, cid: int) -> str:
    """Where virtual client `cid` keeps its committed control variate."""
    return os.path.join(run_dir, STATE_DIR, f"scaffold-{cid}.npz")


@dataclass
class _Variate:
    c: np.ndarray | None = None      # committed c_i (None: zeros)
    prev: np.ndarray | None = None   # c_i before the commit of round `round`
    round: int | None = None         # round of the newest commit that could still be undone


class ControlVariates:
    """The committed c_i of one process's virtual clients (thread-safe: uploads commit)."""

    def __init__(self, run_dir: str, ids: list[int], size: int, log) -> None:
        self.run_dir, self.size, self.log = run_dir, size, log
        self.lock = threading.Lock()
        self.seen: deque[tuple[str, int, int]] = deque(maxlen=64)  # (instance, seq, round) of recent tasks
        self.v = {k: self._load(k) for k in ids}
        self.verdict: tuple[int, dict[int, int]] | None = None  # the server's latest ``counted``
        #: updates answered 409 or not at all, which the server may have counted: (task, dc) per client
        self.pending: dict[int, list[tuple[tuple[str, int, int], np.ndarray]]] = {k: [] for k in ids}

    def restored(self) -> list[int]:
        """The clients whose c_i came from disk."""
        return sorted(k for k, v in self.v.items() if v.c is not None)

    def base(self, k: int) -> np.ndarray:
        """The c_i client `k` trains with: what the server has counted (an unanswered upload is not)."""
        with self.lock:
            c = self.v[k].c
            return np.zeros(self.size, np.float32) if c is None else c.copy()

    def task_seen(self, instance: str, seq: int, rnd: int) -> None:
        """The server now runs round `rnd`: undo the commits it cannot have aggregated."""
        with self.lock:
            self.seen.append((instance, seq, rnd))
            for k, v in self.v.items():
                # an uncertain update of this round or a later one was never aggregated
                self.pending[k] = [(t, dc) for t, dc in self.pending[k] if t[2] < rnd]
                if v.round is None or rnd > v.round:
                    continue
                if rnd == 1:  # nothing aggregated yet: the server's c is 0, so is every c_i
                    v.c = v.prev = v.round = None
                    why = "the server starts at round 1 again: c_i is 0"
                elif rnd == v.round:
                    v.c, v.prev, v.round = v.prev, None, None
                    why = f"the server runs round {rnd} again: c_i is back to before that round"
                else:
                    v.round = None  # say it once
                    self.log(f"client {k}: the server went back to round {rnd}, before the commits of "
                             f"rounds {rnd}..; c_i cannot be undone that far and no longer matches c", "error")
                    continue
                self._save(k, v)
                self.log(f"client {k}: {why}")

    def commit(self, k: int, dc: np.ndarray, task: tuple[str, int, int]) -> bool:
        """c_i += dc for an update (of `task`: instance, seq, round) the server answered with 200.

        False, and nothing changes, when a task seen after `task` showed the server running that
        round (or an earlier one) again, or the server's ``counted`` already says it left the
        update out.
        """
        rnd = task[2]
        with self.lock:
            if self._rerun_since(task):
                self.log(f"client {k}: round {rnd} is being run again; its update is not counted")
                return False
            counted = self._counted(k, rnd)
            if counted is False:
                self.log(f"client {k}: the server left its round {rnd} update out when the round closed; "
                         f"c_i unchanged")
                return False
            self._apply(k, dc, rnd)
            return True

    def uncertain(self, k: int, dc: np.ndarray, task: tuple[str, int, int]) -> None:
        """An update the server may have taken though it did not answer 200 (409, or no answer):
        held until the server's ``counted`` says whether it went into c."""
        rnd = task[2]
        with self.lock:
            if self._rerun_since(task):
                return
            counted = self._counted(k, rnd)
            if counted is None and self.verdict is not None and rnd <= self.verdict[0]:
                self.log(f"client {k}: cannot tell whether the server counted its round {rnd} update "
                         f"(answered after a later one of it was aggregated); c_i unchanged", "error")
            elif counted is None:
                self.pending[k].append((task, dc))
            elif counted:
                self._apply(k, dc, rnd)
                self.log(f"client {k}: the server counted its round {rnd} update though it did not "
                         f"answer 200; c_i committed")

    def settle(self, counted) -> None:
        """The server's word on which updates it aggregated (a task's or the final answer's
        ``counted``: ``{"through": R, "last": {"<id>": r}}``); None (a server that does not say):
        nothing changes. Undo 200-commits it left out, commit uncertain updates it counted."""
        verdict = _parse_counted(counted)
        if verdict is None:
            return
        with self.lock:
            self.verdict = verdict
            through, last = verdict
            for k, v in self.v.items():
                if v.round is not None and v.round <= through and last.get(k, 0) < v.round:
                    self.log(f"client {k}: the server left its round {v.round} update out when the round "
                             f"closed; c_i is back to before it")
                    v.c, v.prev, v.round = v.prev, None, None
                    self._save(k, v)
                keep = []
                for task, dc in self.pending[k]:
                    if task[2] > through:
                        keep.append((task, dc))
                    elif last.get(k, 0) == task[2]:
                        self._apply(k, dc, task[2])
                        self.log(f"client {k}: the server counted its round {task[2]} update though it did "
                                 f"not answer 200; c_i committed")
                self.pending[k] = keep

    # -- under the lock --------------------------------------------------------------------------
    def _rerun_since(self, task: tuple[str, int, int]) -> bool:
        """A task seen after `task` runs its round (or an earlier one) again."""
        seen = list(self.seen)
        later = seen[seen.index(task) + 1:] if task in seen else seen
        return any(r <= task[2] for _, _, r in later)

    def _counted(self, k: int, rnd: int) -> bool | None:
        """Whether the server's latest word says client k's round `rnd` update was aggregated; None
        when it does not say (no word yet, the round not settled yet, or k aggregated since)."""
        if self.verdict is None or rnd > self.verdict[0]:
            return None
        last = self.verdict[1].get(k, 0)
        return None if last > rnd else last == rnd

    def _apply(self, k: int, dc: np.ndarray, rnd: int) -> None:
        v = self.v[k]
        c = np.zeros(self.size, np.float32) if v.c is None else v.c
        if v.round is not None and rnd < v.round:  # answered after a newer round's: below it
            v.prev = (np.zeros(self.size, np.float32) if v.prev is None else v.prev) + dc
        else:
            v.prev, v.round = c, rnd
        v.c = c + dc
        self._save(k, v)

    # -- files ----------------------------------------------------------------------------------
    def _save(self, k: int, v: _Variate) -> None:
        arrays = {"round": np.array(-1 if v.round is None else v.round, np.int64)}
        for name in ("c", "prev"):
            if getattr(v, name) is not None:
                arrays[name] = getattr(v, name)
        try:
            save_arrays(state_path(self.run_dir, k), arrays)
        except OSError as e:  # the server counted it: train with it, but a restart would drift
            self.log(f"client {k}: cannot save c_i ({e}); a restarted client would start from an older one",
                     "error")

    def _load(self, k: int) -> _Variate:
        path = state_path(self.run_dir, k)
        got = load_arrays(path)
        if got is None:
            return _Variate()
        for name in ("c", "prev"):
            a = got.get(name)
            if a is not None and (a.dtype != np.float32 or a.shape != (self.size,)):
                raise ValueError(f"{path}: {name} is {a.dtype} {a.shape}, this model needs float32 ({self.size},)")
        rnd = got.get("round")
        if rnd is None or rnd.shape != () or rnd.dtype != np.int64:
            raise ValueError(f"{path}: no round number; not a SCAFFOLD state file")
        return _Variate(got.get("c"), got.get("prev"), None if int(rnd) < 0 else int(rnd))


def _parse_counted(counted) -> tuple[int, dict[int, int]] | None:
    """``{"through": R, "last": {"<id>": r}}`` as (R, {id: r}); None when absent or malformed."""
    if not isinstance(counted, dict):
        return None
    through, last = counted.get("through"), counted.get("last")
    if not isinstance(through, int) or isinstance(through, bool) or not isinstance(last, dict):
        return None
    out = {}
    for key, r in last.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()) or not isinstance(r, int) \
                or isinstance(r, bool):
            return None
        out[int(key)] = r
    return through, out
