"""YAML loading with errors that name the file, plus the small type checks the schemas share.

Every YAML file fedctl reads goes through ``load_yaml``: a missing file, a syntax error (with line and
column), a duplicate key in any mapping, or a top level that is not a mapping is a ConfigError naming
the file. PyYAML's SafeLoader silently keeps the last of two equal keys; ``UniqueKeyLoader`` refuses.

Input is bounded before it can cost much: a file over ``MAX_FILE_BYTES`` is refused unread, nesting
deeper than ``MAX_YAML_DEPTH`` is refused while composing, and a document that would hold more than
``MAX_YAML_VALUES`` values once its aliases are expanded (an "alias bomb": 300 bytes can stand for
billions of values) is refused before anything is constructed. Messages show values only through
``preview``, which is short whatever the value's size and escapes control characters.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from fedctl.errors import ConfigError
from fedctl.textsafe import escape_control

KeyPath = tuple[str | int, ...]

#: Largest YAML file fedctl reads. The pure-python parser takes about 3 s per MiB; an inventory
#: written out one host per line is about 100 bytes a host, so 1 MiB holds the ``MAX_HOSTS`` limit.
MAX_FILE_BYTES = 1024 * 1024
#: Values (scalars, lists, mappings) a document may hold, every alias counted each time it is used.
#: An inventory of 10,000 hosts written out one by one, each with ``<<: *defaults``, holds ~300,000.
MAX_YAML_VALUES = 500_000
#: Characters of text a document may stand for once its aliases are expanded, and (through
#: ``fedctl.config.textsize``) an inventory once its ranges and defaults are applied to every host. A 1 MiB
#: string used through an alias or shared by a 10,000-host range stands for 10 GB once printed,
#: stored or copied per host; the most any real file needs is a few MiB.
MAX_TEXT_CHARS = 64 * 1024 * 1024
#: Nesting depth; fedctl's own files go 4 levels deep. Deeper input would exhaust Python's stack.
MAX_YAML_DEPTH = 64
#: Characters an integer may be written with. Past ~309 digits an int has no float value (so a number
#: check would raise OverflowError), past 4300 Python refuses to read it; no setting needs 100.
MAX_INT_CHARS = 100
#: Characters of a value an error message shows.
PREVIEW_CHARS = 80

_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 3
_PREVIEW.maxlist = _PREVIEW.maxtuple = _PREVIEW.maxset = _PREVIEW.maxfrozenset = 5
_PREVIEW.maxdict = 5
_PREVIEW.maxstring = PREVIEW_CHARS
_PREVIEW.maxother = PREVIEW_CHARS
_PREVIEW.maxlong = 40


def safe_text(text: str, limit: int = PREVIEW_CHARS) -> str:
    """``text`` as it may appear in a message: control characters escaped, cut to ``limit`` chars."""
    text = escape_control(text)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A short ``repr`` of ``value`` for error messages, safe to print on a terminal.

    ``reprlib`` looks at a few items of a few levels only, so a huge value (or an alias-shared one
    that would expand to gigabytes) costs no more than what is shown."""
    try:
        text = _PREVIEW.repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type_name(value)} too large to show>"
    return safe_text(text, limit)


