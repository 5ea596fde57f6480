"""Payload manifests (``payloads/<name>/payload.yaml``): what fedctl pushes to hosts and how it runs it.

fedctl knows a payload only through this manifest (format in docs/contracts.md). The manifest is
validated completely when loaded: unknown keys, missing commands and unknown ``{placeholders}`` in any
template are ConfigErrors naming payload.yaml and the key path. ``render`` fills a template with
``shlex.quote``d values, so a value is never interpreted by the remote shell.
"""

from __future__ import annotations

import hashlib
import importlib.util
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fedctl
from fedctl.config.loader import (
    KeyPath,
    check_keys,
    check_str,
    load_yaml,
    require_mapping,
    type_name,
)
from fedctl.errors import ConfigError, PayloadError
from fedctl.model import name_problem, rel_path_problem
from fedctl.shell import quote

MANIFEST = "payload.yaml"
PLACEHOLDERS = (
    "python", "payload_dir", "run_dir", "config", "token_file", "bind", "port",
    "server_address", "client_ids", "process", "workdir", "run_id",
)
TOP_KEYS = ("name", "description", "files", "requirements", "config", "server", "client")
REQUIREMENT_KEYS = ("python", "imports", "pip", "pip_gpu")
CONFIG_KEYS = ("validator", "keys", "files")
SERVER_KEYS = ("command", "ready_file", "log", "metrics", "results", "resume_flag", "reports_clients", "share")
CLIENT_KEYS = ("command", "log")
_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".mypy_cache"}

Validator = Callable[[dict[str, Any]], dict[str, Any]]


def repo_payloads_dir() -> Path:
    """The built-in payloads: ``fedctl/payloads/``, package data that every install carries."""
    return Path(fedctl.__file__).resolve().parent / "payloads"


def payload_dirs(cwd: Path | None = None) -> dict[str, Path]:
    """Every payload found by name: ``./payloads/<name>`` first (a project's own), then the
    built-in ones. The first of two with one name wins, as ``resolve_payload`` would pick it."""
    found: dict[str, Path] = {}
    for root in (Path(cwd or Path.cwd()) / "payloads", repo_payloads_dir()):
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if (p / MANIFEST).is_file():
                    found.setdefault(p.name, p.resolve())
    return found


def available_payloads(cwd: Path | None = None) -> list[str]:
    """Names of the payload folders in ``./payloads`` and the built-in ones."""
    return sorted(payload_dirs(cwd))


def resolve_payload(name_or_path: str, base_dir: str | Path | None = None, cwd: Path | None = None) -> Path:
    """Find a payload folder: a path (absolute, or relative to ``base_dir`` or cwd) or a bare name
    looked up in ``./payloads/<name>`` then the repository's ``payloads/``. Raises PayloadError."""
    cwd = Path(cwd or Path.cwd())
    raw = Path(name_or_path).expanduser()
    looks_like_path = raw.is_absolute() or "/" in name_or_path or name_or_path.startswith(".")
    candidates: list[Path] = []
    if raw.is_absolute():
        candidates.append(raw)
    else:
        if base_dir is not None:
            candidates.append(Path(base_dir) / raw)
        candidates.append(cwd / raw)
        if not looks_like_path:
            candidates += [cwd / "payloads" / name_or_path, repo_payloads_dir() / name_or_path]
    for c in candidates:
        if (c / MANIFEST).is_file():
            return c.resolve()
    if looks_like_path:
        tried = ", ".join(str(c) for c in candidates)
        raise PayloadError(f"payload {name_or_path!r}: no {MANIFEST} found (looked in {tried})")
    avail = available_payloads(cwd)
    raise PayloadError(
        f"unknown payload {name_or_path!r} (available: {', '.join(avail) or 'none found'})",
        hint="give the name of a folder under payloads/ or a path to a folder holding payload.yaml",
    )


