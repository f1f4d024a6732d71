"""EC2 block device names for the boot and scratch volumes, per image target and virtualization.

Defined in one place because three stages depend on them: the AMI's root device (``ami``), the
launch template's scratch volume (``deploy``) and how the guest finds its scratch disk (the images).

What is known:
- HVM on Nitro: every EBS volume appears as an NVMe namespace whatever name is given; the name only
  orders the mapping. The beam init script therefore finds the scratch disk by content, not by name.
- PV (Xen): Linux's blkfront maps ``/dev/sdX`` and ``/dev/xvdX`` names to ``xvdX``; EC2 PV AMIs put
  the root file system on ``/dev/sda1`` (PV-GRUB reads it as ``hd0``).
"""

from __future__ import annotations

from typing import Literal

Virtualization = Literal["hvm", "pv"]


def root_device(target: str, virtualization: Virtualization) -> str:
    """The AMI's root device name."""
    return "/dev/xvda" if virtualization == "hvm" else "/dev/sda1"


def scratch_device(target: str, virtualization: Virtualization) -> str:
    """The launch template's device name for the per-instance scratch volume."""
    return "/dev/sdb"
