"""The ``aws:`` section of an inventory (``provider: aws``), validated into the hosts to create.

No boto3 here and no network: like the rest of the inventory it is checked completely before
anything is touched. The hosts are slots: one server instance and up to ``client_instances``
client instances; the plan uses as many client slots as the clients need
(``placement.clients_per_host``) and only the planned ones are ever created.

Everything the provider needs later is kept in each host's typed ``AwsHostSettings``
(``HostInfo.provider_settings``), persisted in the state, so ``teardown`` works from the state
alone, even when the inventory file is gone.
Credentials are never read from here: boto3's own chain (environment, ``~/.aws``, a profile).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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
from fedctl.connectors.base import HostInfo
from fedctl.errors import ConfigError
from fedctl.provider_fields import ProviderSettings, register_settings
from fedctl.providers.aws_prices import price_of

KEYS = (
    "region", "instance_type", "server_instance_type", "client_instances", "image", "key_name", "subnet",
    "security_group", "spot", "address", "endpoint_url", "tags", "prices", "ssh_cidr", "max_lifetime_hours",
    "boot_timeout_s", "name_prefix",
)
IMAGE_KEYS = ("name", "owner")
ADDRESS_MODES = ("public", "private")
DEFAULT_CLIENT_INSTANCES = 10
DEFAULT_BOOT_TIMEOUT_S = 600
#: tag keys fedctl sets itself (a user tag may not take them); ``aws:`` is reserved by AWS
RESERVED_TAG_PREFIXES = ("fedctl-", "aws:")
MAX_USER_TAGS = 40  # EC2 allows 50 per resource; fedctl uses 3

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_RESOURCE = {"subnet": re.compile(r"^subnet-[0-9a-f]{8,17}$"), "security_group": re.compile(r"^sg-[0-9a-f]{8,17}$")}
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,30}$")


@register_settings("aws")
@dataclass(frozen=True)
class AwsHostSettings(ProviderSettings):
    """What the ``aws`` provider needs to create (and find again) one host's instance."""

    legacy_id_key = "instance_id"
    machine_fields = ("region", "instance_type", "image", "image_owner", "spot")

    region: str
    instance_type: str
    image: str  # an AMI id, or with ``image_owner`` a name pattern (the newest match is used)
    image_owner: str | None = None
    spot: bool = False
    address: str = "public"  # which of the instance's addresses fedctl connects to: public | private
    ssh_cidr: str = "auto"  # who may reach SSH; auto: this machine's public address (or the VPC)
    tags: tuple[tuple[str, str], ...] = ()  # the user's tags, sorted by key
    boot_timeout_s: int = DEFAULT_BOOT_TIMEOUT_S
    max_lifetime_hours: float | None = None
    key_name: str | None = None
    subnet: str | None = None
    security_group: str | None = None  # one the user made; None: fedctl makes one per run
    endpoint_url: str | None = None  # an EC2-compatible endpoint (a test server)

    @classmethod
    def from_legacy_extra(cls, extra: Mapping[str, str]) -> "AwsHostSettings | None":
        """The settings a state file written before the typed fields kept as ``aws.*`` strings."""
        s = {k[4:]: v for k, v in extra.items() if k.startswith("aws.")}
        if "region" not in s or "instance_type" not in s or "image" not in s:
            return None
        image, owner = s["image"], None
        if not image.startswith("ami-"):
            spec = json.loads(image)
            image, owner = spec["name"], spec["owner"]
        return cls(
            region=s["region"], instance_type=s["instance_type"], image=image, image_owner=owner,
            spot=s.get("spot") == "true", address=s.get("address", "public"), ssh_cidr=s.get("ssh_cidr", "auto"),
            tags=tuple(sorted(json.loads(s.get("tags", "{}")).items())),
            boot_timeout_s=int(s.get("boot_timeout_s", DEFAULT_BOOT_TIMEOUT_S)),
            max_lifetime_hours=float(s["max_lifetime_hours"]) if s.get("max_lifetime_hours") else None,
            key_name=s.get("key_name"), subnet=s.get("subnet"), security_group=s.get("security_group"),
            endpoint_url=s.get("endpoint_url"))


