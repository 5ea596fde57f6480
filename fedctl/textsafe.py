"""Text that is safe to show on a terminal: control characters escaped.

A value typed by a user (a ``--set`` override), read from a YAML file or from a host's log can carry
escape sequences; printed as they are they can move the cursor, recolour or clear the screen, or
hide the rest of a message. Everything fedctl prints in an error goes through ``printable``.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 range (which some terminals also obey)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but tab and newline shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
