"""``inventory.yaml``: which hosts exist and how to reach them, validated into frozen HostInfo records.

Hand-written validation rather than a pydantic model: the messages name the file and the key path in
fedctl's form (``hosts[2].port``) and list the valid keys, and ranges (``{01..10}``) have to be
expanded between parsing and typing anyway. No inventory at all means the ``local`` provider.
An inventory holds at most ``MAX_HOSTS`` hosts, counted from the ranges before they are expanded.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedctl.config import ranges
from fedctl.config.loader import (
    KeyPath,
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_str,
    load_yaml,
    preview,
    require_mapping,
    type_name,
)
from fedctl.config.textsize import check_text_size
from fedctl.connectors.base import HostInfo
from fedctl.model import CONTROL_CHARS, ENV_MODES, EnvSettings, name_problem
from fedctl.shell import ENV_NAME
from fedctl.errors import ConfigError

HOST_KEY_POLICIES = ("accept-new", "strict", "off")
ROLES = ("server", "client")
BASE_KEYS = ("provider", "defaults", "hosts")
#: keys allowed under ``defaults`` and, individually, on every host
SETTING_KEYS = (
    "user", "port", "identity_file", "password_env", "workdir", "python",
    "price_per_hour", "currency", "host_key_policy", "environment",
    "env", "env_site_packages", "wheelhouse", "setup", "keep_env",
)
HOST_KEYS = ("name", "address", "private_address", "roles", *SETTING_KEYS)
RANGE_KEYS = ("name", "address", "private_address")
#: Hosts one inventory may hold, ranges expanded. fedctl holds an SSH session per host; far beyond
#: this a fleet needs a scheduler, not an inventory file.
MAX_HOSTS = ranges.MAX_ITEMS

DEFAULT_SETTINGS: dict[str, Any] = {
    "user": None,
    "port": None,
    "identity_file": None,
    "password_env": None,
    "workdir": "~/fedctl",
    "python": "python3",
    "price_per_hour": None,
    "currency": "USD",
    "host_key_policy": "accept-new",
    "environment": {},
    "env": "auto",
    "env_site_packages": True,
    "wheelhouse": None,
    "setup": [],
    "keep_env": False,
}

_CURRENCY = re.compile(r"[A-Za-z]{3}")  # fullmatch: "$" would also match before a trailing newline


@dataclass(frozen=True)
class Inventory:
    """The validated inventory. ``path`` is None when there was none (local provider)."""

    path: str | None
    provider: str
    hosts: tuple[HostInfo, ...]

    def host(self, name: str) -> HostInfo:
        """The host called ``name``; KeyError lists the known names."""
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"no host {preview(name)} in the inventory (hosts: {known})")


def load_inventory(path: str | None) -> Inventory:
    """Load and validate ``path``; ``None`` means no inventory: the local provider with no hosts."""
    if path is None:
        return Inventory(path=None, provider="local", hosts=())
    raw = load_yaml(path)
    return parse_inventory(raw, str(path))


def provider_sections() -> tuple[tuple[str, ...], dict[str, str]]:
    """The provider names an inventory may give, and for each provider that creates its hosts the
    module that validates its section (``aws:``) into hosts. Both come from the provider registry
    (light: no cloud SDK), so a new provider is one module there and nothing here."""
    from fedctl.providers import registered

    providers = registered()
    sections = {name: cls.section_module for name, cls in providers.items() if cls.section_module}
    return tuple(sorted(providers)), sections


def parse_inventory(raw: dict[str, Any], file: str) -> Inventory:
    """Validate an already-parsed inventory mapping (``file`` is only used in messages)."""
    providers, machine_providers = provider_sections()
    check_keys(file, (), raw, (*BASE_KEYS, *sorted(machine_providers)))
    provider = check_choice(file, ("provider",), raw.get("provider", "static"), providers)
    defaults_raw = require_mapping(file, ("defaults",), raw.get("defaults"))
    hosts_raw = raw.get("hosts")
    if hosts_raw is None:
        hosts_raw = []
    if not isinstance(hosts_raw, list):
        raise ConfigError(file, ("hosts",), f"must be a list of hosts, not {type_name(hosts_raw)}")

    for section in machine_providers:
        if section in raw and section != provider:
            raise ConfigError(file, (section,), f"is only read with provider: {section} (provider is {provider})")
    if provider == "local":
        if hosts_raw:
            raise ConfigError(
                file, ("hosts",), "provider local runs everything on this machine and takes no hosts"
                " (remove hosts, or use provider: static)",
            )
        if defaults_raw:
            raise ConfigError(
                file, ("defaults",), "provider local takes no defaults (workdir, python and price are"
                " fixed for this machine); remove the section",
            )
        return Inventory(path=file, provider="local", hosts=())

    defaults = {**DEFAULT_SETTINGS, **_check_settings(file, ("defaults",), defaults_raw, SETTING_KEYS)}
    if provider in machine_providers:
        if hosts_raw:
            raise ConfigError(
                file, ("hosts",), f"provider {provider} creates its hosts: remove hosts (the {provider}"
                " section says how many and of which type)",
            )
        import importlib

        section_module = importlib.import_module(machine_providers[provider])  # light: no cloud SDK

        def make_host(name: str, address: str, roles: list[str]) -> HostInfo:
            """A host with the defaults applied, exactly as a static host would get them."""
            return _make_host(file, (provider,), {"name": name, "address": address, "roles": roles}, defaults)

        hosts = section_module.parse_section(file, raw, defaults, make_host)
        check_text_size(file, "hosts", hosts)
        return Inventory(path=file, provider=provider, hosts=tuple(hosts))
    if not hosts_raw:
        raise ConfigError(file, ("hosts",), "provider static needs at least one host")

    hosts: list[HostInfo] = []
    first_seen: dict[str, str] = {}  # host name -> key path where it was defined
    endpoints: dict[tuple[Any, ...], str] = {}
    for i, entry in enumerate(hosts_raw):
        path: KeyPath = ("hosts", i)
        entry = require_mapping(file, path, entry)
        for item in _expand_entry(file, path, entry, MAX_HOSTS - len(hosts)):
            host = _make_host(file, path, item, defaults)
            where = f"hosts[{i}]"
            if host.name in first_seen:
                raise ConfigError(
                    file, (*path, "name"),
                    f"duplicate host name {preview(host.name)} (also defined at {first_seen[host.name]});"
                    " host names must be unique",
                )
            first_seen[host.name] = where
            endpoint = (host.address, host.port, host.user, host.workdir)
            if endpoint in endpoints:
                raise ConfigError(
                    file, (*path, "address"),
                    f"host {preview(host.name)} has the same address, port, user and workdir as"
                    f" {preview(endpoints[endpoint])}; two hosts would write into the same directory"
                    " (give one a different workdir)",
                )
            endpoints[endpoint] = host.name
            hosts.append(host)
    # every path that loads an inventory (provision, exec -i, instances) is bounded in bytes, not
    # only in values: a long string shared by a host range is refused here, before anything copies it
    check_text_size(file, "hosts", hosts)
    return Inventory(path=file, provider="static", hosts=tuple(hosts))


def _check_settings(file: str, path: KeyPath, data: dict[str, Any], valid: tuple[str, ...]) -> dict[str, Any]:
    """Type-check the keys shared by ``defaults`` and hosts; returns only the keys present."""
    if "password" in data:
        raise ConfigError(
            file, (*path, "password"),
            "passwords are never stored in the inventory; set password_env to the NAME of an"
            " environment variable that holds the password (e.g. password_env: FEDCTL_PASSWORD)",
        )
    check_keys(file, path, data, valid)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SETTING_KEYS:
            continue
        kp = (*path, key)
        if key == "port":
            out[key] = None if value is None else check_int(file, kp, value, 1, 65535)
        elif key == "price_per_hour":
            out[key] = None if value is None else check_number(file, kp, value, minimum=0.0)
        elif key == "host_key_policy":
            out[key] = check_choice(file, kp, value, HOST_KEY_POLICIES)
        elif key == "password_env":
            if value is None:
                out[key] = None
                continue
            if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
                # Never echo the value: it may be the password itself.
                raise ConfigError(
                    file, kp,
                    "must be the NAME of an environment variable (letters, digits, _; not starting"
                    " with a digit); the value given does not look like one, and it may be a"
                    " password: never put a password in the inventory",
                )
            out[key] = value
        elif key == "currency":
            value = check_str(file, kp, value)
            if not _CURRENCY.fullmatch(value):
                raise ConfigError(
                    file, kp, f"must be a 3-letter currency code like USD or CNY, got {preview(value)}"
                )
            out[key] = value.upper()
        elif key in ("user", "identity_file"):
            out[key] = None if value is None else check_str(file, kp, value)
        elif key == "environment":
            out[key] = _check_environment(file, kp, value)
        elif key == "env":
            out[key] = check_choice(file, kp, value, ENV_MODES)
        elif key in ("env_site_packages", "keep_env"):
            if not isinstance(value, bool):
                raise ConfigError(file, kp, f"must be true or false, not {type_name(value)}")
            out[key] = value
        elif key == "wheelhouse":
            out[key] = None if value is None else _check_wheelhouse(file, kp, value)
        elif key == "setup":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
                raise ConfigError(file, kp, "must be a list of shell commands (strings)")
            out[key] = list(value)
        elif key == "workdir":
            out[key] = _check_workdir(file, kp, value)
        else:  # python
            out[key] = check_str(file, kp, value)
    return out


def _check_workdir(file: str, path: KeyPath, value: Any) -> str:
    """The folder fedctl works in on the host, normalised (``~/a/../b/`` -> ``~/b``): every path fedctl
    records there starts with it, and teardown removes only what lies strictly under it. Control
    characters are refused: a newline would split the output of the commands that list and remove
    fedctl's folders (``/tmp/a<newline>b``)."""
    text = check_str(file, path, value)
    if CONTROL_CHARS.search(text):
        raise ConfigError(
            file, path, f"{preview(text)} holds a control character (a newline, a tab ...);"
            " give a folder whose name has none",
        )
    return posixpath.normpath(text)


