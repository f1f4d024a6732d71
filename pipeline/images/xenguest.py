"""The legacy ``__xen_guest`` section read as Xen's ELF loader reads it, and refused where it refuses.

Xen's libelf (``xen/common/libelf/libelf-dominfo.c``) is what starts a PV kernel, in the hypervisor
for dom0 and in the domain builder that PV-GRUB and the toolstack use for guests. It reads the
``__xen_guest`` section only when the ELF has no Xen ELF notes, and then:

- parses ``NAME=VALUE`` items separated by commas up to the first NUL (``elf_xen_parse_guest_info``;
  names are kept to 31 characters and values to 127, the sizes of its buffers); numbers
  (``VIRT_BASE``, ``VIRT_ENTRY``, ``ELF_PADDR_OFFSET``) are read with ``strtoull(value, NULL, 0)``;
- refuses the image unless ``LOADER`` starts with ``generic`` or ``GUEST_OS`` starts with ``linux``,
  and unless ``XEN_VER`` starts with ``xen-3.0`` (``elf_xen_note_check``);
- refuses ``ELF_PADDR_OFFSET`` without ``VIRT_BASE``, and an entry point or ``VIRT_BASE`` outside the
  kernel's loaded range (``elf_xen_addr_calc_check``; for ``__xen_guest`` kernels the physical offset
  defaults to ``VIRT_BASE``).

LING's own string (``core/arch/xen/startup.S``, x86_64) is ``GUEST_OS=Ling,XEN_VER=xen-3.0,
VIRT_BASE=0x0,ELF_PADDR_OFFSET=0x0,HYPERCALL_PAGE=0x1,LOADER=generic``: a Ling guest loads only because
of ``LOADER=generic``.
"""

from __future__ import annotations

from dataclasses import dataclass

NAME_MAX = 31  # char name[32] with its terminating NUL
VALUE_MAX = 127  # char value[128]
_MASK = (1 << 64) - 1  # Xen computes addresses in 64-bit unsigned arithmetic


@dataclass(frozen=True)
class Loadable:
    """What the loader needs from the ELF besides the section: the entry and the loaded range."""

    entry: int  # e_entry
    start: int  # lowest p_paddr of the PT_LOAD segments
    end: int  # highest p_paddr + p_memsz


def fields(text: str) -> dict[str, str]:
    """``NAME=VALUE`` items of a ``__xen_guest`` string, as Xen's parser keeps them (the last wins)."""
    out: dict[str, str] = {}
    for item in text.split("\0", 1)[0].split(","):
        if not item:
            continue
        name, _, value = item.partition("=")
        out[name[:NAME_MAX]] = value[:VALUE_MAX]
    return out


def refusal(text: str, elf: Loadable) -> str | None:
    """Why Xen would refuse a kernel with this ``__xen_guest`` string, or None if it would load it."""
    f = fields(text)
    loader, guest_os, xen_ver = f.get("LOADER", ""), f.get("GUEST_OS", ""), f.get("XEN_VER", "")
    if not loader.startswith("generic") and not guest_os.startswith("linux"):
        return (
            "Xen loads only images for the generic loader or Linux, and this one has "
            f"LOADER={loader or '(missing)'}, GUEST_OS={guest_os or '(missing)'}"
        )
    if not xen_ver.startswith("xen-3.0"):
        return f"Xen loads only images built for Xen 3.0, and this one has XEN_VER={xen_ver or '(missing)'}"
    virt_base = _number(f["VIRT_BASE"]) if "VIRT_BASE" in f else None
    paddr_offset = _number(f["ELF_PADDR_OFFSET"]) if "ELF_PADDR_OFFSET" in f else None
    if paddr_offset is not None and virt_base is None:
        return "ELF_PADDR_OFFSET is set but VIRT_BASE is not"
    base = virt_base or 0
    offset = (base - (base if paddr_offset is None else paddr_offset)) & _MASK
    kstart, kend = (elf.start + offset) & _MASK, (elf.end + offset) & _MASK
    entry = _number(f["VIRT_ENTRY"]) if "VIRT_ENTRY" in f else elf.entry
    if kstart > kend or not kstart <= entry <= kend or base > kstart:
        return (
            f"the entry point 0x{entry:x} or VIRT_BASE 0x{base:x} lies outside the loaded kernel "
            f"0x{kstart:x}-0x{kend:x}"
        )
    return None


def _number(value: str) -> int:
    """``strtoull(value, NULL, 0)``: hex with 0x, octal with a leading 0, else decimal; stops at the
    first character that is not a digit of the base (0 when there is none)."""
    text = value.strip()
    base, digits = 10, "0123456789"
    if text[:2].lower() == "0x":
        base, digits, text = 16, "0123456789abcdef", text[2:]
    elif text.startswith("0"):
        base, digits = 8, "01234567"
    n = 0
    for ch in text.lower():
        if ch not in digits:
            break
        n = (n * base + digits.index(ch)) & _MASK
    return n
