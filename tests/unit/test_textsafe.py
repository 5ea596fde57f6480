"""fedctl.textsafe: the one escaper of what could change or hide text on a terminal."""

from __future__ import annotations

import pytest

from fedctl.config.loader import safe_text
from fedctl.textsafe import escape_control, printable

# each one, printed raw, recolours, moves, reorders or hides text
UNSAFE = {
    "\x1b": "\\x1b",  # ESC: starts every terminal escape sequence
    "\x00": "\\x00",
    "\r": "\\r",  # back to the start of the line: what follows overwrites what was there
    "\x7f": "\\x7f",
    "\x9b": "\\x9b",  # C1 CSI: an escape sequence in one character on some terminals
    "\u202e": "\\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202a": "\\u202a",
    "\u2066": "\\u2066",  # LEFT-TO-RIGHT ISOLATE .. POP DIRECTIONAL ISOLATE
    "\u2069": "\\u2069",
    "\u200e": "\\u200e",  # LRM / RLM
    "\u200f": "\\u200f",
    "\u061c": "\\u061c",  # ARABIC LETTER MARK
    "\u200b": "\\u200b",  # ZERO WIDTH SPACE: two names that look equal
    "\u2028": "\\u2028",  # LINE SEPARATOR
    "\ufeff": "\\ufeff",
}


@pytest.mark.parametrize("char", sorted(UNSAFE))
def test_every_unsafe_character_is_escaped(char):
    assert escape_control(f"a{char}b") == f"a{UNSAFE[char]}b"
    assert printable(f"a{char}b") == f"a{UNSAFE[char]}b"


def test_the_bidi_override_cannot_reverse_a_message():
    # "hosts[1].address: bad" with the tail shown right to left would read as a different key
    hostile = "web\u202e1[stsoh\u202c"
    assert printable(f"error: {hostile}") == "error: web\\u202e1[stsoh\\u202c"
    assert "\u202e" not in escape_control(hostile)


def test_printable_keeps_lines_and_tabs_escape_control_does_not():
    assert printable("line 1\n\tline 2") == "line 1\n\tline 2"
    assert escape_control("line 1\n\tline 2") == "line 1\\n\\tline 2"


def test_ordinary_text_is_unchanged():
    text = "h\u00f6st-\u4e2d \U0001f600 \\x1b ~/x $HOME 'q' \"d\""  # a written backslash stays as it is
    assert printable(text) == text and escape_control(text) == text


def test_config_messages_use_the_same_escaper():
    # config/loader.py had its own escaper, which let the Arabic letter mark and zero-width characters
    # through; a value quoted in a config error now goes through this one
    assert safe_text("a\u061cb\u200bc\x1b") == "a\\u061cb\\u200bc\\x1b"
