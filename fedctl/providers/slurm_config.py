"""The ``slurm:`` section of an inventory (``provider: slurm``), validated into the run's hosts.

No Slurm command runs here: like the rest of the inventory it is checked completely before anything
is submitted. The hosts are slots of one allocation: ``<prefix>-server`` (its step shares the first
node, or with ``server: own`` runs on a node of its own, a heterogeneous job's component 0) and
``<prefix>-node-NN`` for at most ``nodes`` nodes; the plan uses as many as the clients need.
Their addresses are placeholders until the allocation runs (``scontrol show hostnames``).

Everything the provider needs later is kept in each host's typed ``SlurmHostSettings``, persisted in
the state, so teardown works from the state alone, even when the inventory file is gone.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable

from fedctl.config.loader import (
    KeyPath,
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_str,
    preview,
    require_mapping,
    type_name,
)
from fedctl.connectors import register_connector
from fedctl.connectors.base import HostInfo
from fedctl.errors import ConfigError
from fedctl.provider_fields import ProviderSettings, register_settings

KEYS = ("login", "partition", "nodes", "gpus_per_node", "cpus_per_task", "mem", "time", "account", "qos",
        "constraint", "sbatch_args", "name_prefix", "price_per_node_hour", "price_per_gpu_hour", "server",
        "server_partition")
#: where the server's step runs: on the first client node (shared) or on a CPU node of its own (a
#: heterogeneous job: component 0 the server's node, component 1 the clients' nodes)
SERVER_PLACES = ("shared", "own")
LOGIN_KEYS = ("address", "user", "port", "identity_file", "environment", "workdir")
DEFAULT_NODES = 1
#: sbatch options fedctl sets itself: an extra argument may not override them (fedctl finds its
#: jobs by name and comment, and sizes the allocation from the plan)
RESERVED_SBATCH = ("-J", "--job-name", "--comment", "-N", "--nodes", "-o", "--output", "-e", "--error",
                   "--wrap", "-D", "--chdir", "--parsable")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # partition, account, qos
_MEM = re.compile(r"^\d+[KMGT]?$")
# Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,30}$")


@register_settings("slurm")
@dataclass(frozen=True)
class SlurmHostSettings(ProviderSettings):
    """What the ``slurm`` provider needs to submit (and find again) the run's allocation."""

    nodes: int = DEFAULT_NODES  # at most this many nodes for the clients
    login_address: str | None = None  # None: this machine is the login node
    login_user: str | None = None
    login_port: int | None = None
    login_identity_file: str | None = None
    login_environment: tuple[tuple[str, str], ...] = ()  # exported for every command there (SLURM_CONF ...)
    login_workdir: str = "~/fedctl"  # on the shared filesystem: the run folders go under it
    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None  # None: from the budget's max_hours at submit
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_args: tuple[str, ...] = ()
    server: str = "shared"  # SERVER_PLACES
    server_partition: str | None = None  # server: own: the partition of the server's node (default: partition)
    # what the cluster charges (service units or money), for clusters that bill; None: not known
    price_per_node_hour: float | None = None
    price_per_gpu_hour: float | None = None


#: a price is no part of which allocation this is: correcting it on a provisioned run is allowed
SlurmHostSettings.machine_fields = tuple(
    f.name for f in dataclasses.fields(SlurmHostSettings) if not f.name.startswith("price_"))

# a slurm host is reached through job steps of its allocation, not over SSH
register_connector("slurm", "fedctl.providers.slurm_connector:node_connector")


