"""A thin, typed layer over boto3's EC2 client: the few calls the ``aws`` provider makes.

boto3 is imported here, inside ``client()``, and nowhere else: ``fedctl --help`` and every other
provider run without it. Credentials come from boto3's chain (environment, ``~/.aws``, a profile,
an instance role) and never pass through fedctl: no argument, message or file here holds them.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any, Iterable

from fedctl import DIST_NAME
from fedctl.errors import UsageError
from fedctl.providers.base import ENDED_STATES, Machine, ProviderError

#: tags fedctl puts on everything it creates
TAG_RUN, TAG_HOST, TAG_ORIGIN = "fedctl-run", "fedctl-host", "fedctl-origin"
_WHEN = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:UTC|GMT)\)")


def client(region: str, endpoint_url: str | None = None) -> Any:
    """An EC2 client for ``region`` (and a compatible endpoint, e.g. a local test server)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError(
            "provider aws needs boto3, which is not installed",
            hint=f'pip install "{DIST_NAME}[aws]"',
        ) from None
    cfg = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                 user_agent_extra="fedctl")
    return boto3.session.Session().client("ec2", region_name=region, endpoint_url=endpoint_url, config=cfg)


def api_error(exc: BaseException, doing: str) -> ProviderError:
    """A ProviderError that says what failed and what to do. botocore's messages never hold the
    credentials; only the error code and message are kept."""
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        return ProviderError(f"cannot {doing}: AWS credentials not found ({exc})",
                             hint="configure them the usual way: `aws configure`, AWS_PROFILE, or "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment; never in the inventory")
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = response["Error"].get("Code", "?")
        msg = response["Error"].get("Message", "")
        hint = None
        if code in ("UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId"):
            hint = "the credentials lack a permission fedctl needs: README.md, 'AWS', lists the minimal IAM policy"
        elif code in ("InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"):
            hint = "ask AWS for a higher quota (Service Quotas, EC2), or use fewer/smaller instances"
        elif code == "InsufficientInstanceCapacity":
            hint = "try again later, another instance type, or another availability zone (aws.subnet)"
        return ProviderError(f"cannot {doing}: {code}: {msg}", hint=hint)
    return ProviderError(f"cannot {doing}: {name}: {exc}")


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return None


def machine_from(inst: dict[str, Any]) -> Machine:
    """A Machine from one ``describe_instances`` entry."""
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    state = inst.get("State", {}).get("Name", "?")
    ended = None
    if state in ENDED_STATES:
        m = _WHEN.search(inst.get("StateTransitionReason") or "")
        if m:
            ended = float(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")))
    reason = (inst.get("StateReason") or {}).get("Message") or inst.get("StateTransitionReason") or ""
    return Machine(
        id=inst["InstanceId"],
        state=state,
        run_id=tags.get(TAG_RUN),
        host=tags.get(TAG_HOST),
        origin=tags.get(TAG_ORIGIN),
        machine_type=inst.get("InstanceType", ""),
        address=inst.get("PublicIpAddress"),
        private_address=inst.get("PrivateIpAddress"),
        launched_at=_epoch(inst.get("LaunchTime")),
        ended_at=ended,
        extra={"image": inst.get("ImageId", ""), "reason": reason,
               "lifecycle": inst.get("InstanceLifecycle", "on-demand")},
    )


def find_instances(ec2: Any, filters: list[dict[str, Any]]) -> list[Machine]:
    """Every instance matching ``filters`` (all pages), oldest launch first."""
    out = []
    try:
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for res in page.get("Reservations", []):
                out.extend(machine_from(i) for i in res.get("Instances", []))
    except Exception as exc:  # noqa: BLE001 - botocore's errors, turned into one that says what failed
        raise api_error(exc, "list instances") from None
    return sorted(out, key=lambda m: (m.launched_at or 0.0, m.id))


def find_by_ids(ec2: Any, ids: Iterable[str]) -> list[Machine]:
    """The instances with these ids, as the API reports them now (unknown ids are simply absent);
    in chunks, as EC2 takes at most 200 values per filter."""
    wanted = list(dict.fromkeys(ids))
    out: list[Machine] = []
    for i in range(0, len(wanted), 200):
        out += find_instances(ec2, [{"Name": "instance-id", "Values": wanted[i:i + 200]}])
    return out


def run_filter(run_ids: Iterable[str] | None) -> list[dict[str, Any]]:
    """Filters for the instances of ``run_ids`` (None: of every fedctl run)."""
    if run_ids is None:
        return [{"Name": "tag-key", "Values": [TAG_RUN]}]
    return [{"Name": f"tag:{TAG_RUN}", "Values": list(run_ids)}]


def terminate(ec2: Any, ids: list[str]) -> None:
    """Terminate ``ids`` (idempotent: terminating a terminated instance is no error)."""
    for i in range(0, len(ids), 500):
        try:
            ec2.terminate_instances(InstanceIds=ids[i:i + 500])
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) == "InvalidInstanceID.NotFound":
                continue  # already gone (or never existed): nothing to terminate
            raise api_error(exc, f"terminate {', '.join(ids[i:i + 500])}") from None


def resolve_image(ec2: Any, image: str, owner: str | None) -> tuple[str, str]:
    """``(image id, name)`` for an ``ami-...`` id (``owner`` None) or a name pattern of ``owner``
    (the newest match wins)."""
    spec = image if owner is None else f"{image} (owner {owner})"
    try:
        if owner is None:
            images = ec2.describe_images(ImageIds=[image]).get("Images", [])
        else:
            images = ec2.describe_images(Owners=[owner], Filters=[
                {"Name": "name", "Values": [image]}, {"Name": "state", "Values": ["available"]}]).get("Images", [])
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"look up image {spec}") from None
    if not images:
        raise ProviderError(f"no image matches {spec}", hint="check aws.image and aws.region (AMIs are per region)")
    best = max(images, key=lambda im: (im.get("CreationDate", ""), im["ImageId"]))
    return best["ImageId"], best.get("Name", "")


