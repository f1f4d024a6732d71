"""Pre-flight: the ids and names in the settings checked against the AWS a task acts on, before it
changes anything.

The settings loader (:mod:`pipeline.config`, :mod:`pipeline.rules`) checks what a value looks like;
this module asks AWS whether it is real and fits: the VPC and subnets exist, belong together and span
two availability zones; the instance type exists in the region (and in the subnets' zones) and boots
the image's virtualization, boot mode and architecture (:mod:`pipeline.aws.boot_modes`); the KMS key
resolves and can encrypt EBS volumes (the certificate: :mod:`pipeline.aws.https`). Every call here
only reads, so a failed pre-flight has changed nothing. On the local AWS the same calls are answered
by moto, from the data it carries of AWS's instance types and offerings.

Every refusal is one line naming where the value came from (``pipeline.toml: ...`` or ``--set ...``),
the value and what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from pipeline.aws import boot_modes
from pipeline.aws.calls import error_code, one_line_errors
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.rules import show

MIN_ZONES = 2  # an Application Load Balancer needs subnets in at least two availability zones


@dataclass(frozen=True)
class InstanceType:
    """What EC2 says about an instance type (DescribeInstanceTypes)."""

    name: str
    boot_modes: frozenset[str]
    virtualization: frozenset[str]
    architectures: frozenset[str]

    @classmethod
    def from_aws(cls, data: dict[str, Any]) -> InstanceType:
        return cls(
            name=str(data["InstanceType"]),
            boot_modes=frozenset(data.get("SupportedBootModes", ())),
            virtualization=frozenset(data.get("SupportedVirtualizationTypes", ())),
            architectures=frozenset(data.get("ProcessorInfo", {}).get("SupportedArchitectures", ())),
        )


# -- what each task checks ----------------------------------------------------------------------------------


@one_line_errors("pre-flight")
def for_deploy(settings: Settings, clients: Clients) -> None:
    """Before a deploy or a plan: the instance type boots the image, the network is real."""
    check_instance_type(settings, clients, zones=check_network(settings, clients))


@one_line_errors("pre-flight")
def for_ami(settings: Settings, clients: Clients) -> Settings:
    """Before publishing an AMI: the KMS key resolves. Returns the settings with the key as the key's
    ARN, the only form StartSnapshot takes."""
    if not settings.ami.kms_key_id:
        return settings
    arn = check_kms_key(settings, clients)
    return dataclasses.replace(settings, ami=dataclasses.replace(settings.ami, kms_key_id=arn))


# -- instance type ------------------------------------------------------------------------------------------


def check_instance_type(
    settings: Settings, clients: Clients, zones: Sequence[str] = (), instance_type: str | None = None
) -> InstanceType:
    """The instance type exists in the region (and in ``zones``, the subnets' availability zones) and
    boots the image: PV for ``pv``; HVM, UEFI and x86_64 for ``hvm``."""
    name = instance_type or settings.deploy.instance_type
    where = settings.where("deploy.instance_type")
    region = clients.region
    virtualization = settings.virtualization
    ec2 = clients.ec2()
    hint = f"for example {boot_modes.suggestion(virtualization)}"
    offered = _offered_in(ec2, name, "region")
    try:
        found = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]  # type: ignore[list-item]
    except ClientError as err:
        if error_code(err) != "InvalidInstanceType":
            raise
        found = []
    if not found or region not in offered:
        raise ConfigError(
            f"{where}: EC2 offers no instance type {show(name)} in {region}",
            hint=f"{hint}; aws ec2 describe-instance-type-offerings --region {region} lists them",
        )
    it = InstanceType.from_aws(dict(found[0]))
    wanted = boot_modes.PARAVIRTUAL if virtualization == "pv" else boot_modes.HVM
    image = f"the {settings.image.target} image ({virtualization})"
    if wanted not in it.virtualization:
        raise ConfigError(
            f"{where}: {name} cannot boot {image}: it runs {', '.join(sorted(it.virtualization))} only",
            hint=f"{boot_modes.why_not(name, virtualization)}; {hint}",
        )
    if virtualization == "hvm" and boot_modes.UEFI not in it.boot_modes:
        raise ConfigError(
            f"{where}: {name} cannot boot {image}, which boots through UEFI: "
            f"{name} boots {', '.join(sorted(it.boot_modes))} only",
            hint=f"{boot_modes.why_not(name, virtualization)}; {hint}",
        )
    if boot_modes.X86_64 not in it.architectures:
        raise ConfigError(
            f"{where}: {name} runs {', '.join(sorted(it.architectures))}, but the image is x86_64",
            hint=f"use an x86_64 (Intel or AMD) type, {hint}",
        )
    missing = sorted(set(zones) - _offered_in(ec2, name, "availability-zone"))
    if missing:
        raise ConfigError(
            f"{where}: EC2 offers {name} in {region} but not in {', '.join(missing)}, "
            f"where {settings.where('deploy.subnet_ids')} puts instances",
            hint="choose subnets in zones that offer the type, or another instance type",
        )
    return it


def _offered_in(ec2: Any, instance_type: str, location_type: str) -> set[str]:
    """The regions or zones where EC2 offers ``instance_type`` (DescribeInstanceTypeOfferings)."""
    out: set[str] = set()
    for page in ec2.get_paginator("describe_instance_type_offerings").paginate(
        LocationType=location_type, Filters=[{"Name": "instance-type", "Values": [instance_type]}]
    ):
        out.update(o["Location"] for o in page["InstanceTypeOfferings"])
    return out


# -- network ------------------------------------------------------------------------------------------------


def check_network(settings: Settings, clients: Clients) -> list[str]:
    """``deploy.vpc_id`` and ``deploy.subnet_ids`` exist, the subnets are the VPC's, available, and in
    at least two availability zones. Returns the subnets' zones ([] when the stack makes its own VPC)."""
    vpc_id, subnet_ids = settings.deploy.vpc_id, settings.deploy.subnet_ids
    if not vpc_id:
        return []
    region = clients.region
    ec2 = clients.ec2()
    vpc_where, subnets_where = settings.where("deploy.vpc_id"), settings.where("deploy.subnet_ids")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"]
    if not vpcs:
        raise ConfigError(
            f"{vpc_where}: there is no VPC {vpc_id} in {region}",
            hint=f"aws ec2 describe-vpcs --region {region} lists them; or leave vpc_id and subnet_ids "
            "empty to let the stack make its own",
        )
    subnets = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": list(subnet_ids)}])["Subnets"]
    by_id = {s["SubnetId"]: s for s in subnets}
    missing = [s for s in subnet_ids if s not in by_id]
    if missing:
        raise ConfigError(
            f"{subnets_where}: there is no subnet {', '.join(missing)} in {region}",
            hint=f"aws ec2 describe-subnets --filters Name=vpc-id,Values={vpc_id} lists the VPC's subnets",
        )
    foreign = [f"{s} (of {by_id[s]['VpcId']})" for s in subnet_ids if by_id[s]["VpcId"] != vpc_id]
    if foreign:
        raise ConfigError(
            f"{subnets_where}: not subnets of {vpc_id} ({vpc_where}): {', '.join(foreign)}",
            hint="list subnets of the one VPC the stack goes into",
        )
    unavailable = [s for s in subnet_ids if by_id[s].get("State", "available") != "available"]
    if unavailable:
        raise ConfigError(
            f"{subnets_where}: subnet {', '.join(unavailable)} is not available",
            hint="wait until it is, or list other subnets",
        )
    zones = sorted({by_id[s]["AvailabilityZone"] for s in subnet_ids})
    if len(zones) < MIN_ZONES:
        raise ConfigError(
            f"{subnets_where}: the subnets are all in {zones[0]}, but a load balancer needs subnets "
            f"in at least {MIN_ZONES} availability zones",
            hint=f"add a subnet of {vpc_id} in another zone",
        )
    return zones


# -- KMS and ACM --------------------------------------------------------------------------------------------


def check_kms_key(settings: Settings, clients: Clients) -> str:
    """``ami.kms_key_id`` names an enabled symmetric encryption key (what EBS encrypts with); returns
    its ARN."""
    key = settings.ami.kms_key_id
    where = settings.where("ami.kms_key_id")
    region = clients.region
    try:
        meta = clients.client("kms").describe_key(KeyId=key)["KeyMetadata"]
    except ClientError as err:
        if error_code(err) not in ("NotFoundException", "InvalidArnException"):
            raise
        raise ConfigError(
            f"{where}: KMS has no key {show(key)} in {region}",
            hint=f'aws kms list-aliases --region {region} lists the keys; or set kms_key_id = "" '
            "for the account's default EBS encryption",
        ) from err
    state = meta.get("KeyState", "Enabled")
    if state != "Enabled":
        raise ConfigError(
            f"{where}: KMS key {meta['Arn']} is {state}, not Enabled",
            hint="enable the key (aws kms enable-key) or use another one",
        )
    usage, spec = meta.get("KeyUsage", "ENCRYPT_DECRYPT"), meta.get("KeySpec", "SYMMETRIC_DEFAULT")
    if usage != "ENCRYPT_DECRYPT" or spec != "SYMMETRIC_DEFAULT":
        raise ConfigError(
            f"{where}: KMS key {meta['Arn']} is a {spec} key for {usage}; EBS encrypts only with "
            "symmetric encryption keys (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)",
            hint="use a symmetric encryption key",
        )
    return str(meta["Arn"])
