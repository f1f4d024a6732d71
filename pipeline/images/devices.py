"""EC2 block device names for the boot and scratch volumes, per image target and virtualization, and
the Xen disk numbers a PV guest sees for them.

Defined in one place because four stages depend on them: the AMI's root device (``ami``), the launch
template's scratch volume (``deploy``), the disks ``invoke xen.check`` attaches, and what the guest
finds (the images).

The evidence, and what follows from it:

1. **Names EC2 accepts and recommends** (AWS EC2 user guide, "Device names for volumes on Amazon EC2
   instances"): paravirtual: available ``/dev/sd[a-z]``, ``/dev/sd[a-z][1-15]``, ``/dev/hd[a-z]``,
   ``/dev/hd[a-z][1-15]``; ``/dev/sda1`` reserved for the root volume; ``/dev/sd[f-p]`` (and
   ``[1-6]``) recommended for EBS volumes; ``/dev/sd[b-e]`` used for instance store volumes. HVM: root
   ``/dev/sda1`` or ``/dev/xvda``, ``/dev/sd[f-p]`` recommended for EBS volumes, ``/dev/sd[b-e]``
   instance store. An EBS volume at an instance-store name "can be unpredictable" (same page), so the
   scratch volume is ``/dev/sdf`` for both virtualizations.
2. **How EC2 numbers PV disks**: as Xen numbers the name given (xen-vbd-interface(7): ``sdX[N]`` is
   ``8 << 8 | disk << 4 | N``, ``hdX[N]`` is ``3 << 8 | disk << 6 | N`` (disks c, d: ``22 << 8``),
   ``xvdX[N]`` is ``202 << 8 | disk << 4 | N``). EC2 PV console logs show it: PV-GRUB's "vbd 2048 is
   hd0", "vbd 2051 is hd1", "vbd 2064 is hd2" for ``/dev/sda``, ``/dev/sda3``, ``/dev/sdb``
   (turnkeylinux/buildtasks#25, coreos/bugs#1690), ``device/vbd/2049`` for a ``/dev/sda1`` root
   (medic/cht-core#3173), and ``device/vbd/51728``, ``51744``, ... (``xvdb``, ``xvdc``, ...) on a PV
   instance whose AMI used ``xvd`` names (coreos/bugs#1235; its AMIs passed ``root=/dev/xvda``,
   coreos/bugs#78). So the root ``/dev/sda1`` is vbd 2049, and the scratch ``/dev/sdf`` vbd 2128.
3. **Which disk PV-GRUB boots**: it calls the disks hd0, hd1, ... in increasing vbd number (GRUB 2's
   Xen disk driver keeps that order "for compatibility with pv-grub" to map ``(hdX)`` from legacy
   menu.lst, grub-core/disk/xen/xendisk.c), and reads menu.lst from hd0. A disk with a lower number
   than the root disk takes hd0 and the instance does not boot (turnkeylinux/tracker#693: "vbd 2051
   is hd0" ahead of the root). :func:`check_order` refuses such a mapping.
4. **LING's one disk**: LING drives only xenstore ``device/vbd/51712`` (``core/arch/xen/disk.c``),
   Xen's number for ``xvda``, and starts its disk server whenever that vbd exists (without its disk
   driver compiled in, ``LING_CONFIG_DISK``, it then fails to start: see ``ling.py``'s probe). No name
   in AWS's PV list is 51712 (``/dev/sda`` is 2048, ``/dev/hda`` 768); ``/dev/xvda`` is, and EC2 has
   accepted ``xvd`` names for PV AMIs (item 2), though its table does not list them for PV. So:

   - with GooFS (``app.storage`` other than ``"ram"``) the scratch volume is ``/dev/xvda``: vbd
     51712, numbered after the root's 2049, so the root stays hd0;
   - with ``app.storage = "ram"`` a ling instance gets no scratch volume at all: nothing would read
     it, and vbd 51712 would make a LING without its disk driver fail at start-up.

   Not verified on a PV instance from here: that EC2 still accepts ``/dev/xvda`` next to ``/dev/sda1``
   in a PV launch template. ``aws ec2 get-console-output`` of a ling instance shows PV-GRUB's "vbd N
   is hdM" lines to confirm it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import ConfigError

Virtualization = Literal["hvm", "pv"]

LING_VBD = 51712  # device/vbd/51712 in LING's core/arch/xen/disk.c: (202 << 8) | 0, xvda
PV_ROOT = "/dev/sda1"  # reserved for the root volume of PV AMIs
HVM_ROOT = "/dev/xvda"
EBS_SCRATCH = "/dev/sdf"  # the first of /dev/sd[f-p], the names EBS recommends for data volumes
LING_SCRATCH = "/dev/xvda"  # Xen's vbd 51712: the only disk LING reads

_NAME = re.compile(r"^/dev/(xvd|sd|hd)([a-z])(\d*)$")


@dataclass(frozen=True)
class Device:
    """One volume of an instance: its EC2 device name, its role, and the vbd Xen gives a PV guest."""

    name: str
    role: Literal["root", "scratch"]

    @property
    def vbd(self) -> int:
        return xen_vbd(self.name)

    @property
    def vdev(self) -> str:
        """The name in a Xen disk specification (``vdev=``), which Xen numbers as EC2 does."""
        return self.name.removeprefix("/dev/")


def xen_vbd(device: str) -> int:
    """The xenstore vbd number of an EC2 device name (xen-vbd-interface(7), as EC2 numbers them).

    Raises ValueError for a name outside ``/dev/sd[a-p]``, ``/dev/xvd[a-p]`` (partitions 1-15) and
    ``/dev/hd[a-d]`` (partitions 1-63), the ranges the interface defines.
    """
    m = _NAME.match(device)
    if m is None:
        raise ValueError(f"{device}: not a /dev/sdX[N], /dev/hdX[N] or /dev/xvdX[N] device name")
    kind, letter, part_text = m.groups()
    disk, part = ord(letter) - ord("a"), int(part_text or 0)
    if part_text.startswith("0"):
        raise ValueError(f"{device}: partitions are numbered from 1")
    if kind in ("sd", "xvd") and disk < 16 and part <= 15:
        return ((8 if kind == "sd" else 202) << 8) | (disk << 4) | part
    if kind == "hd" and disk < 4 and part <= 63:
        return ((3 if disk < 2 else 22) << 8) | ((disk % 2) << 6) | part
    raise ValueError(f"{device}: outside the disks and partitions Xen's vbd numbering defines")


def root_device(target: str, virtualization: Virtualization) -> str:
    """The AMI's root device name."""
    if target == "ling":
        return PV_ROOT  # LING boots only as PV (the settings refuse ling with hvm)
    return HVM_ROOT if virtualization == "hvm" else PV_ROOT


