"""Xen paravirtual (PV) images on EC2: where they can run and which kernel (AKI) boots them.

PV AMIs boot through Amazon's PV-GRUB kernel images (AKIs). Only previous-generation instance families
run them (C1, C3, M1, M2, M3, T1; no Nitro type does), and only the older regions have PV-GRUB. The
AKI is looked up in each region with DescribeImages (owner amazon, name ``pv-grub-hd0_*``, x86_64,
newest), never taken from a table: the table below is for messages and for seeding the local AWS.
The ``hd0`` AKI reads ``/boot/grub/menu.lst`` from a whole-disk file system or from a partition; the
older ``hd00`` AKIs exist only for backward compatibility.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# Regions that offer PV-GRUB AKIs (AWS EC2 user guide, "User provided kernels").
PV_REGIONS = (
    "us-east-1",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "sa-east-1",
    "us-gov-west-1",
)
# The instance types that launch PV AMIs: the previous-generation C1, C3, M1, M2, M3 and T1 families
# (AWS EC2 user guide, "Virtualization types" and "Previous generation instances"), with the memory of
# each in MiB as EC2's DescribeInstanceTypes reports it (MemoryInfo.SizeInMiB). The pipeline's checks
# and the stack template's rule for PV colours are both made from this table.
PV_MEMORY_MIB: dict[str, int] = {
    "c1.medium": 1740,
    "c1.xlarge": 7168,
    "c3.large": 3840,
    "c3.xlarge": 7680,
    "c3.2xlarge": 15360,
    "c3.4xlarge": 30720,
    "c3.8xlarge": 61440,
    "m1.small": 1740,
    "m1.medium": 3788,
    "m1.large": 7680,
    "m1.xlarge": 15360,
    "m2.xlarge": 17510,
    "m2.2xlarge": 35020,
    "m2.4xlarge": 70041,
    "m3.medium": 3840,
    "m3.large": 7680,
    "m3.xlarge": 15360,
    "m3.2xlarge": 30720,
    "t1.micro": 627,
}
PV_INSTANCE_TYPES = tuple(PV_MEMORY_MIB)
# LING refuses a domain of more than 4 GiB at start-up: core/ling.c checks start_info.nr_pages (4 KiB
# pages) against 1024*1024 and stops with "LING does not support domains larger than 4Gb". EC2 gives
# a PV guest the whole memory of its instance type, so only types of at most 4096 MiB can run LING.
LING_MAX_MEMORY_MIB = 4096
LING_INSTANCE_TYPES = tuple(t for t, mib in PV_MEMORY_MIB.items() if mib <= LING_MAX_MEMORY_MIB)
PV_FAMILIES = tuple(dict.fromkeys(t.split(".", 1)[0] for t in PV_INSTANCE_TYPES))
AKI_NAME_PATTERN = "pv-grub-hd0_*"


def is_pv_instance_type(instance_type: str) -> bool:
    return instance_type.lower() in PV_INSTANCE_TYPES


def instance_types_for(target: str) -> tuple[str, ...]:
    """The PV instance types that can boot a PV image of ``target``."""
    return LING_INSTANCE_TYPES if target == "ling" else PV_INSTANCE_TYPES


def instance_type_fits(instance_type: str, virtualization: str, target: str = "beam") -> bool:
    """Whether EC2 can boot an image of ``target`` and ``virtualization`` ("hvm" or "pv") on the type."""
    if target == "ling":  # LING is PV only, and at most 4 GiB
        return instance_type.lower() in LING_INSTANCE_TYPES
    return virtualization == "hvm" or is_pv_instance_type(instance_type)


def families() -> str:
    """The PV families for messages: "C1, C3, M1, M2, M3 and T1"."""
    names = [f.upper() for f in PV_FAMILIES]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def check_instance_type(
    instance_type: str,
    virtualization: str = "pv",
    where: str = "pipeline.toml: deploy.instance_type",
    target: str = "beam",
) -> None:
    """Refuse an instance type that cannot boot an image of ``target`` and ``virtualization`` (one
    line, with a hint)."""
    if (
        target == "ling"
        and is_pv_instance_type(instance_type)
        and not instance_type_fits(instance_type, virtualization, target)
    ):
        mib = PV_MEMORY_MIB[instance_type.lower()]
        raise ConfigError(
            f'{where}: "{instance_type}" has {mib} MiB of memory, and LING stops at start-up in a '
            f"domain over {LING_MAX_MEMORY_MIB} MiB (4 GiB)",
            hint=f"use one of {', '.join(LING_INSTANCE_TYPES)} for the ling target",
        )
    if not instance_type_fits(instance_type, virtualization, target):
        raise ConfigError(
            f'{where}: "{instance_type}" cannot boot paravirtual (PV) images; PV runs only on '
            f"previous-generation types of the {families()} families",
            hint='use e.g. instance_type = "m3.medium", or deploy.virtualization = "hvm" (beam target)',
        )


def find_aki(ec2: EC2Client, region: str) -> str | None:
    """The newest x86_64 PV-GRUB ``hd0`` AKI Amazon publishes in ``region``, or None if it has none."""
    resp = ec2.describe_images(
        Owners=["amazon"],
        Filters=[
            {"Name": "name", "Values": [AKI_NAME_PATTERN]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "image-type", "Values": ["kernel"]},
        ],
    )
    images = [i for i in resp.get("Images", []) if i.get("ImageId", "").startswith("aki-")]
    if not images:
        return None
    # CreationDate is ISO 8601 in UTC, so it sorts as text; the name (which carries the version) breaks ties.
    newest = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))
    return newest["ImageId"]


def require_aki(ec2: EC2Client, region: str) -> str:
    """Like :func:`find_aki`, but a region without PV-GRUB is an error naming the PV regions."""
    aki = find_aki(ec2, region)
    if aki is None:
        raise PipelineError(
            f"region {region} has no PV-GRUB hd0 kernel (AKI), so it cannot register paravirtual images; "
            f"PV regions: {', '.join(PV_REGIONS)}",
            hint='set aws.region to one of those, or publish an HVM image (deploy.virtualization = "hvm")',
        )
    return aki
