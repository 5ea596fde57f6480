"""Brace ranges in inventory values: ``fl-client-{01..10}`` -> fl-client-01 ... fl-client-10.

One range per value, integers only, ascending (``{3..3}`` is one item). Zero padding is kept: when
either bound is written with a leading zero, every item is padded to the wider bound's width
(``{01..10}`` -> 01..10, ``{1..10}`` -> 1..10). Anything else with a brace in it is malformed:
``{5..1}``, ``{a..z}``, ``{1..}``, ``{1,2}``, unbalanced braces, two ranges in one value.
"""

from __future__ import annotations

import re

from fedctl.config.loader import preview

_RANGE = re.compile(r"\{([0-9]+)\.\.([0-9]+)\}")
MAX_ITEMS = 10_000
#: Digits a bound may have; longer numbers are refused before ``int()`` (Python refuses past 4300).
MAX_DIGITS = 9


class RangeError(ValueError):
    """A malformed range; the message says what is wrong (the caller adds file and key path)."""


def has_range(text: str) -> bool:
    """True when ``text`` contains a brace (well-formed range or not: ``expand`` will judge)."""
    return "{" in text or "}" in text


def _parse(text: str) -> tuple[str, str, str, int, int, str] | None:
    """``(prefix, a_text, b_text, a, b, suffix)`` of the one range in ``text``; None without braces."""
    if not has_range(text):
        return None
    matches = list(_RANGE.finditer(text))
    if not matches:
        raise RangeError(
            f"malformed range in {preview(text)}: expected {{A..B}} with integers A <= B, e.g. {{01..10}}"
        )
    if len(matches) > 1:
        raise RangeError(f"only one range per value is allowed, {preview(text)} has {len(matches)}")
    m = matches[0]
    prefix, suffix = text[: m.start()], text[m.end():]
    if has_range(prefix) or has_range(suffix):
        raise RangeError(f"unbalanced or stray brace in {preview(text)}")
    a_text, b_text = m.group(1), m.group(2)
    if len(a_text) > MAX_DIGITS or len(b_text) > MAX_DIGITS:
        raise RangeError(f"range bounds in {preview(text)} may have at most {MAX_DIGITS} digits")
    a, b = int(a_text), int(b_text)
    if a > b:
        raise RangeError(
            f"range {{{a_text}..{b_text}}} in {preview(text)} runs backwards (start must be <= end)"
        )
    if b - a + 1 > MAX_ITEMS:
        raise RangeError(f"range {{{a_text}..{b_text}}} in {preview(text)} has more than {MAX_ITEMS} items")
    return prefix, a_text, b_text, a, b, suffix


def count(text: str) -> int:
    """How many items ``text`` expands to, checked like ``expand`` but without building them."""
    parsed = _parse(text)
    return 1 if parsed is None else parsed[4] - parsed[3] + 1


def expand(text: str) -> list[str]:
    """Expand the one range in ``text``; a value without braces expands to itself."""
    parsed = _parse(text)
    if parsed is None:
        return [text]
    prefix, a_text, b_text, a, b, suffix = parsed
    padded = (len(a_text) > 1 and a_text.startswith("0")) or (len(b_text) > 1 and b_text.startswith("0"))
    width = max(len(a_text), len(b_text)) if padded else 0
    return [f"{prefix}{str(i).zfill(width)}{suffix}" for i in range(a, b + 1)]
