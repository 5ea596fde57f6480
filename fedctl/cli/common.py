"""What every command module shares: the injected environment, common options, printing helpers.

``CliEnv`` is passed around like httpie's Environment so tests can swap the console, the clock and
the state directory. Library modules are imported inside command functions, never at the top, so
``fedctl --help`` stays fast and never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console

from fedctl.state import StateStore


@dataclass
class CliEnv:
    """The environment a command runs in (console, clock, state dir). Tests build their own."""

    # Without a terminal rich would wrap tables at 80 columns; logs and CI read better wider.
    console: Console = field(
        default_factory=lambda: Console(
            highlight=False, width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 120))
        )
    )
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    clock: Callable[[], float] = time.time
    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("FEDCTL_STATE_DIR", ".fedctl")))
    interactive: bool = field(default_factory=lambda: sys.stdin.isatty())
    _store: Optional[StateStore] = field(default=None, repr=False, compare=False)

    @property
    def store(self) -> StateStore:
        """The command's one StateStore (the command's Session is bound to it, so every step of
        the command shares its connections); a new one when the state dir or clock changed."""
        st = self._store
        if st is None or st.root != Path(self.state_dir).absolute() or st.clock is not self.clock:
            st = self._store = StateStore(self.state_dir, clock=self.clock)
        return st

    def print_json(self, data: Any) -> None:
        """Machine output goes to stdout as plain JSON (no rich markup)."""
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()

    def confirm(self, question: str, assume_yes: bool) -> None:
        """Ask unless --yes; a "no" raises ``Declined`` (exit 1, nothing changed). Without a
        terminal, refuse rather than hang (the user must pass --yes)."""
        from fedctl.errors import Declined, UsageError

        if assume_yes:
            return
        if not self.interactive:
            raise UsageError(f"{question} needs confirmation", hint="pass --yes to run without a terminal")
        if not typer.confirm(question, default=False):
            raise Declined(f"not confirmed ({question}): nothing was changed")


ENV = CliEnv()


def env() -> CliEnv:
    """The process-wide environment (replaced by tests through ``set_env``)."""
    return ENV


def set_env(new: CliEnv) -> None:
    global ENV
    ENV = new


def as_text(message: Any) -> str:
    """``message`` made safe to put into rich markup: text, not markup (a host's pip line
    ``tensorflow[and-cuda]`` keeps its brackets), control characters shown as escapes."""
    from rich.markup import escape

    from fedctl.textsafe import printable

    return escape(printable(str(message)))


def print_progress(console: Console, message: str) -> None:
    """One progress line (``· message``), the message as text (``as_text``)."""
    console.print(f"[dim]·[/] {as_text(message)}", highlight=False)


def progress(message: str) -> None:
    """A library ``Progress`` callback: ``print_progress`` on the command's stderr console."""
    print_progress(env().err, message)


# Options shared by many commands (Typer reads the defaults' metadata).
InventoryOpt = typer.Option(None, "--inventory", "-i", help="inventory.yaml (hosts). None: this machine.")
ConfigOpt = typer.Option(None, "--config", "-c", help="experiment config (default: ./fedctl.yaml if present)")
SetOpt = typer.Option(None, "--set", help="override one config key: key.path=value (repeatable)")
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON")
YesOpt = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")

OptList = Optional[List[str]]