def _check_wheelhouse(file: str, path: KeyPath, value: Any) -> str:
    """A local folder of wheels (relative to the inventory's folder); checked here, pushed at provision."""
    folder = Path(check_str(file, path, value)).expanduser()
    if not folder.is_absolute():
        folder = Path(file).absolute().parent / folder
    if not folder.is_dir():
        raise ConfigError(file, path, f"{folder} is not a folder")
    if not any(folder.glob("*.whl")) and not any(folder.glob("*.tar.gz")):
        raise ConfigError(file, path, f"{folder} holds no wheels (*.whl) or source archives")
    return str(folder)


def _check_environment(file: str, path: KeyPath, value: Any) -> dict[str, str]:
    """``environment:``: variables exported for every command fedctl runs on the host (PATH,
    CUDA_HOME, HF_HOME ...). Names are shell variable names; values are strings (numbers are
    taken as their text). A value is data: only an explicit ``$NAME`` / ``${NAME}`` reference expands
    (``PATH: /opt/x:$PATH``; an unset one to nothing), everything else reaches the host literally
    (``fedctl.shell.export_prefix``). No environment variable can hold a NUL, so one is refused here."""
    env = require_mapping(file, path, value)
    out = {}
    for name, v in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise ConfigError(file, (*path, name), "is not a shell variable name (letters, digits, _)")
        if name.startswith("FEDCTL_"):
            raise ConfigError(file, (*path, name), "FEDCTL_* variables are fedctl's own")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(file, (*path, name), f"must be a string, not {type_name(v)}")
        if "\0" in str(v):
            raise ConfigError(file, (*path, name), "holds a NUL character, which no environment variable can hold")
        out[name] = str(v)
    return out


