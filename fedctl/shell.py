"""Remote commands as data: built from ``shlex.quote``d parts, with a masked form for printing.

Secrets never go into a command (they travel as 0600 files), but values such as paths still need
quoting, and anything printed goes through ``masked`` so a value registered as secret never shows.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Mapping

#: a shell variable name (what env prefixes and the inventory accept)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def posix_sh(script: str) -> str:
    """``script`` run by /bin/sh, whatever the remote user's login shell is (zsh does not split an
    unquoted ``$var`` into words; fish is not a POSIX shell at all)."""
    return f"/bin/sh -c {quote(script)}"


def export_prefix(environment: Mapping[str, str]) -> str:
    """``export K="V"; ...`` for a host's ``environment:``: every command fedctl runs there starts
    with it. Double quotes keep ``$VAR`` expandable (``PATH: /opt/cuda/bin:$PATH``) while a value
    cannot end the quote or run a command (``"``, backslash, backtick and ``$(`` are escaped)."""
    parts = []
    for k, v in environment.items():
        if not ENV_NAME.match(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        escaped = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$(", "\\$(")
        parts.append(f'export {k}="{escaped}";')
    return " ".join(parts) + " " if parts else ""


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text
