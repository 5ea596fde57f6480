"""The server's evaluation of global models, in its own thread so that it does not stall a round.

Round r's model is evaluated while round r+1's clients train: the server submits it and opens the
next round at once; the evaluation completes round r's metrics line (``eval_round: r``) when it
ends. One evaluation runs at a time: the server waits for round r's before it checkpoints round
r+1, so a checkpoint always holds every evaluation but the one it started itself (marked
``eval_pending`` in it; a resumed server evaluates that model again, see server.py's restore).

The model object is the server's only one: while an evaluation runs, nothing else may use it
(the server calls `wait` before it saves the final model).

Test hook: FEDTF_EVAL_GATE names a FIFO; each evaluation first reads one byte from it, so a test
decides when an evaluation may finish without sleeping (tests/payload/test_async_eval.py).
"""
from __future__ import annotations

import os
import threading
import time
from typing import IO, Callable

import numpy as np

GATE_ENV = "FEDTF_EVAL_GATE"


class Evaluator:
    """Evaluates flat weight vectors on a fixed test set, here or in one background thread."""

    def __init__(self, trainer, layout, x: np.ndarray, y: np.ndarray) -> None:
        from .training import eval_batches  # noqa: PLC0415 - TensorFlow: this module has none at import

        self.trainer, self.layout = trainer, layout
        self._examples = int(len(y))
        self.batches = eval_batches(x, y)  # tensors made once, not every round
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._gate_path = os.environ.get(GATE_ENV) or None
        self._gate: IO[bytes] | None = None

    @property
    def examples(self) -> int:
        return self._examples

    def evaluate(self, weights: np.ndarray) -> tuple[float, float, float]:
        """(mean loss, accuracy, seconds) of `weights`, in this thread."""
        self._pass_gate()
        t = time.perf_counter()
        self.layout.set(weights)
        loss, acc = self.trainer.evaluate_batches(self.batches)
        return loss, acc, time.perf_counter() - t

    def submit(self, weights: np.ndarray, done: Callable[[float, float, float], None]) -> None:
        """Evaluate `weights` in a background thread, then call `done(loss, accuracy, seconds)`
        there. Waits for the previous evaluation first (one at a time)."""
        self.wait()
        weights = weights.copy()  # the caller's array may be updated while this one is evaluated

        def work() -> None:
            try:
                done(*self.evaluate(weights))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread by wait()
                self._error = e

        self._thread = threading.Thread(target=work, daemon=True, name="evaluate")
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the background evaluation (if any) has finished and called `done`; its
        error, if it failed, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _pass_gate(self) -> None:
        if self._gate_path is None:
            return
        if self._gate is None:
            self._gate = open(self._gate_path, "rb", buffering=0)  # noqa: SIM115 - kept for the run
        if not self._gate.read(1):  # the test closed its end: no more gating
            self._gate_path = None