def _expand_entry(file: str, path: KeyPath, entry: dict[str, Any], room: int) -> list[dict[str, Any]]:
    """Expand the ranges of one host entry into one mapping per host (zipping name and addresses).

    ``room`` is how many hosts the inventory may still take; the name's range is counted against
    it before anything is expanded."""
    if "password" in entry:
        _check_settings(file, path, {"password": None}, HOST_KEYS)
    check_keys(file, path, entry, HOST_KEYS)
    for key in ("name", "address"):
        if key not in entry or entry[key] is None:
            raise ConfigError(file, (*path, key), "is required")
    expanded: dict[str, list[str]] = {}
    for key in RANGE_KEYS:
        if key in entry and entry[key] is not None:
            value = check_str(file, (*path, key), entry[key])
            try:
                n = ranges.count(value)
                if key == "name" and n > room:
                    raise ConfigError(
                        file, (*path, key),
                        f"{preview(value)} is {n} hosts, which takes the inventory past {MAX_HOSTS}"
                        f" hosts ({MAX_HOSTS - room} before this entry); at most {MAX_HOSTS} are allowed",
                    )
                expanded[key] = ranges.expand(value)
            except ranges.RangeError as exc:
                raise ConfigError(file, (*path, key), str(exc)) from None
    n_names = len(expanded["name"])
    for key in ("address", "private_address"):
        items = expanded.get(key)
        if items is None or len(items) == 1 and not ranges.has_range(entry[key]):
            if n_names > 1 and key == "address":
                raise ConfigError(
                    file, (*path, "address"),
                    f"name {preview(entry['name'])} expands to {n_names} hosts but address"
                    f" {preview(entry['address'])}"
                    f" is a single address; give address a range of {n_names} items to zip with the names",
                )
            continue
        if n_names == 1 and not ranges.has_range(entry["name"]):
            raise ConfigError(
                file, (*path, key),
                f"{key} {preview(entry[key])} is a range but name {preview(entry['name'])} is not; host"
                f" names must be unique, so give name a range of {len(items)} items too",
            )
        if len(items) != n_names:
            raise ConfigError(
                file, (*path, key),
                f"name {preview(entry['name'])} expands to {n_names} hosts but {key}"
                f" {preview(entry[key])} expands"
                f" to {len(items)}; the two ranges must have the same length",
            )
    out = []
    for j in range(n_names):
        item = dict(entry)
        for key, items in expanded.items():
            item[key] = items[j] if len(items) > 1 or ranges.has_range(entry[key]) else items[0]
        out.append(item)
    return out


