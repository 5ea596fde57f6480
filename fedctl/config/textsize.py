"""A bound on the text a loaded, expanded structure stands for (an inventory's hosts).

YAML aliases are bounded while loading (``fedctl.config.loader``); ranges and defaults are applied
after it, and they too share one string object among many hosts. This counts each string every time
it is reached, the way every per-host copy (the plan, ``--json``, the state file) will.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedctl.config.loader import MAX_TEXT_CHARS, safe_text
from fedctl.errors import ConfigError


def check_text_size(file: str | None, what: str, value: Any, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse ``value`` (a loaded and expanded structure: mappings, lists, dataclasses such as an
    inventory's hosts) when its strings add up to more than ``limit`` characters, every shared string
    counted each time it is reached. ``what`` names the structure (``"hosts"``).

    Ranges and defaults give each host the same string objects, so a loaded inventory stays small in
    memory while every per-host copy fedctl makes (the plan, ``--json``, the state file) is not: a
    900 kB value on a 1,400-host range ran ``provision --dry-run --json`` out of memory. The walk
    stops as soon as the limit is passed, so refusing costs no more than the limit."""
    total = 0
    longest: tuple[int, str] = (0, what)
    stack: list[tuple[Any, str]] = [(value, what)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            total += len(item)
            if len(item) > longest[0]:
                longest = (len(item), path)
            if total > limit:
                raise ConfigError(
                    file, None,
                    f"{what} stand for more than {limit:,} characters of text once ranges and defaults are"
                    f" applied to every host (the longest value, {safe_text(longest[1], 80)}, has"
                    f" {longest[0]:,}); a value in defaults or in a range entry is repeated for each host:"
                    " keep long text out of the inventory (a file on the hosts, a setup command)",
                )
        elif isinstance(item, dict):
            stack.extend((k, f"{path} key") for k in item)
            stack.extend((v, f"{path}.{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend((getattr(item, f.name), f"{path}.{f.name}") for f in dataclasses.fields(item))
