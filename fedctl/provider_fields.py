"""The typed part of a host record that belongs to its provider: its settings and its machine.

Two frozen types, persisted in the state file with the host and loaded back as the same objects:

- ``ProviderSettings``: what a machine-creating provider needs to create this host's machine (for
  aws: region, instance type, image, spot ...). Each provider subclasses it and registers the
  subclass under its name (``register_settings``); the state file stores ``{"type": name, ...}``.
- ``MachineRecord``: what the provider's lifecycle journaled about the host's machine: its id once
  known, the origin tag it carries, the step begun and not yet confirmed (the intent), and the
  steps confirmed. Teardown needs nothing else: a machine whose create was begun but never
  confirmed is found by its tags.

This module sits beside ``fedctl.model`` and imports nothing of fedctl at import time, so the
model, the state and the connectors can use it without a cycle. Loading a settings type that is
not registered yet imports the provider registry (``fedctl.providers``, light), whose modules
register theirs.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, TypeVar

_SETTINGS: dict[str, type["ProviderSettings"]] = {}
S = TypeVar("S", bound=type["ProviderSettings"])


@dataclass(frozen=True)
class ProviderSettings:
    """Base of a provider's typed per-host settings. Subclasses are frozen dataclasses whose fields
    are JSON values or tuples of them (tuples come back as tuples)."""

    provider: ClassVar[str] = ""
    #: the key (after ``<provider>.``) under which old state files kept the machine's id
    legacy_id_key: ClassVar[str | None] = None
    #: the fields that make it another machine when they change (None: every field); the others
    #: (a timeout, tags) may be corrected on a run whose machine exists
    machine_fields: ClassVar[tuple[str, ...] | None] = None

    def machine_identity(self) -> dict[str, Any]:
        """The settings that say which machine this is (``machine_fields``), by name."""
        names = self.machine_fields or tuple(f.name for f in dataclasses.fields(self))
        return {n: getattr(self, n) for n in names}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, tagged with the provider's name."""
        return {"type": self.provider, **_jsonable(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProviderSettings":
        """The settings ``to_dict`` wrote (tuple fields restored, unknown keys refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"type"}
        if unknown:
            raise ValueError(f"{cls.provider} settings: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**{k: _tuples(v) for k, v in data.items() if k != "type"})

    @classmethod
    def from_legacy_extra(cls, extra: Mapping[str, str]) -> "ProviderSettings | None":
        """Settings from an old state file's ``HostInfo.extra`` strings (None: none were there)."""
        return None


def register_settings(name: str) -> Callable[[S], S]:
    """Class decorator: ``name``'s settings type (registering a name twice is a bug)."""

    def deco(cls: S) -> S:
        if name in _SETTINGS:
            raise RuntimeError(f"provider settings {name!r} registered twice")
        cls.provider = name
        _SETTINGS[name] = cls
        return cls

    return deco


def settings_class(name: str) -> type[ProviderSettings]:
    """The settings type registered as ``name`` (the provider modules are imported to find it)."""
    if name not in _SETTINGS:
        importlib.import_module("fedctl.providers").load_builtins()
    try:
        return _SETTINGS[name]
    except KeyError:
        raise ValueError(f"unknown provider settings {name!r}; known: {', '.join(sorted(_SETTINGS))}") from None


def settings_to_dict(settings: ProviderSettings | None) -> dict[str, Any] | None:
    """JSON-able form of a host's provider settings (None stays None)."""
    return None if settings is None else settings.to_dict()


def settings_from_dict(data: Mapping[str, Any] | None) -> ProviderSettings | None:
    """The settings ``settings_to_dict`` wrote."""
    if data is None:
        return None
    return settings_class(str(data.get("type"))).from_dict(data)


@dataclass(frozen=True)
class MachineRecord:
    """What a machine-creating provider journaled about one host's machine.

    ``intent`` is set just before a step runs and cleared when it is confirmed (then the step is
    appended to ``done``), so a state saved at any moment says what may exist: a ``create`` intent
    without an ``id`` means a machine may exist that only its tags can find."""

    id: str | None = None  # the machine's id at the provider, once the create step returned it
    origin: str | None = None  # the origin tag it was (or is being) created with
    intent: str | None = None  # the step begun and not confirmed yet
    done: tuple[str, ...] = ()  # the steps confirmed, in order (a step run twice appears once)

    def begin(self, step: str, origin: str | None = None) -> "MachineRecord":
        """This record with ``step`` intended."""
        return dataclasses.replace(self, intent=step, origin=origin or self.origin)

    def confirm(self, step: str, machine_id: str | None = None) -> "MachineRecord":
        """This record with ``step`` confirmed (and the machine's id, when the step made it known)."""
        done = self.done if step in self.done else (*self.done, step)
        return dataclasses.replace(self, intent=None, done=done, id=machine_id or self.id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"id": self.id, "origin": self.origin, "intent": self.intent, "done": list(self.done)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "MachineRecord | None":
        """The record ``to_dict`` wrote (None stays None)."""
        if data is None:
            return None
        return cls(id=data.get("id"), origin=data.get("origin"), intent=data.get("intent"),
                   done=tuple(data.get("done", ())))


#: the legacy ``HostInfo.extra`` key of the origin tag a created machine carries
LEGACY_ORIGIN_KEY = "origin"


def from_legacy_extra(extra: Mapping[str, str]) -> tuple[ProviderSettings | None, MachineRecord | None, dict[str, str]]:
    """Split an old state file's ``extra`` (``aws.*`` strings, ``origin``) into typed settings, a
    machine record and what is left (connector options such as ``proxy_jump`` stay in ``extra``)."""
    for name in sorted({key.split(".", 1)[0] for key in extra if "." in key}):
        try:
            cls = settings_class(name)
        except ValueError:
            continue  # not a provider's prefix: left as it is
        settings = cls.from_legacy_extra(extra)
        if settings is None:
            continue
        machine_id = extra.get(f"{name}.{cls.legacy_id_key}") or None if cls.legacy_id_key else None
        machine = MachineRecord(id=machine_id, origin=extra.get(LEGACY_ORIGIN_KEY) or None,
                                done=("create",) if machine_id else ())
        rest = {k: v for k, v in extra.items() if not k.startswith(f"{name}.") and k != LEGACY_ORIGIN_KEY}
        return settings, machine, rest
    return None, None, dict(extra)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