def parse_section(
    file: str, raw: dict[str, Any], defaults: dict[str, Any], make_host: Callable[[str, str, list[str]], HostInfo]
) -> list[HostInfo]:
    """The hosts of a ``provider: slurm`` inventory: ``<prefix>-server`` and ``<prefix>-node-NN``."""
    path: KeyPath = ("slurm",)
    if "slurm" not in raw:
        raise ConfigError(file, path, "provider slurm needs a slurm section (at least partition or nodes)", KEYS)
    sec = require_mapping(file, path, raw["slurm"])
    check_keys(file, path, sec, KEYS)
    fields: dict[str, Any] = {}
    fields["nodes"] = check_int(file, (*path, "nodes"), sec.get("nodes", DEFAULT_NODES), 1, 10000)
    for key in ("gpus_per_node", "cpus_per_task"):
        if sec.get(key) is not None:
            fields[key] = check_int(file, (*path, key), sec[key], 1 if key == "cpus_per_task" else 0, 1024)
    if sec.get("server") is not None:
        fields["server"] = check_choice(file, (*path, "server"), sec["server"], SERVER_PLACES)
    for key in ("partition", "account", "qos", "server_partition"):
        if sec.get(key) is not None:
            value = check_str(file, (*path, key), sec[key])
            if not _NAME.match(value):
                raise ConfigError(file, (*path, key), f"{preview(value)} is not a Slurm {key.split('_')[-1]} name "
                                  "(letters, digits, '_', '.', '-')")
            fields[key] = value
    if sec.get("mem") is not None:
        mem = sec["mem"]
        mem = str(mem) if isinstance(mem, int) and not isinstance(mem, bool) else check_str(file, (*path, "mem"), mem)
        if not _MEM.match(mem):
            raise ConfigError(file, (*path, "mem"), f"{preview(mem)} is not a size like 16G, 4000M or 4000 (MB)")
        fields["mem"] = mem
    if sec.get("time") is not None:
        fields["time"] = _time(file, (*path, "time"), sec["time"])
    for key in ("price_per_node_hour", "price_per_gpu_hour"):
        if sec.get(key) is not None:
            fields[key] = check_number(file, (*path, key), sec[key], 0.0)
    if sec.get("constraint") is not None:
        fields["constraint"] = check_str(file, (*path, "constraint"), sec["constraint"])
    if fields.get("server_partition") and fields.get("server", "shared") != "own":
        raise ConfigError(file, (*path, "server_partition"), "is only used with server: own (the server's "
                          "node of its own); with server: shared its step shares the first client node")
    fields["sbatch_args"] = _sbatch_args(file, (*path, "sbatch_args"), sec.get("sbatch_args"))
    fields.update(_login(file, (*path, "login"), sec.get("login")))
    prefix = check_str(file, (*path, "name_prefix"), sec.get("name_prefix", "slurm"))
    if not _PREFIX.match(prefix):
        raise ConfigError(file, (*path, "name_prefix"), "letters, digits and '-', at most 31 characters")

    settings = SlurmHostSettings(**fields)
    width = max(2, len(str(settings.nodes)))
    slots = [(f"{prefix}-server", ["server"])]
    slots += [(f"{prefix}-node-{i:0{width}d}", ["client"]) for i in range(1, settings.nodes + 1)]
    # the address is filled in from the allocation's node list once it runs
    return [dataclasses.replace(make_host(name, "(slurm node)", roles), provider_settings=settings)
            for name, roles in slots]


def _time(file: str, path: KeyPath, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # minutes, as sbatch reads a bare number
    value = check_str(file, path, value)
    if not _TIME.match(value):
        raise ConfigError(file, path, f"{preview(value)} is not a Slurm time like 90 (minutes), 4:00:00 or 1-12:00")
    return value


def _sbatch_args(file: str, path: KeyPath, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(file, path,
                          f"must be a list of sbatch arguments like ['--exclusive'], not {type_name(value)}")
    out = []
    for i, arg in enumerate(value):
        arg = check_str(file, (*path, i), arg)
        if not arg.startswith("-"):
            raise ConfigError(file, (*path, i), f"{preview(arg)} is not an option (write '--opt=value' as one item)")
        if arg.split("=", 1)[0] in RESERVED_SBATCH:
            raise ConfigError(file, (*path, i), f"{preview(arg)} is set by fedctl itself", list(RESERVED_SBATCH))
        out.append(arg)
    return tuple(out)


def _login(file: str, path: KeyPath, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    sec = require_mapping(file, path, value)
    check_keys(file, path, sec, LOGIN_KEYS)
    if sec.get("address") is None:
        raise ConfigError(file, (*path, "address"), "is required (the login node's host name or address; "
                          "omit login to use this machine)")
    out: dict[str, Any] = {"login_address": check_str(file, (*path, "address"), sec["address"])}
    if sec.get("user") is not None:
        out["login_user"] = check_str(file, (*path, "user"), sec["user"])
    if sec.get("port") is not None:
        out["login_port"] = check_int(file, (*path, "port"), sec["port"], 1, 65535)
    if sec.get("identity_file") is not None:
        out["login_identity_file"] = check_str(file, (*path, "identity_file"), sec["identity_file"])
    if sec.get("workdir") is not None:
        out["login_workdir"] = check_str(file, (*path, "workdir"), sec["workdir"])
    envs = require_mapping(file, (*path, "environment"), sec.get("environment"))
    for key, val in envs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(file, (*path, "environment", key), "is not an environment variable name")
        if not isinstance(val, (str, int, float)) or isinstance(val, bool):
            raise ConfigError(file, (*path, "environment", key), f"must be a string, not {type_name(val)}")
    if envs:
        out["login_environment"] = tuple(sorted((k, str(v)) for k, v in envs.items()))
    return out


def settings(info: HostInfo) -> SlurmHostSettings:
    """The slurm settings of a host (a host of another provider is a bug in fedctl)."""
    if not isinstance(info.provider_settings, SlurmHostSettings):
        raise TypeError(f"host {info.name} has no slurm settings")
    return info.provider_settings