def network(ec2: Any, subnet: str | None) -> tuple[str, str]:
    """``(vpc id, vpc cidr)`` of ``subnet``, or of the default VPC when there is none."""
    try:
        if subnet:
            subs = ec2.describe_subnets(SubnetIds=[subnet]).get("Subnets", [])
            if not subs:
                raise ProviderError(f"subnet {subnet} not found", hint="check aws.subnet and aws.region")
            vpcs = ec2.describe_vpcs(VpcIds=[subs[0]["VpcId"]]).get("Vpcs", [])
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}]).get("Vpcs", [])
            if not vpcs:
                raise ProviderError("this region has no default VPC", hint="set aws.subnet to a subnet to launch in")
    except ProviderError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, "look up the network") from None
    return vpcs[0]["VpcId"], vpcs[0].get("CidrBlock", "")


def tag_spec(kind: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]}]


def find_security_group(ec2: Any, name: str, vpc: str) -> str | None:
    """The id of the security group named ``name`` in ``vpc`` (None: there is none)."""
    try:
        found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                      {"Name": "vpc-id", "Values": [vpc]}]).get("SecurityGroups", [])
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"look up security group {name}") from None
    return str(found[0]["GroupId"]) if found else None


def ensure_security_group(ec2: Any, name: str, vpc: str, tags: dict[str, str], ssh_cidr: str, ssh_port: int,
                          fl_port: int | None) -> str:
    """The run's security group, created once (a retry finds it by name), with its rules: SSH from
    ``ssh_cidr``, the FL port (every TCP port when unknown) only from members of the group itself.
    The rules are (re)applied on every call: a crash between creating the group and adding them
    must not leave a group that lets nothing in."""
    gid = find_security_group(ec2, name, vpc)
    try:
        if gid is None:
            gid = str(ec2.create_security_group(
                GroupName=name, VpcId=vpc, Description=f"fedctl {name}: SSH from {ssh_cidr}, FL inside the group",
                TagSpecifications=tag_spec("security-group", tags))["GroupId"])
        ports = (fl_port, fl_port) if fl_port else (0, 65535)
        rules = [
            {"IpProtocol": "tcp", "FromPort": ssh_port, "ToPort": ssh_port,
             "IpRanges": [{"CidrIp": ssh_cidr, "Description": "fedctl: SSH"}]},
            {"IpProtocol": "tcp", "FromPort": ports[0], "ToPort": ports[1],
             "UserIdGroupPairs": [{"GroupId": gid, "Description": "fedctl: FL traffic inside the run"}]},
        ]
        for rule in rules:  # one call each: a rule already there does not keep the other out
            try:
                ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[rule])
            except Exception as exc:  # noqa: BLE001
                if error_code(exc) != "InvalidPermission.Duplicate":
                    raise
        return gid
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"create security group {name}") from None


def run_groups(ec2: Any, run_ids: Iterable[str] | None) -> list[dict[str, Any]]:
    """Security groups fedctl created for ``run_ids`` (None: for any run)."""
    try:
        return list(ec2.describe_security_groups(Filters=run_filter(run_ids)).get("SecurityGroups", []))
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, "list security groups") from None


def delete_group(ec2: Any, gid: str) -> bool:
    """Delete a security group; False while instances still hold it (DependencyViolation)."""
    try:
        ec2.delete_security_group(GroupId=gid)
    except Exception as exc:  # noqa: BLE001
        code = error_code(exc)
        if code == "InvalidGroup.NotFound":
            return True
        if code == "DependencyViolation":
            return False
        raise api_error(exc, f"delete security group {gid}") from None
    return True


def unused_groups(ec2: Any, run_ids: Iterable[str], origins: set[str] | None) -> tuple[list[str], list[tuple[str, str]]]:
    """Security groups of ``run_ids`` made from ``origins`` (None: any) that may be deleted, and
    (group, run) of those kept because a live instance (of any origin) still carries their run tag."""
    runs = list(run_ids)
    live = {m.run_id for m in find_instances(ec2, run_filter(runs)) if m.billed}
    free, kept = [], []
    for g in run_groups(ec2, runs):
        tags = {t["Key"]: t["Value"] for t in g.get("Tags", [])}
        if origins is not None and tags.get(TAG_ORIGIN) not in origins:
            continue
        if tags.get(TAG_RUN) in live:
            kept.append((str(g["GroupId"]), str(tags.get(TAG_RUN))))
        else:
            free.append(str(g["GroupId"]))
    return free, kept
