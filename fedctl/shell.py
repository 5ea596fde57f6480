"""Remote commands as data: built from ``shlex.quote``d parts, with a masked form for printing.

Secrets never go into a command (they travel as 0600 files), but values such as paths still need
quoting, and anything printed goes through ``masked`` so a value registered as secret never shows.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Cmd:
    """A shell command assembled from parts. ``str(cmd)`` is what runs; ``masked`` is what prints."""

    parts: tuple[str, ...]
    secrets: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, *argv: str, secrets: Iterable[str] = ()) -> "Cmd":
        return cls(tuple(str(a) for a in argv), frozenset(s for s in secrets if s))

    def __str__(self) -> str:
        return " ".join(shlex.quote(p) for p in self.parts)

    @property
    def masked(self) -> str:
        return mask(str(self), self.secrets)


def quote(value: object) -> str:
    """``shlex.quote`` for any value."""
    return shlex.quote(str(value))


def join(argv: Iterable[object]) -> str:
    """Quote every element and join with spaces."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text