def _make_host(file: str, path: KeyPath, item: dict[str, Any], defaults: dict[str, Any]) -> HostInfo:
    name = item["name"]
    problem = name_problem(name)
    if problem:  # it names folders and logs (results/<run>/logs/<host>/)
        raise ConfigError(file, (*path, "name"), f"host name {problem}")
    address = check_str(file, (*path, "address"), item["address"])
    private = item.get("private_address")
    roles_raw = item.get("roles")
    roles: tuple[str, ...] = ()
    if roles_raw is not None:
        if not isinstance(roles_raw, list):
            raise ConfigError(file, (*path, "roles"), f"must be a list, not {type_name(roles_raw)}", ROLES)
        for k, role in enumerate(roles_raw):
            check_choice(file, (*path, "roles", k), role, ROLES)
        if len(set(roles_raw)) != len(roles_raw):
            raise ConfigError(file, (*path, "roles"), "lists a role twice", ROLES)
        roles = tuple(r for r in ROLES if r in roles_raw)
    own = _check_settings(file, path, {k: v for k, v in item.items() if k in SETTING_KEYS}, HOST_KEYS)
    s = {**defaults, **own}
    return HostInfo(
        name=name,
        address=address,
        user=s["user"],
        port=s["port"],
        identity_file=s["identity_file"],
        password_env=s["password_env"],
        host_key_policy=s["host_key_policy"],
        workdir=s["workdir"],
        python=s["python"],
        private_address=private,
        roles=roles,
        price_per_hour=s["price_per_hour"],
        currency=s["currency"],
        environment=dict(s["environment"]),
        python_env=EnvSettings(s["env"], s["env_site_packages"], s["wheelhouse"], tuple(s["setup"]), s["keep_env"]),
        kind="ssh",
    )