class YamlLimitError(yaml.MarkedYAMLError):
    """The YAML is well-formed but past one of fedctl's size limits (depth, expanded values)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key appearing twice in one mapping, and bounded input.

    Also refuses nesting deeper than ``MAX_YAML_DEPTH``, documents whose aliases expand past
    ``MAX_YAML_VALUES`` values, recursive aliases, integers longer than ``MAX_INT_CHARS`` and
    scalars Python cannot build (a date of month 13), each with the line and column, instead of a
    traceback."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._document_anchors: dict[str, yaml.Node] = {}

    def compose_document(self) -> yaml.Node:
        # Composer.compose_document, keeping the anchors (it forgets them) so that the expansion
        # check can name the anchor that blows up.
        self.get_event()
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()
        self._document_anchors, self.anchors = self.anchors, {}
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # The composer recurses once per level: refuse depth before Python's stack runs out.
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(
                    problem=f"nested more than {MAX_YAML_DEPTH} levels deep",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, self._document_anchors)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} characters is too large"
                f" (at most {MAX_INT_CHARS})", node.start_mark,
            )
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            # e.g. datetime(2024, 13, 1): the value is the user's mistake, not a bug to trace back
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {safe_text(str(exc), 120)}", node.start_mark,
            ) from None

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
                    f"found duplicate key {preview(key)} (first defined on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, anchors: Mapping[str, yaml.Node]) -> None:
    """Refuse a node graph whose aliases expand past ``MAX_YAML_VALUES`` values, or that contains
    itself through an alias.

    An alias is the same node object reached twice, so the composed graph stays as small as the
    file while its expansion grows exponentially (``&b [*a, *a, ...]``, ``&c [*b, *b, ...]``). Sizes
    are computed once per node, post-order, without recursion: the cost is linear in the file. The
    first node found too big is the innermost one, which is the one to blame."""
    size: dict[int, int] = {}
    chars: dict[int, int] = {}  # characters of text a node stands for, aliases counted in full
    open_nodes: set[int] = set()  # the current path from the root: an alias back into it is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_YAML_VALUES:
                name = next((a for a, n in anchors.items() if n is node), None)
                what = f"this value (anchor &{name})" if name else "this value"
                raise YamlLimitError(
                    problem=f"{what} holds more than {MAX_YAML_VALUES:,} values once its aliases are"
                    " expanded (each use of an alias counts in full); fedctl refuses input this"
                    " large (an 'alias bomb' would exhaust memory)",
                    problem_mark=node.start_mark,
                )
            text = len(node.value) if isinstance(node, yaml.ScalarNode) else sum(chars[id(c)] for c in _children(node))
            if text > MAX_TEXT_CHARS:
                name = next((a for a, n in anchors.items() if n is node), None)
                what = f"this value (anchor &{name})" if name else "this value"
                raise YamlLimitError(
                    problem=f"{what} stands for {text:,} characters of text once its aliases are expanded"
                    f" (each use of an alias counts in full); fedctl reads at most {MAX_TEXT_CHARS:,}",
                    problem_mark=node.start_mark,
                )
            size[key], chars[key] = total, text
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise YamlLimitError(
                    problem="an alias refers to a value that contains it (a recursive structure);"
                    " fedctl's files never need one",
                    problem_mark=child.start_mark,
                )
            if id(child) not in size:
                stack.append((child, False))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        # its str() spans two lines and names "<unicode string>"; say it in one
        return (f"not valid YAML: character #x{exc.character:04x} at position {exc.position + 1}"
                f" is not allowed ({exc.reason}; write it as an escape in double quotes)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    problem = safe_text(problem, 300)  # PyYAML quotes most of what it shows, but not all of it
    if isinstance(exc, YamlLimitError):
        return f"refused at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"not valid YAML: {problem}"


def parse_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document with duplicate keys rejected; errors name ``source``.

    Text longer than ``MAX_FILE_BYTES`` characters is refused unparsed (``--set`` values come here
    too)."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            source, None, f"holds {len(text):,} characters; at most {MAX_FILE_BYTES:,} are read"
        )
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, _yaml_problem(exc)) from None


def _too_big(size: int) -> str:
    return (
        f"is {size:,} bytes; fedctl reads YAML files of at most {MAX_FILE_BYTES:,} bytes"
        " (for many hosts write one entry with a range, e.g. name: fl-client-{001..500})"
    )


def load_yaml(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping. An empty file is an empty mapping.

    ``name`` is how messages call the file (default: ``path`` as given). A file over
    ``MAX_FILE_BYTES`` is refused before it is read."""
    p = Path(path)
    name = name or str(path)
    if not p.exists():
        raise ConfigError(name, None, "file does not exist")
    if not p.is_file():
        raise ConfigError(name, None, "is not a file")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(name, None, _too_big(size))
        with p.open(encoding="utf-8") as f:
            # read one past the limit: a file that grew since stat() is still caught
            text = f.read(MAX_FILE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, None, f"cannot be read: {safe_text(str(exc), 200)}") from None
    if len(text) > MAX_FILE_BYTES:  # it grew since stat()
        raise ConfigError(name, None, _too_big(len(text.encode("utf-8"))))
    data = parse_yaml_text(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(name, None, f"the top level must be a mapping of keys, not {type_name(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(name, None, f"key {preview(key)} must be a string")
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


def key_text(key: Any) -> str:
    """A mapping key as it may appear in a key path: escaped and short (keys come from the user)."""
    return safe_text(key, 40) if isinstance(key, str) else preview(key, 40)


def check_keys(file: str | None, path: KeyPath, data: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Reject keys of ``data`` not in ``valid``; the error lists the valid keys."""
    for key in data:
        if key not in valid:
            raise ConfigError(file, (*path, key_text(key)), "unknown key", list(valid))


def require_mapping(file: str | None, path: KeyPath, value: Any) -> dict[str, Any]:
    """``value`` as a mapping with string keys; null is an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(file, path, f"must be a mapping, not {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(file, (*path, key_text(key)), "keys must be strings")
    return value


def check_str(file: str | None, path: KeyPath, value: Any, allow_empty: bool = False) -> str:
    """``value`` as a string; blank is refused unless ``allow_empty``."""
    if not isinstance(value, str):
        raise ConfigError(file, path, f"must be a string, not {type_name(value)}")
    if not allow_empty and not value.strip():
        raise ConfigError(file, path, "must not be empty")
    return value


def check_int(
    file: str | None, path: KeyPath, value: Any, minimum: int | None = None, maximum: int | None = None,
) -> int:
    """``value`` as an int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(file, path, f"must be an integer, not {type_name(value)} ({preview(value)})")
    if minimum is not None and value < minimum:
        raise ConfigError(file, path, f"must be >= {minimum}, got {preview(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(file, path, f"must be <= {maximum}, got {preview(value)}")
    return value


def check_number(
    file: str | None, path: KeyPath, value: Any, minimum: float | None = None, exclusive_min: bool = False,
) -> float:
    """``value`` as a finite float, at least (or above, with ``exclusive_min``) ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, path, f"must be a number, not {type_name(value)} ({preview(value)})")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float is not finite either
        raise ConfigError(file, path, f"must be a finite number, got {preview(value)}") from None
    if math.isnan(value) or math.isinf(value):
        raise ConfigError(file, path, f"must be a finite number, got {value}")
    if minimum is not None:
        if exclusive_min and value <= minimum:
            raise ConfigError(file, path, f"must be > {minimum:g}, got {value:g}")
        if not exclusive_min and value < minimum:
            raise ConfigError(file, path, f"must be >= {minimum:g}, got {value:g}")
    return value


def check_choice(file: str | None, path: KeyPath, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; the error lists them."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(file, path, f"{preview(value)} is not one of the choices", choices)
    return value
