"""EC2 block device names for the boot and scratch volumes, per image target and virtualization.

Defined in one place because three stages depend on them: the AMI's root device (``ami``), the
launch template's scratch volume (``deploy``) and how the guest finds its scratch disk (the images).

What is known:
- HVM on Nitro: every EBS volume appears as an NVMe namespace whatever name is given; the name only
  orders the mapping. The beam init script therefore finds the scratch disk by content, not by name.
- PV (Xen): Linux's blkfront maps ``/dev/sdX`` and ``/dev/xvdX`` names to ``xvdX``; EC2 PV AMIs put
  the root file system on ``/dev/sda1`` (PV-GRUB reads it as ``hd0``).
- EC2's device naming table for PV instances allows ``/dev/sd[a-z]``, ``/dev/sd[a-z][1-15]``,
  ``/dev/hd[a-z]`` and ``/dev/hd[a-z][1-15]``; ``/dev/sda1`` is reserved for the root volume and
  ``/dev/sd[f-p]`` are recommended for EBS data volumes. ``/dev/xvd*`` names are not listed for PV.

The ``ling`` target (LING, Erlang on Xen) is different: LING drives exactly one block device, the
Xen virtual block device with xenstore id 51712 (``device/vbd/51712`` in LING's ``core/arch/xen/disk.c``).
51712 = 202 << 8 is Xen's number for ``xvda``, the whole first disk. GooFS (``-goofs MOUNT``) formats
that disk on first boot when its sector 0 is all zeros, so it must be the zeroed scratch volume and
never the boot volume.

- Root: ``/dev/sda1``, as for every EC2 PV AMI. Under the naming below that is ``xvda1`` (51713), a
  different vbd from 51712, so LING never touches (or formats) its boot volume.
- Scratch: ``/dev/sda``. Modern Linux PV guests on EC2 see ``/dev/sda1`` as ``xvda1`` and
  ``/dev/sdf`` as ``xvdf``, which means EC2 gives a ``/dev/sdX[N]`` mapping the Xen number of
  ``xvdX[N]``; then ``/dev/sda`` is 51712, the one disk LING uses.

What is NOT known (no PV instance could be launched from here; verify on a real PV instance type
before relying on GooFS):
- that EC2 numbers PV vbds as above (older RHEL kernels named ``/dev/sda1`` ``xvde1``, which fits
  SCSI-major numbering instead; then no EC2 name gives 51712 and GooFS cannot work on EC2 at all);
- that EC2 accepts ``/dev/sda`` next to the root ``/dev/sda1`` in one block device mapping;
- that PV-GRUB still picks the root volume as ``hd0`` when 51712 is also present (it reads the
  first vbd it enumerates);
- that the LING build in use has its disk driver compiled in (LING's last sources leave
  ``LING_CONFIG_DISK`` commented out; without it a present vbd 51712 may crash LING at start-up).
  This is why the ling boot line carries ``-goofs`` only when the app uses the scratch volume.
"""

from __future__ import annotations

from typing import Literal

Virtualization = Literal["hvm", "pv"]

# LING's one disk: xenstore device/vbd/51712 = (202 << 8) | 0 = Xen's xvda.
LING_VBD = 51712


def root_device(target: str, virtualization: Virtualization) -> str:
    """The AMI's root device name."""
    if target == "ling":
        # LING boots only as PV (the settings refuse ling with hvm), so the PV name is the only one,
        # whichever virtualization a caller asks about.
        return "/dev/sda1"  # PV-GRUB hd0; xvda1 (51713), not LING's disk
    return "/dev/xvda" if virtualization == "hvm" else "/dev/sda1"


def scratch_device(target: str, virtualization: Virtualization) -> str:
    """The launch template's device name for the per-instance scratch volume."""
    if target == "ling":
        return "/dev/sda"  # expected to be xvda (vbd 51712), LING's only disk: see the module notes
    return "/dev/sdb"


def xen_vbd(device: str) -> int:
    """The Xen vbd number a PV guest would see for an EC2 device name, under the naming above.

    ``/dev/sdX[N]`` and ``/dev/xvdX[N]`` -> ``(202 << 8) | (16 * (X - 'a') + N)``; the model this
    module relies on (see the notes), not a verified EC2 fact.
    """
    name = device.removeprefix("/dev/")
    for prefix in ("xvd", "sd"):
        if name.startswith(prefix) and len(name) > len(prefix):
            letter, part = name[len(prefix)], name[len(prefix) + 1 :]
            if "a" <= letter <= "p" and (part == "" or (part.isdigit() and 1 <= int(part) <= 15)):
                return (202 << 8) | (16 * (ord(letter) - ord("a")) + int(part or 0))
    raise ValueError(f"{device}: not a /dev/sdX[N] or /dev/xvdX[N] device name")
