"""Which EC2 instance families boot which images, in one table: boot mode, virtualization, architecture.

The pre-flight asks EC2 (DescribeInstanceTypes) about the exact type and region, which is the truth;
this table is what the documentation says per family, for the one-line errors ("t2 boots only legacy
BIOS") and for checking that the local AWS answers as AWS does. Sources, AWS EC2 user guide:

- "Boot modes" (ami-boot.html, "Instance launch behavior with Amazon EC2 boot modes"): an AMI whose
  boot mode is ``uefi`` launches only on instance types that support UEFI.
- "Instance types that support UEFI" (launch-instance-boot-mode.html, instance-type-boot-mode.html):
  Graviton types boot UEFI only; Intel and AMD types boot legacy BIOS, and UEFI as well on every type
  built on the Nitro System except bare metal, DL1, G4ad, P4, u-3tb1 ... u-24tb1 and VT1.
  DescribeInstanceTypes adds Trn1 and Trn1n to the legacy-BIOS-only ones.
- "Instances built on the AWS Nitro System": the previous-generation Xen-based families (below) are
  not, so they boot legacy BIOS only.
- "Virtualization types" and "Previous generation instances": paravirtual images run only on C1, C3,
  M1, M2, M3 and T1 (:data:`pipeline.aws.pv.PV_FAMILIES`, the list the stack template uses too).

The pipeline's images: the beam target's HVM AMI is x86_64 and boots UEFI (``BootMode=uefi``); PV AMIs
(either target) are x86_64 and boot through PV-GRUB, so only the virtualization type matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.aws import pv

UEFI = "uefi"
LEGACY_BIOS = "legacy-bios"
HVM = "hvm"
PARAVIRTUAL = "paravirtual"
X86_64 = "x86_64"

# Xen-based (not Nitro) families: legacy BIOS only.
XEN_FAMILIES = frozenset(
    {"c1", "c3", "c4", "cc2", "cr1", "d2", "f1", "g2", "g3", "g3s", "h1", "hs1", "i2", "i3", "m1", "m2",
     "m3", "m4", "p2", "p3", "r3", "r4", "t1", "t2", "x1", "x1e"}
)  # fmt: skip
# Nitro families that nevertheless boot legacy BIOS only.
NITRO_LEGACY_ONLY = frozenset(
    {"dl1", "g4ad", "p4d", "p4de", "u-3tb1", "u-6tb1", "u-9tb1", "u-12tb1", "u-18tb1", "u-24tb1", "vt1",
     "trn1", "trn1n"}
)  # fmt: skip
LEGACY_ONLY = XEN_FAMILIES | NITRO_LEGACY_ONLY
METAL = "metal"  # bare metal sizes ("c5.metal", "c7i.metal-24xl") boot legacy BIOS only (x86)


@dataclass(frozen=True)
class Boots:
    """What the documentation says a type boots (None: the table does not know the family)."""

    boot_modes: frozenset[str] | None
    virtualization: frozenset[str]


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def documented(instance_type: str) -> Boots | None:
    """The table's answer for an x86 ``instance_type``, or None for families it does not list
    (Graviton and other current families: ask EC2)."""
    fam = family(instance_type)
    virtualization = frozenset({HVM, PARAVIRTUAL} if fam in pv.PV_FAMILIES else {HVM})
    if fam in LEGACY_ONLY or instance_type.split(".", 1)[1].startswith(METAL):
        return Boots(frozenset({LEGACY_BIOS}), virtualization)
    return None


def why_not(instance_type: str, virtualization: str) -> str:
    """Why ``instance_type`` cannot boot the pipeline's ``virtualization`` ("hvm"/"pv") image, for the
    hint of an error (the family's documented rule)."""
    fam = family(instance_type)
    if virtualization == "pv":
        return f"paravirtual images run only on the {pv.families()} families"
    if fam in XEN_FAMILIES:
        return f"{fam} is a Xen-based family, which boots only legacy BIOS; the image boots UEFI"
    if fam in NITRO_LEGACY_ONLY or instance_type.split(".", 1)[1].startswith(METAL):
        return f"{instance_type} boots only legacy BIOS (EC2's exceptions to UEFI); the image boots UEFI"
    return "the image boots UEFI"


def suggestion(virtualization: str) -> str:
    """A type that boots the pipeline's image of ``virtualization``."""
    return "m3.medium" if virtualization == "pv" else "t3.micro"
