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
# (AWS EC2 user guide, "Virtualization types" and "Previous generation instances"). The pipeline's
# checks and the stack template's rule for PV colours are both made from this list.
PV_INSTANCE_TYPES = (
    "c1.medium",
    "c1.xlarge",
    "c3.large",
    "c3.xlarge",
    "c3.2xlarge",
    "c3.4xlarge",
    "c3.8xlarge",
    "m1.small",
    "m1.medium",
    "m1.large",
    "m1.xlarge",
    "m2.xlarge",
    "m2.2xlarge",
    "m2.4xlarge",
    "m3.medium",
    "m3.large",
    "m3.xlarge",
    "m3.2xlarge",
    "t1.micro",
)
PV_FAMILIES = tuple(dict.fromkeys(t.split(".", 1)[0] for t in PV_INSTANCE_TYPES))
AKI_NAME_PATTERN = "pv-grub-hd0_*"


def is_pv_instance_type(instance_type: str) -> bool:
    return instance_type.lower() in PV_INSTANCE_TYPES


def instance_type_fits(instance_type: str, virtualization: str) -> bool:
    """Whether EC2 can boot an image of ``virtualization`` ("hvm" or "pv") on ``instance_type``."""
    return virtualization == "hvm" or is_pv_instance_type(instance_type)


def families() -> str:
    """The PV families for messages: "C1, C3, M1, M2, M3 and T1"."""
    names = [f.upper() for f in PV_FAMILIES]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def check_instance_type(
    instance_type: str, virtualization: str = "pv", where: str = "pipeline.toml: deploy.instance_type"
) -> None:
    """Refuse an instance type that cannot boot an image of ``virtualization`` (one line, with a hint)."""
    if not instance_type_fits(instance_type, virtualization):
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
