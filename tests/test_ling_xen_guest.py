"""The ``__xen_guest`` section checked as Xen's ELF loader checks it (xen/common/libelf/
libelf-dominfo.c: ``elf_xen_parse_guest_info``, ``elf_xen_note_check``, ``elf_xen_addr_calc_check``),
on real ELF kernels assembled here, through both places that read it: the LING image verification
(``elfcheck``) and the PV kernel check before a Xen boot (``pvkernel``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pipeline.images import elfcheck, xenguest
from pipeline.xen import pvkernel

# LING's own string, core/arch/xen/startup.S (x86_64)
LING = "GUEST_OS=Ling,XEN_VER=xen-3.0,VIRT_BASE=0x0,ELF_PADDR_OFFSET=0x0,HYPERCALL_PAGE=0x1,LOADER=generic"


def kernel(tmp: Path, guest: str, base: int = 0) -> Path:
    """A static x86-64 ELF linked at ``base`` with ``guest`` as its __xen_guest section."""
    (tmp / "k.S").write_text(
        "\t.section __xen_guest\n"
        f'\t.ascii "{guest}"\n'
        "\t.byte 0\n"
        "\t.text\n\t.globl _start\n_start:\n\thlt\n\t.fill 4096, 1, 0x90\n"
    )
    (tmp / "k.lds").write_text(
        f"ENTRY(_start)\nSECTIONS\n{{\n  . = 0x{base:x};\n  .text : {{ *(.text) }}\n}}\n"
    )
    subprocess.run(["as", "--64", "-o", tmp / "k.o", tmp / "k.S"], check=True)
    subprocess.run(["ld", "-T", tmp / "k.lds", "-nostdlib", "-o", tmp / "k.elf", tmp / "k.o"], check=True)
    return tmp / "k.elf"


@pytest.mark.parametrize(
    ("guest", "base", "refused"),
    [
        (LING, 0, None),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0", 0, "generic loader or Linux, and this one has LOADER=(missing)"),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=bogus", 0, "LOADER=bogus, GUEST_OS=Ling"),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=generic-v2", 0, None),  # Xen compares 7 characters
        ("GUEST_OS=linux,XEN_VER=xen-3.0", 0, None),  # a Linux image needs no LOADER
        ("GUEST_OS=Ling,LOADER=generic", 0, "built for Xen 3.0, and this one has XEN_VER=(missing)"),
        ("GUEST_OS=Ling,XEN_VER=xen-2.0,LOADER=generic", 0, "XEN_VER=xen-2.0"),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0-x86_64,LOADER=generic", 0, None),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=generic,ELF_PADDR_OFFSET=0x0", 0, "VIRT_BASE is not"),
        # the kernel is linked at 0: a VIRT_BASE above it leaves the entry point below the kernel
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=generic,VIRT_BASE=0x100000", 0, "lies outside"),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=generic,VIRT_BASE=0x100000", 0x100000, None),
        ("GUEST_OS=Ling,XEN_VER=xen-3.0,LOADER=generic,VIRT_ENTRY=0x900000", 0, "entry point 0x900000"),
    ],
)
def test_xen_loader_rules(tmp_path: Path, guest: str, base: int, refused: str | None) -> None:
    elf = kernel(tmp_path, guest, base)
    with elf.open("rb") as f:
        reason = xenguest.refusal(guest, elfcheck.loadable(ELFFile(f)))
    if refused is None:
        assert reason is None
        assert pvkernel.inspect(elf.read_bytes()).xen == "__xen_guest"
        return
    assert reason is not None and refused in reason
    with pytest.raises(pvkernel.NotPvKernel) as err:
        pvkernel.inspect(elf.read_bytes())
    assert f"elf: Xen would refuse to start it: {reason} (__xen_guest: {guest!r})" == str(err.value)


def test_fields_are_parsed_as_xen_parses_them() -> None:
    f = xenguest.fields("GUEST_OS=Ling,BSD_SYMTAB,XEN_VER=xen-3.0,GUEST_OS=Other\0LOADER=generic")
    assert f == {"GUEST_OS": "Other", "BSD_SYMTAB": "", "XEN_VER": "xen-3.0"}  # stops at the NUL
    long = xenguest.fields("L" * 40 + "=x,XEN_VER=" + "v" * 200)
    assert long == {"L" * 31: "x", "XEN_VER": "v" * 127}  # Xen's name[32] and value[128] buffers
    assert [xenguest._number(v) for v in ("0x1f", "010", "12abc", "zz")] == [31, 8, 12, 0]  # strtoull(.., 0)


def test_a_ling_image_without_loader_generic_is_refused_by_the_image_check(tmp_path: Path) -> None:
    elf = kernel(tmp_path, "GUEST_OS=Ling,XEN_VER=xen-3.0,VIRT_BASE=0x0,HYPERCALL_PAGE=0x1")
    with pytest.raises(elfcheck.ImageError) as err:
        elfcheck.read(elf)
    line = str(err.value)
    assert line.startswith("k.elf: Xen would refuse to start it: Xen loads only images for the generic")
    assert "\n" not in line and "(hint:" in line