def scratch_device(target: str, virtualization: Virtualization, storage: str = "auto") -> str | None:
    """The launch template's device name for the per-instance scratch volume; None: no such volume."""
    if target == "ling":
        return None if storage == "ram" else LING_SCRATCH
    return EBS_SCRATCH


def mapping(target: str, virtualization: Virtualization, storage: str = "auto") -> tuple[Device, ...]:
    """An instance's volumes, the root first; for PV also the order PV-GRUB numbers them (checked)."""
    devices = [Device(root_device(target, virtualization), "root")]
    scratch = scratch_device(target, virtualization, storage)
    if scratch is not None:
        devices.append(Device(scratch, "scratch"))
    if virtualization == "pv" or target == "ling":
        check_order(devices)  # HVM on Nitro: NVMe namespaces, whatever the names
    return tuple(devices)


def check_order(devices: list[Device]) -> None:
    """Refuse a PV mapping in which PV-GRUB's hd0 (the lowest vbd number) is not the root volume."""
    root = next(d for d in devices if d.role == "root")
    first = min(devices, key=lambda d: d.vbd)
    if first is not root:
        raise ConfigError(
            f"{first.name} (vbd {first.vbd}) would be PV-GRUB's hd0 instead of the root volume "
            f"{root.name} (vbd {root.vbd}), so the instance would not find its menu.lst",
            hint="give extra volumes names that Xen numbers after the root's, e.g. /dev/sdf",
        )


def ling_goofs(storage: str) -> bool:
    """Whether a ling image mounts the scratch volume with GooFS (``-goofs``) for ``app.storage``."""
    return storage != "ram"
