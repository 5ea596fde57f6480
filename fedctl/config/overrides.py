"""``--set key.path=value`` overrides, applied to the raw config mapping before validation.

The value is parsed as a YAML scalar or flow collection (``5`` -> int, ``0.1`` -> float, ``auto`` ->
str, ``null`` -> None, ``[1, 2]`` -> list, ``{a: 1}`` -> mapping), so an override is validated exactly
like the same value written in the file. Errors name the override itself as the source, escaped and
cut short: the text comes straight from the command line and may hold control characters.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from fedctl.config.loader import parse_yaml_text, preview, safe_text
from fedctl.errors import ConfigError

#: One name of a dotted key path (``--set a.b=1``, a sweep's grid key).
KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")
#: Characters of the ``--set`` text an error message repeats.
SOURCE_CHARS = 120


def _source(text: str) -> str:
    return f"--set {safe_text(text, SOURCE_CHARS)}"


@dataclass(frozen=True)
class Override:
    """One parsed ``--set``: ``path`` is the key path, ``source`` is how errors name it."""

    path: tuple[str, ...]
    value: Any
    text: str

    @property
    def source(self) -> str:
        """How errors name this override: ``--set`` and its text, escaped and bounded."""
        return _source(self.text)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """Parse ``key.path=value``; a missing ``=``, an empty key or key part is a ConfigError."""
    source = _source(text)
    if "=" not in text:
        raise ConfigError(source, None, "expected KEY.PATH=VALUE (no '=' found)")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(source, None, "expected KEY.PATH=VALUE (the key is empty)")
    parts = tuple(key.split("."))
    for part in parts:
        if not part or not KEY_PART.fullmatch(part):
            raise ConfigError(
                source, None,
                f"key {preview(key)} is malformed: dot-separated names of letters, digits, '_' or '-'",
            )
    value = parse_yaml_text(value_text, source) if value_text.strip() else None
    return Override(path=parts, value=value, text=text)


def parse_overrides(texts: Iterable[str]) -> list[Override]:
    """Parse every ``--set`` text, in order."""
    return [parse_override(t) for t in texts]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """Return a deep copy of ``raw`` with every override set (later ones win; missing parents are
    created). Setting below a key whose value is not a mapping is a ConfigError."""
    out = copy.deepcopy(raw)
    for ov in overrides:
        node = out
        for depth, part in enumerate(ov.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(ov.path[: depth + 1])
                raise ConfigError(
                    ov.source, ov.dotted,
                    f"cannot set a key below {preview(parent)}: it holds {preview(child)}, not a mapping",
                )
            node = child
        node[ov.path[-1]] = copy.deepcopy(ov.value)
    return out


def source_for(key_path: str | None, overrides: Sequence[Override], default: str | None) -> str | None:
    """The source to blame for an error at ``key_path``: the last ``--set`` that wrote it or one of
    its parents or children, else ``default`` (the config file)."""
    if not key_path:
        return default
    for ov in reversed(overrides):
        d = ov.dotted
        if key_path == d or key_path.startswith(d + ".") or key_path.startswith(d + "[") \
                or d.startswith(key_path + "."):
            return ov.source
    return default