@dataclass(frozen=True)
class PayloadFile:
    """One file to push: path relative to the payload folder (POSIX), local path, content hash, mode."""

    rel_path: str
    abs_path: Path
    sha256: str
    mode: int


@dataclass(frozen=True)
class ServerSpec:
    command: str
    ready_file: str = "{run_dir}/server.ready"
    log: str = "{run_dir}/server.log"
    metrics: str = "{run_dir}/metrics.jsonl"
    results: tuple[str, ...] = ()
    resume_flag: str | None = None
    #: the server writes ``connected`` (clients it has heard from) into status.json while it waits
    #: for them: start then waits until all are there, so a client that cannot reach the server
    #: fails start (with the logs that say why), not a minute into watch
    reports_clients: bool = False
    #: small files the server writes into its run dir before it is ready (a run CA's certificate)
    #: that fedctl copies, under the same name, into every client host's run dir before the
    #: clients start: over fedctl's own SSH connections, so no client has to trust the network
    share: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientSpec:
    command: str
    log: str = "{run_dir}/client-{process}.log"


@dataclass(frozen=True)
class PayloadManifest:
    """A validated payload.yaml. ``dir`` is the absolute payload folder."""

    dir: Path
    name: str
    description: str
    file_globs: tuple[str, ...]
    python_requirement: str | None
    imports: tuple[str, ...]
    config_keys: tuple[str, ...]
    validator: str | None  # "relative/file.py:function"
    server: ServerSpec
    client: ClientSpec
    #: experiment key paths whose values may name local files (``data.path``, ``model`` as
    #: ``file.py:fn``): fedctl ships those files to the hosts and rewrites the values
    config_files: tuple[str, ...] = ()
    #: what ``pip install`` gives a host a working environment (``fedctl.hostenv``): on a host
    #: without a GPU, and with one (e.g. tensorflow-cpu vs tensorflow[and-cuda])
    pip: tuple[str, ...] = ()
    pip_gpu: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.dir / MANIFEST

    def files(self) -> list[PayloadFile]:
        """Every file to push, sorted by relative path; payload.yaml always included.

        A glob matching no file is an error (a typo would otherwise ship a payload missing a part).
        """
        found: dict[str, Path] = {MANIFEST: self.path}
        root = self.dir.resolve()
        for i, pattern in enumerate(self.file_globs):
            matched = 0
            for p in sorted(root.glob(pattern)):
                if not p.is_file():
                    continue
                rel = p.relative_to(root)
                if any(part in _SKIP_DIRS for part in rel.parts[:-1]) or p.suffix in (".pyc", ".pyo"):
                    continue
                real = p.resolve()
                if root not in real.parents and real != root:
                    raise ConfigError(str(self.path), ("files", i), f"{rel} points outside the payload folder")
                problem = rel_path_problem(rel.as_posix())
                if problem:  # it becomes a path on every host
                    raise ConfigError(str(self.path), ("files", i), f"file {problem}; rename it")
                found[rel.as_posix()] = p
                matched += 1
            if matched == 0:
                raise ConfigError(str(self.path), ("files", i), f"glob {pattern!r} matches no file in {root}")
        out = []
        for rel in sorted(found):
            p = found[rel]
            out.append(PayloadFile(rel, p, sha256_file(p), p.stat().st_mode & 0o777))
        return out

    def render(self, template: str, **values: Any) -> str:
        """Fill ``template``'s placeholders with shell-quoted values (lists become comma lists)."""
        return _render(template, values, quoted=True, where=f"{self.path}")

    def render_path(self, template: str, **values: Any) -> str:
        """Fill a file-path template (ready_file, log, ...) without quoting: the result is a path."""
        return _render(template, values, quoted=False, where=f"{self.path}")

    def load_validator(self) -> Validator | None:
        """Import the payload's pure-python config validator from its file; None when there is none."""
        if self.validator is None:
            return None
        rel, _, func = self.validator.partition(":")
        file = (self.dir / rel).resolve()
        where = f"{self.path}: config.validator {self.validator!r}"
        if not file.is_file():
            raise PayloadError(f"{where}: file {file} does not exist")
        module_name = f"_fedctl_payload_{self.name}_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise PayloadError(f"{where}: cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        # The validator may import its siblings (``from fedtf import defaults``): make the payload
        # folder importable only while it loads.
        sys.path.insert(0, str(self.dir))
        try:
            spec.loader.exec_module(module)
        except (ImportError, SyntaxError) as exc:
            raise PayloadError(f"{where}: importing {file} failed: {exc}") from exc
        finally:
            try:
                sys.path.remove(str(self.dir))
            except ValueError:
                pass
        fn = getattr(module, func, None)
        if not callable(fn):
            raise PayloadError(f"{where}: {file} has no function {func!r}")
        return fn


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (payload files and shipped data sets alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def template_fields(template: str) -> list[str]:
    """The placeholder names used in ``template``; ValueError for a malformed template."""
    names = []
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{field}}} may not carry a format spec or conversion")
        if not field.isidentifier():
            raise ValueError(f"placeholder {{{field}}} is not a plain name")
        names.append(field)
    return names


