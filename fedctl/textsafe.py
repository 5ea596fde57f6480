"""Text that is safe to show on a terminal: control and invisible format characters escaped.

A value typed by a user (a ``--set`` override), read from a YAML file or from a host's log can carry
escape sequences; printed as they are they can move the cursor, recolour or clear the screen, or
hide the rest of a message. The Unicode bidi overrides and isolates do the same without any escape
sequence: ``U+202E`` shows what follows right to left, so ``hosts[1]\\u202e...`` can read as a
different key or name than the one meant. Everything fedctl prints in an error goes through
``printable``; one-line previews of values (``fedctl.config.loader.preview``) through ``escape_control``.
"""

from __future__ import annotations

import re

# DEL and the C1 range (which some terminals also obey); the marks that change the direction of what
# follows (LRM/RLM, the Arabic letter mark, bidi embeddings/overrides/isolates and their pops);
# zero-width characters and the line/paragraph separators, which make two values look alike or break a
# line where none shows. Plus the C0 controls, all of them or all but tab and newline.
_BEYOND_C0 = r"\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_UNSAFE = re.compile(rf"[\x00-\x1f{_BEYOND_C0}]")
_UNSAFE_BUT_LINES = re.compile(rf"[\x00-\x08\x0b-\x1f{_BEYOND_C0}]")


def _escape(match: re.Match[str]) -> str:
    # Python's own escapes: \n, \t, \x1b, \u202e (a reader can paste them into a YAML double-quoted string)
    return match.group().encode("unicode_escape").decode("ascii")


def escape_control(text: str) -> str:
    """``text`` on one line with every unsafe character written as an escape (``\\x1b``, ``\\n``,
    ``\\u202e``): for a value quoted inside a message."""
    return _UNSAFE.sub(_escape, text)


def printable(text: str) -> str:
    """``text`` with every unsafe character but tab and newline written as an escape: for a whole
    (possibly multi-line) message."""
    return _UNSAFE_BUT_LINES.sub(_escape, text)