def parse_section(
    file: str, raw: dict[str, Any], defaults: dict[str, Any], make_host: Callable[[str, str, list[str]], HostInfo]
) -> list[HostInfo]:
    """The hosts of a ``provider: aws`` inventory: ``<prefix>-server`` and ``<prefix>-client-NN``.

    ``make_host(name, address, roles)`` applies the inventory's ``defaults`` the way it does for a
    static host (user, identity_file, workdir, python, env ...)."""
    path: KeyPath = ("aws",)
    if "aws" not in raw:
        raise ConfigError(file, path, "provider aws needs an aws section (region, instance_type, image)", KEYS)
    sec = require_mapping(file, path, raw["aws"])
    check_keys(file, path, sec, KEYS)
    for key in ("region", "instance_type", "image"):
        if sec.get(key) is None:
            raise ConfigError(file, (*path, key), "is required")
    if defaults.get("price_per_hour") is not None:
        raise ConfigError(file, ("defaults", "price_per_hour"),
                          "provider aws prices each instance type: set aws.prices: {TYPE: PRICE} instead")

    region = check_str(file, (*path, "region"), sec["region"])
    if not _REGION.match(region):
        raise ConfigError(file, (*path, "region"), f"{preview(region)} is not an AWS region like us-east-1")
    itype = _instance_type(file, (*path, "instance_type"), sec["instance_type"])
    stype = itype if sec.get("server_instance_type") is None else _instance_type(
        file, (*path, "server_instance_type"), sec["server_instance_type"])
    n_clients = check_int(file, (*path, "client_instances"), sec.get("client_instances", DEFAULT_CLIENT_INSTANCES),
                          1, 1000)
    prefix = check_str(file, (*path, "name_prefix"), sec.get("name_prefix", "fl"))
    if not _PREFIX.match(prefix):
        raise ConfigError(file, (*path, "name_prefix"), "letters, digits and '-', at most 31 characters")
    prices = _prices(file, (*path, "prices"), sec.get("prices"))

    image, image_owner = _image(file, (*path, "image"), sec["image"])
    common: dict[str, Any] = {
        "region": region,
        "image": image,
        "image_owner": image_owner,
        "spot": _bool(file, (*path, "spot"), sec.get("spot", False)),
        "address": check_choice(file, (*path, "address"), sec.get("address", "public"), ADDRESS_MODES),
        "ssh_cidr": _cidr(file, (*path, "ssh_cidr"), sec.get("ssh_cidr", "auto")),
        "tags": tuple(sorted(_tags(file, (*path, "tags"), sec.get("tags")).items())),
        "boot_timeout_s": check_int(file, (*path, "boot_timeout_s"),
                                    sec.get("boot_timeout_s", DEFAULT_BOOT_TIMEOUT_S), 10, 7200),
    }
    if sec.get("max_lifetime_hours") is not None:
        common["max_lifetime_hours"] = float(check_number(
            file, (*path, "max_lifetime_hours"), sec["max_lifetime_hours"], 0.0, exclusive_min=True))
    for key in ("key_name", "subnet", "security_group", "endpoint_url"):
        if sec.get(key) is not None:
            value = check_str(file, (*path, key), sec[key])
            if key in _RESOURCE and not _RESOURCE[key].match(value):
                raise ConfigError(file, (*path, key), f"{preview(value)} is not an id like "
                                  f"{'subnet-0abc1234' if key == 'subnet' else 'sg-0abc1234'}")
            if key == "endpoint_url" and not re.match(r"^https?://[^\s/]+", value):
                raise ConfigError(file, (*path, key), f"{preview(value)} is not an http(s):// URL")
            common[key] = value

    width = max(2, len(str(n_clients)))
    slots = [(f"{prefix}-server", ("server",), stype)]
    slots += [(f"{prefix}-client-{i:0{width}d}", ("client",), itype) for i in range(1, n_clients + 1)]
    hosts = []
    for name, roles, mtype in slots:
        # the address is filled in by the provider once the instance has one
        h = make_host(name, f"(new {mtype})", list(roles))
        hosts.append(dataclasses.replace(h, price_per_hour=price_of(mtype, prices), currency="USD",
                                         provider_settings=AwsHostSettings(instance_type=mtype, **common)))
    return hosts


def _instance_type(file: str, path: KeyPath, value: Any) -> str:
    value = check_str(file, path, value)
    if not _INSTANCE_TYPE.match(value):
        raise ConfigError(file, path, f"{preview(value)} is not an instance type like g4dn.xlarge")
    return value


def _bool(file: str, path: KeyPath, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(file, path, f"must be true or false, not {type_name(value)}")
    return value


def _image(file: str, path: KeyPath, value: Any) -> tuple[str, str | None]:
    """``(ami-..., None)``, or ``(PATTERN, OWNER)`` for ``{name: PATTERN, owner: OWNER}`` (the newest
    match is used)."""
    if isinstance(value, str):
        if not _AMI.match(value):
            raise ConfigError(file, path, f"{preview(value)} is not an AMI id (ami-...); for a name filter write"
                              " image: {name: 'Deep Learning*', owner: amazon}")
        return value, None
    spec = require_mapping(file, path, value)
    check_keys(file, path, spec, IMAGE_KEYS)
    if spec.get("name") is None:
        raise ConfigError(file, (*path, "name"), "is required (a name pattern; * matches anything)")
    name = check_str(file, (*path, "name"), spec["name"])
    owner = check_str(file, (*path, "owner"), spec.get("owner", "amazon"))
    return name, owner


def _cidr(file: str, path: KeyPath, value: Any) -> str:
    value = check_str(file, path, value)
    if value == "auto":
        return value
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigError(file, path, f"{preview(value)} is not a CIDR like 203.0.113.7/32 (or auto)") from None


def _tags(file: str, path: KeyPath, value: Any) -> dict[str, str]:
    tags = require_mapping(file, path, value)
    if len(tags) > MAX_USER_TAGS:
        raise ConfigError(file, path, f"{len(tags)} tags; at most {MAX_USER_TAGS}")
    out = {}
    for key, val in tags.items():
        if any(key.lower().startswith(p) for p in RESERVED_TAG_PREFIXES):
            raise ConfigError(file, (*path, key), "tag keys starting with fedctl- or aws: are reserved")
        if not isinstance(val, (str, int, float)) or isinstance(val, bool):
            raise ConfigError(file, (*path, key), f"must be a string, not {type_name(val)}")
        out[key] = str(val)
    return out


def _prices(file: str, path: KeyPath, value: Any) -> dict[str, float]:
    prices = require_mapping(file, path, value)
    return {k: check_number(file, (*path, k), v, minimum=0.0) for k, v in prices.items()}


def settings(info: HostInfo) -> AwsHostSettings:
    """The aws settings of a host (a host of another provider is a bug in fedctl)."""
    if not isinstance(info.provider_settings, AwsHostSettings):
        raise TypeError(f"host {info.name} has no aws settings")
    return info.provider_settings
