"""YAML loading with errors that name the file, plus the small type checks the schemas share.

Every YAML file fedctl reads goes through ``load_yaml``: a missing file, a syntax error (with line and
column), a duplicate key in any mapping, or a top level that is not a mapping is a ConfigError naming
the file. PyYAML's SafeLoader silently keeps the last of two equal keys; ``UniqueKeyLoader`` refuses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from fedctl.errors import ConfigError

KeyPath = tuple[str | int, ...]


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key appearing twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", key_node.start_mark,
                ) from None
            if key in seen:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {problem}"


def parse_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document with duplicate keys rejected; errors name ``source``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, _yaml_problem(exc)) from None


def load_yaml(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping. An empty file is an empty mapping.

    ``name`` is how messages call the file (default: ``path`` as given)."""
    p = Path(path)
    name = name or str(path)
    if not p.exists():
        raise ConfigError(name, None, "file does not exist")
    if not p.is_file():
        raise ConfigError(name, None, "is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, None, f"cannot be read: {exc}") from None
    data = parse_yaml_text(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(name, None, f"the top level must be a mapping of keys, not {type_name(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(name, None, f"key {key!r} must be a string")
    return data


# --- small type checks shared by the schemas -------------------------------------------------------


def type_name(value: Any) -> str:
    """A YAML-ish name for the type of ``value``, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_keys(file: str | None, path: KeyPath, data: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Reject keys of ``data`` not in ``valid``; the error lists the valid keys."""
    for key in data:
        if key not in valid:
            raise ConfigError(file, (*path, str(key)), "unknown key", list(valid))


def require_mapping(file: str | None, path: KeyPath, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(file, path, f"must be a mapping, not {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(file, (*path, str(key)), "keys must be strings")
    return value


def check_str(file: str | None, path: KeyPath, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(file, path, f"must be a string, not {type_name(value)}")
    if not allow_empty and not value.strip():
        raise ConfigError(file, path, "must not be empty")
    return value


def check_int(
    file: str | None, path: KeyPath, value: Any, minimum: int | None = None, maximum: int | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(file, path, f"must be an integer, not {type_name(value)} ({value!r})")
    if minimum is not None and value < minimum:
        raise ConfigError(file, path, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(file, path, f"must be <= {maximum}, got {value}")
    return value


def check_number(
    file: str | None, path: KeyPath, value: Any, minimum: float | None = None, exclusive_min: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, path, f"must be a number, not {type_name(value)} ({value!r})")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(file, path, f"must be a finite number, got {value}")
    if minimum is not None:
        if exclusive_min and value <= minimum:
            raise ConfigError(file, path, f"must be > {minimum:g}, got {value:g}")
        if not exclusive_min and value < minimum:
            raise ConfigError(file, path, f"must be >= {minimum:g}, got {value:g}")
    return value


def check_choice(file: str | None, path: KeyPath, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(file, path, f"{value!r} is not one of the choices", choices)
    return value
