"""Images Amazon publishes that the pipeline looks up, put into the local AWS as Amazon-owned images.

moto ships no kernel images (AKIs) and its API only registers images owned by the caller, so the local
AWS adds them through moto's backend objects inside its own process, the way moto loads its built-in
Amazon images. The pipeline then finds them with the same DescribeImages call it makes on AWS
(owner amazon, name ``pv-grub-hd0_*``, x86_64).

The ids are the PV-GRUB AKIs listed in the AWS EC2 user guide ("User provided kernels": version 1.05,
x86_64 and i386) and the earlier x86_64 1.04 ids still published in the same regions. Creation dates
are not published with the list; the ones below only order the versions, as on AWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# An Amazon-owned account id, as on moto's own built-in Amazon images; the owner alias is what
# DescribeImages(Owners=["amazon"]) matches.
AMAZON_OWNER_ID = "137112412989"
AMAZON_ALIAS = "amazon"
CREATED = {"1.04": datetime(2014, 6, 1, tzinfo=UTC), "1.05": datetime(2015, 6, 1, tzinfo=UTC)}


@dataclass(frozen=True)
class Kernel:
    image_id: str
    version: str
    arch: str  # "x86_64" or "i386"

    @property
    def name(self) -> str:
        return f"pv-grub-hd0_{self.version}-{self.arch}.gz"


def _kernels(hd0_105_x86: str, hd0_105_i386: str, hd0_104_x86: str) -> tuple[Kernel, ...]:
    return (
        Kernel(hd0_105_x86, "1.05", "x86_64"),
        Kernel(hd0_105_i386, "1.05", "i386"),
        Kernel(hd0_104_x86, "1.04", "x86_64"),
    )


PV_GRUB: dict[str, tuple[Kernel, ...]] = {
    "us-east-1": _kernels("aki-5c21674b", "aki-04206613", "aki-919dcaf8"),
    "us-west-1": _kernels("aki-59cc8239", "aki-43cf8123", "aki-880531cd"),
    "us-west-2": _kernels("aki-70cb0e10", "aki-7a69931a", "aki-fc8f11cc"),
    "eu-west-1": _kernels("aki-dc9ed9af", "aki-1c9fd86f", "aki-52a34525"),
    "eu-central-1": _kernels("aki-931fe3fc", "aki-1419e57b", "aki-184c7a05"),
    "ap-northeast-1": _kernels("aki-7077ab11", "aki-f975a998", "aki-176bf516"),
    "ap-southeast-1": _kernels("aki-73a50110", "aki-17a40074", "aki-503e7402"),
    "ap-southeast-2": _kernels("aki-66506305", "aki-ba5665d9", "aki-c362fff9"),
    "sa-east-1": _kernels("aki-912fbcfd", "aki-7cd34110", "aki-5553f448"),
    "us-gov-west-1": _kernels("aki-9ee55bff", "aki-5ee9573f", "aki-1de98d3e"),
}


def seed(account_id: str) -> int:
    """Add the PV-GRUB AKIs to moto's EC2 backends of ``account_id``; return how many were added.

    Must run inside the process that serves the local AWS (it uses moto's in-memory backends).
    """
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami

    added = 0
    for region, kernels in PV_GRUB.items():
        backend: Any = ec2_backends[account_id][region]
        for k in kernels:
            if k.image_id in backend.amis:
                continue
            backend.amis[k.image_id] = Ami(
                backend,
                ami_id=k.image_id,
                name=k.name,
                description=f"PV-GRUB {k.version} ({k.arch}) for paravirtual AMIs",
                owner_id=AMAZON_OWNER_ID,
                owner_alias=AMAZON_ALIAS,
                public=True,
                virtualization_type="paravirtual",
                architecture=k.arch,
                image_type="kernel",
                image_location=f"{AMAZON_ALIAS}/{k.name}",
                hypervisor="xen",
                root_device_type="instance-store",
                creation_date=CREATED[k.version].replace(tzinfo=None),
                region_name=f"{region}a",
            )
            added += 1
    return added