def _render(template: str, values: dict[str, Any], quoted: bool, where: str) -> str:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise PayloadError(f"{where}: template {template!r}: {exc}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise PayloadError(
            f"{where}: template {template!r} uses unknown placeholder(s) {', '.join(unknown)}"
            f" (valid: {', '.join(PLACEHOLDERS)})"
        )
    missing = sorted({f for f in fields if f not in values or values[f] is None})
    if missing:
        raise PayloadError(f"{where}: no value given for placeholder(s) {', '.join(missing)} in {template!r}")
    subs = {}
    for f in fields:
        v = values[f]
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        subs[f] = quote(v) if quoted else str(v)
    return template.format(**subs)


def load_manifest(directory: str | Path) -> PayloadManifest:
    """Load and validate ``<directory>/payload.yaml``."""
    d = Path(directory).expanduser().resolve()
    file = str(d / MANIFEST)
    raw = load_yaml(file)
    check_keys(file, (), raw, TOP_KEYS)

    name = check_str(file, ("name",), raw.get("name", d.name))
    problem = name_problem(name)
    if problem:  # the payload lives in <workdir>/payloads/<name> on every host
        where = "" if "name" in raw else " (the folder's name, as payload.yaml sets no name)"
        raise ConfigError(file, ("name",), f"payload name {problem}{where}")
    description = raw.get("description") or ""
    check_str(file, ("description",), description, allow_empty=True)

    globs = raw.get("files")
    if globs is None:
        raise ConfigError(file, ("files",), "is required: a list of globs relative to the payload folder")
    globs = _str_list(file, ("files",), globs)
    for i, g in enumerate(globs):
        if Path(g).is_absolute() or ".." in Path(g).parts:
            raise ConfigError(file, ("files", i), f"glob {g!r} must stay inside the payload folder")

    req = require_mapping(file, ("requirements",), raw.get("requirements"))
    check_keys(file, ("requirements",), req, REQUIREMENT_KEYS)
    py_req = req.get("python")
    if py_req is not None:
        py_req = check_str(file, ("requirements", "python"), str(py_req))
        from fedctl.facts import python_specifier  # packaging, only for a manifest that has a spec

        python_specifier(py_req, file)  # an invalid spec is an error when the manifest is read
    imports = _str_list(file, ("requirements", "imports"), req.get("imports") or [])
    pip_reqs = _str_list(file, ("requirements", "pip"), req.get("pip") or [])
    pip_gpu = _str_list(file, ("requirements", "pip_gpu"), req.get("pip_gpu") or []) or pip_reqs

    cfg = require_mapping(file, ("config",), raw.get("config"))
    check_keys(file, ("config",), cfg, CONFIG_KEYS)
    validator = cfg.get("validator")
    if validator is not None:
        validator = check_str(file, ("config", "validator"), validator)
        rel, sep, func = validator.partition(":")
        if not sep or not rel or not func.isidentifier():
            raise ConfigError(
                file, ("config", "validator"),
                f"{validator!r} must look like 'path/to/file.py:function'",
            )
    keys = _str_list(file, ("config", "keys"), cfg.get("keys") or [])
    config_files = _str_list(file, ("config", "files"), cfg.get("files") or [])
    for j, kp in enumerate(config_files):
        if kp.split(".")[0] not in keys:
            raise ConfigError(file, ("config", "files", j), f"{kp!r} is not under one of config.keys", keys)

    server_raw = require_mapping(file, ("server",), raw.get("server"))
    check_keys(file, ("server",), server_raw, SERVER_KEYS)
    if not server_raw.get("command"):
        raise ConfigError(file, ("server", "command"), "is required (the command that starts the server)")
    server_kwargs: dict[str, Any] = {}
    for key in SERVER_KEYS:
        if key not in server_raw or server_raw[key] is None:
            continue
        kp: KeyPath = ("server", key)
        if key == "results":
            results = _str_list(file, kp, server_raw[key])
            for j, t in enumerate(results):
                _check_template(file, (*kp, j), t)
            server_kwargs[key] = tuple(results)
        elif key == "share":
            shared = _str_list(file, kp, server_raw[key])
            for j, t in enumerate(shared):
                shared_name = t[len("{run_dir}/"):] if t.startswith("{run_dir}/") else ""
                if not shared_name or "{" in shared_name or name_problem(shared_name):
                    raise ConfigError(file, (*kp, j), f"{t!r} must be {{run_dir}}/<a plain file name> (a file the"
                                      " server writes in its run dir, copied under that name to the clients)")
            server_kwargs[key] = tuple(shared)
        elif key == "resume_flag":
            server_kwargs[key] = check_str(file, kp, server_raw[key])
        elif key == "reports_clients":
            if not isinstance(server_raw[key], bool):
                raise ConfigError(file, kp, f"must be true or false, not {type_name(server_raw[key])}")
            server_kwargs[key] = server_raw[key]
        else:
            server_kwargs[key] = _check_template(file, kp, server_raw[key])

    client_raw = require_mapping(file, ("client",), raw.get("client"))
    check_keys(file, ("client",), client_raw, CLIENT_KEYS)
    if not client_raw.get("command"):
        raise ConfigError(file, ("client", "command"), "is required (the command that starts a client process)")
    client_kwargs = {
        key: _check_template(file, ("client", key), client_raw[key])
        for key in CLIENT_KEYS if client_raw.get(key) is not None
    }

    return PayloadManifest(
        dir=d,
        name=name,
        description=description,
        file_globs=tuple(globs),
        python_requirement=py_req,
        imports=tuple(imports),
        config_keys=tuple(keys),
        config_files=tuple(config_files),
        pip=tuple(pip_reqs),
        pip_gpu=tuple(pip_gpu),
        validator=validator,
        server=ServerSpec(**server_kwargs),
        client=ClientSpec(**client_kwargs),
    )


def _str_list(file: str, path: KeyPath, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(file, path, f"must be a list of strings, not {type_name(value)}")
    return [check_str(file, (*path, i), v) for i, v in enumerate(value)]


def _check_template(file: str, path: KeyPath, value: Any) -> str:
    template = check_str(file, path, value)
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ConfigError(file, path, str(exc), PLACEHOLDERS) from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise ConfigError(file, path, f"unknown placeholder {{{f}}}", PLACEHOLDERS)
    return template


__all__ = [
    "PLACEHOLDERS", "ClientSpec", "PayloadFile", "PayloadManifest", "ServerSpec", "available_payloads",
    "load_manifest", "repo_payloads_dir", "resolve_payload", "template_fields",
]
