"""Remote commands as data: built from ``shlex.quote``d parts.

Secrets never go into a command (they travel as 0600 files or on stdin), but values such as paths
still need quoting. What is kept for people to read (logs, results) is masked by
``fedctl.results.redact.redact_text``.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable, Mapping

#: a shell variable name (what env prefixes and the inventory accept); ``\Z``, not ``$``, so a
#: trailing newline is not accepted even by ``match``
ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


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


#: an explicit reference inside an ``environment:`` value: ``$NAME`` or ``${NAME}``
_ENV_REF = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def env_value_parts(value: str) -> list[tuple[str, str]]:
    """Split an ``environment:`` value into ``("text", literal)`` and ``("ref", NAME)`` parts.

    Only ``$NAME`` and ``${NAME}`` are references; every other ``$`` (``$(``, ``${X@P}``, ``$[X]``,
    ``$1``, a lone ``$``) is literal text."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ENV_REF.finditer(value):
        if m.start() > pos:
            parts.append(("text", value[pos:m.start()]))
        parts.append(("ref", m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(value):
        parts.append(("text", value[pos:]))
    return parts


def env_value_word(value: object) -> str:
    """One shell word whose expansion is ``value`` with only its ``$NAME``/``${NAME}`` references
    replaced by those variables' values (empty when unset).

    Literal text is single-quoted, so no expansion of any kind runs on it; a reference becomes
    ``"${NAME}"`` (double-quoted: no word splitting or globbing, and the variable's value is never
    parsed again). The word means the same in bash, dash, zsh and any POSIX sh."""
    text = str(value)
    if "\0" in text:
        raise ValueError("an environment value cannot hold a NUL character")
    # always quoted, even text shlex would leave bare: zsh expands an unquoted ``=cmd`` to a path
    words = [f'"${{{p}}}"' if kind == "ref" else _single_quoted(p) for kind, p in env_value_parts(text)]
    return "".join(words) or "''"


def _single_quoted(text: str) -> str:
    """``text`` in single quotes; a ``'`` inside becomes ``'"'"'`` (close, quoted quote, reopen)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def export_prefix(environment: Mapping[str, str]) -> str:
    """``export K=V; ...`` for a host's ``environment:``: every command fedctl runs there starts with
    it. Values are data (``env_value_word``): ``PATH: /opt/cuda/bin:$PATH`` still extends the remote
    PATH and a key may use an earlier key, but nothing else in a value expands or runs (bash's
    ``${X@P}`` and ``$[...]`` once turned a double-quoted value into a command)."""
    parts = []
    for k, v in environment.items():
        if not ENV_NAME.fullmatch(k):
            raise ValueError(f"invalid environment variable name {k!r}")
        parts.append(f"export {k}={env_value_word(v)};")
    return " ".join(parts) + " " if parts else ""
