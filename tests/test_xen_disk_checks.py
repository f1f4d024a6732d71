"""The checks made before a PV disk boots: menu.lst subset, PV kernel detection, PV-GRUB's search.

Fast: disks are small ext2 images made with mke2fs, kernels are tiny ELF files assembled here (with
Xen ELF notes, with LING's ``__xen_guest`` section, or with neither) and a bzImage built around one.
"""

from __future__ import annotations

import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, ImageError
from pipeline.images import disk as shared_disk
from pipeline.xen import menulst, pvdisk, pvkernel, recipe
from tests.project import REPO, copy_project, invoke
from tests.xen_disks import ext2_disk, menu_lst

XEN_NOTE_ASM = """
  .section .note.Xen, "a", @note
  .balign 4
  .long 4, 8, 1          # namesz, descsz, XEN_ELFNOTE_ENTRY
  .asciz "Xen"
  .quad _start
  .text
  .globl _start
_start:
  hlt
"""
XEN_GUEST_ASM = """
  .section __xen_guest
  .ascii "GUEST_OS=Ling,XEN_VER=xen-3.0,VIRT_BASE=0x0,HYPERCALL_PAGE=0x1,LOADER=generic"
  .byte 0
  .text
  .globl _start
_start:
  hlt
"""
PLAIN_ASM = """
  .text
  .globl _start
_start:
  hlt
"""


def elf(tmp: Path, name: str, source: str) -> Path:
    (tmp / f"{name}.S").write_text(source)
    subprocess.run(["as", "--64", "-o", tmp / f"{name}.o", tmp / f"{name}.S"], check=True)
    subprocess.run(["ld", "-o", tmp / name, tmp / f"{name}.o"], check=True)
    return tmp / name


def bzimage(payload_elf: bytes) -> bytes:
    """A Linux bzImage shell (boot protocol 2.15) whose payload is ``payload_elf``, xz-compressed."""
    setup_sects = 1
    header = bytearray((setup_sects + 1) * 512)
    header[0x1F1] = setup_sects
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, 0x020F)
    payload = lzma.compress(payload_elf, format=lzma.FORMAT_XZ)
    struct.pack_into("<II", header, 0x248, 0, len(payload))
    return bytes(header) + payload


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("kernels")
    out = {
        "notes": elf(tmp, "notes", XEN_NOTE_ASM),
        "xen_guest": elf(tmp, "xen_guest", XEN_GUEST_ASM),
        "plain": elf(tmp, "plain", PLAIN_ASM),
    }
    out["bzimage"] = tmp / "bzImage"
    out["bzimage"].write_bytes(bzimage(out["notes"].read_bytes()))
    out["bzimage_plain"] = tmp / "bzImage-plain"
    out["bzimage_plain"].write_bytes(bzimage(out["plain"].read_bytes()))
    return out


# -- menu.lst ------------------------------------------------------------------------------------------


def test_menu_lst_of_the_disk_templates_parses() -> None:
    text = (
        "default 0\ntimeout 0\ntitle erlang_web 0.1.0 (dev, build abc)\nroot (hd0)\n"
        "kernel /boot/vmlinuz console=hvc0 quiet panic=-1\ninitrd /boot/initrd.img\n"
    )
    menu = menulst.parse(text)
    assert menu.boot.title == "erlang_web 0.1.0 (dev, build abc)"
    assert (menu.boot.partition, menu.boot.kernel, menu.boot.initrd) == (
        None,
        "/boot/vmlinuz",
        "/boot/initrd.img",
    )
    assert menu.boot.args == "console=hvc0 quiet panic=-1"


def test_menu_lst_partition_root_and_default_entry() -> None:
    text = (
        "default 1\n# two entries\ntitle a\nroot (hd0)\nkernel /a\n\ntitle b\nroot (hd0,2)\nkernel /b x=1\n"
    )
    menu = menulst.parse(text)
    assert (menu.boot.title, menu.boot.partition, menu.boot.kernel, menu.boot.initrd) == ("b", 2, "/b", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "hiddenmenu\ntitle a\nroot (hd0)\nkernel /k\n",
            r"menu.lst:1: 'hiddenmenu': 'hiddenmenu' is not accepted",
        ),
        ("title a\nroot (hd0)\nlinux /k\n", r"menu.lst:3: 'linux /k': 'linux' is not accepted"),
        ("default=0\ntitle a\nroot (hd0)\nkernel /k\n", r"menu.lst:1: .*'default' is not accepted"),
        ("title a\nroot (hd0,msdos1)\nkernel /k\n", r"menu.lst:2: .*root must be \(hd0\)"),
        ("title a\nroot (hd1)\nkernel /k\n", r"menu.lst:2: .*root must be \(hd0\)"),
        ("title a\nroot (hd0)\nkernel vmlinuz\n", r"menu.lst:3: .*'vmlinuz' is not an absolute path"),
        ("title a\nroot (hd0)\ninitrd /i\nkernel /k\n", r"menu.lst:3: .*initrd before kernel"),
        ("title a\nroot (hd0)\nkernel /k\nkernel /k2\n", r"menu.lst:4: .*a second kernel line"),
        ("title a\nkernel /k\n", r"menu.lst:1: entry 'a' has no root"),
        ("title a\nroot (hd0)\n", r"menu.lst:1: entry 'a' has no kernel"),
        ("kernel /k\n", r"menu.lst:1: .*kernel outside an entry"),
        (
            "title a\nroot (hd0)\nkernel /k\ntimeout 5\n",
            r"menu.lst:4: .*timeout must come before the first title",
        ),
        ("default 2\ntitle a\nroot (hd0)\nkernel /k\n", r"menu.lst:1: default 2 but there are 1 entries"),
        ("timeout 0\n", r"menu.lst: no boot entry"),
        (
            "title a\nroot (hd0)\nkernel /k " + "x" * 1024 + "\n",
            r"menu.lst:3: kernel command line is 1024 bytes",
        ),
    ],
)
def test_menu_lst_outside_the_subset_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as err:
        menulst.parse(text)
    assert "\n" not in str(err.value)
    assert "(hint: " in str(err.value)


# -- PV kernels ----------------------------------------------------------------------------------------


def test_kernels_with_xen_notes_or_xen_guest_section_are_pv(kernels: dict[str, Path]) -> None:
    notes = pvkernel.inspect(kernels["notes"].read_bytes())
    assert (notes.packing, notes.xen) == ("elf", "elf notes")
    ling = pvkernel.inspect(kernels["xen_guest"].read_bytes())
    assert (ling.packing, ling.xen) == ("elf", "__xen_guest")
    bz = pvkernel.inspect(kernels["bzimage"].read_bytes())
    assert (bz.packing, bz.xen, bz.entry) == ("bzImage (xz)", "elf notes", notes.entry)
    gz = subprocess.run(["gzip", "-c", kernels["xen_guest"]], capture_output=True, check=True).stdout
    assert pvkernel.inspect(gz).packing == "gzip elf"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("plain", "elf: the ELF has neither Xen ELF notes nor a __xen_guest section"),
        ("bzimage_plain", r"bzImage \(xz\): the ELF has neither"),
    ],
)
def test_kernels_without_xen_support_are_not_pv(kernels: dict[str, Path], name: str, message: str) -> None:
    with pytest.raises(pvkernel.NotPvKernel, match=message):
        pvkernel.inspect(kernels[name].read_bytes())


def test_a_kernel_compressed_in_a_way_pv_grub_cannot_read_is_refused(kernels: dict[str, Path]) -> None:
    """Debian's cloud kernel is an LZ4 bzImage: Xen-capable, but PV-GRUB cannot decompress it."""
    data = bytearray(bzimage(kernels["notes"].read_bytes()))
    start = 2 * 512
    data[start : start + 4] = b"\x02\x21\x4c\x18"  # the payload now starts like the kernel's LZ4 format
    with pytest.raises(
        pvkernel.NotPvKernel, match="bzImage payload is lz4-compressed; PV-GRUB reads gzip"
    ) as err:
        pvkernel.inspect(bytes(data))
    assert "its ELF (a bzImage's payload, decompressed), plain or gzip/xz-compressed" in err.value.hint


def test_non_kernels_and_32_bit_kernels_are_not_pv(tmp_path: Path) -> None:
    with pytest.raises(
        pvkernel.NotPvKernel, match="neither an ELF file, a compressed ELF file nor a Linux bzImage"
    ):
        pvkernel.inspect(b"#!/bin/sh\necho hello\n")
    (tmp_path / "k.S").write_text(XEN_NOTE_ASM.replace(".quad _start", ".long _start, 0"))
    subprocess.run(["as", "--32", "-o", tmp_path / "k.o", tmp_path / "k.S"], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-o", tmp_path / "k", tmp_path / "k.o"], check=True)
    with pytest.raises(pvkernel.NotPvKernel, match="ELF32 EM_386; a 64-bit PV-GRUB boots only x86-64"):
        pvkernel.inspect((tmp_path / "k").read_bytes())


# -- disks, searched as PV-GRUB does -------------------------------------------------------------------


def test_whole_disk_menu_lst_is_found_and_checked(tmp_path: Path, kernels: dict[str, Path]) -> None:
    disk = ext2_disk(
        tmp_path / "pv.img",
        {
            "/boot/vmlinuz": kernels["bzimage"],
            "/boot/initrd": b"initrd bytes",
            "/boot/grub/menu.lst": menu_lst("/boot/vmlinuz", "/boot/initrd"),
        },
    )
    found = pvdisk.inspect(disk)
    assert found.menu_lst == "(hd0)/boot/grub/menu.lst"
    assert (found.kernel.packing, found.kernel_size, found.initrd_size) == (
        "bzImage (xz)",
        kernels["bzimage"].stat().st_size,
        len(b"initrd bytes"),
    )


def test_the_shared_pv_disk_layout_passes(tmp_path: Path, kernels: dict[str, Path]) -> None:
    """A disk made by the image targets' own pv_disk (pipeline/images/disk.py) is what PV-GRUB accepts."""
    text = "default 0\ntimeout 0\ntitle x\nroot (hd0)\nkernel /boot/ling.img -home /x\n"
    disk = shared_disk.pv_disk(tmp_path / "pv.img", {"/boot/ling.img": kernels["xen_guest"]}, text)
    found = pvdisk.inspect(disk)
    assert (found.menu_lst, found.kernel.xen, found.entry.args) == (
        "(hd0)/boot/grub/menu.lst",
        "__xen_guest",
        "-home /x",
    )


def test_partitioned_disk_is_searched_in_pv_grub_order(tmp_path: Path, kernels: dict[str, Path]) -> None:
    """MBR partition 2 (hd0,1) holds /grub/menu.lst and /boot/grub/menu.lst: /boot/grub wins."""
    good = "default 0\ntimeout 0\ntitle good\nroot (hd0,1)\nkernel /k\n"
    fs = ext2_disk(
        tmp_path / "fs.img",
        {"/k": kernels["notes"], "/boot/grub/menu.lst": good.encode(), "/grub/menu.lst": b"junk\n"},
        size_mb=8,
    )
    disk = tmp_path / "mbr.img"
    start = 2048  # sectors; partition 1 is empty, partition 2 holds the file system
    mbr = bytearray(512)
    struct.pack_into("<B3xB3xII", mbr, 446 + 16, 0x80, 0x83, start, fs.stat().st_size // 512)
    mbr[510:512] = b"\x55\xaa"
    with disk.open("wb") as f:
        f.write(mbr)
        f.seek(start * 512)
        f.write(fs.read_bytes())
    found = pvdisk.inspect(disk)
    assert (found.menu_lst, found.entry.title, found.entry.partition) == (
        "(hd0,1)/boot/grub/menu.lst",
        "good",
        1,
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"/boot/vmlinuz": b"x"},
            r"no menu.lst in any place PV-GRUB looks \(\(hd0\)/boot/grub, \(hd0,0\)/boot/grub",
        ),
        (
            {"/boot/grub/menu.lst": menu_lst("/boot/vmlinuz-missing")},
            r"\(hd0\)/boot/grub/menu.lst:3: kernel /boot/vmlinuz-missing is not a file on \(hd0\)",
        ),
        (
            {"/boot/grub/menu.lst": menu_lst("/boot/grub", None)},
            r"kernel /boot/grub is not a file on \(hd0\)",  # a directory is not a kernel
        ),
        (
            {"/boot/vmlinuz": "plain", "/boot/grub/menu.lst": menu_lst("/boot/vmlinuz", "/boot/initrd")},
            r"kernel /boot/vmlinuz is not a Xen PV kernel: elf: the ELF has neither",
        ),
        (
            {"/boot/vmlinuz": "notes", "/boot/grub/menu.lst": menu_lst("/boot/vmlinuz", "/boot/initrd")},
            r"initrd /boot/initrd is not a file on \(hd0\)",
        ),
        (
            {
                "/boot/vmlinuz": "notes",
                "/boot/grub/menu.lst": b"title x\nroot (hd0)\nkernel /boot/vmlinuz\nboot\n",
            },
            r"pv.img:\(hd0\)/boot/grub/menu.lst:4: 'boot': 'boot' is not accepted",
        ),
    ],
    ids=[
        "no-menu-lst",
        "missing-kernel",
        "kernel-is-a-directory",
        "not-pv-kernel",
        "missing-initrd",
        "bad-menu-lst",
    ],
)
def test_bad_disks_are_refused_with_one_line_naming_the_problem(
    tmp_path: Path, kernels: dict[str, Path], files: dict[str, bytes | str], message: str
) -> None:
    content: dict[str, bytes | Path] = {
        path: kernels[value] if isinstance(value, str) else value for path, value in files.items()
    }
    disk = ext2_disk(tmp_path / "pv.img", content, size_mb=8)
    with pytest.raises(ImageError, match=message) as err:
        pvdisk.inspect(disk)
    assert "\n" not in str(err.value) and "(hint: " in str(err.value)


def test_a_disk_without_a_file_system_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(1 << 20))
    with pytest.raises(ImageError, match=r"blank.img: no ext2/3/4 file system on the whole disk or in MBR"):
        pvdisk.inspect(disk)


# -- ami/xen.toml --------------------------------------------------------------------------------------


def test_recipe_pins_every_package_it_uses() -> None:
    r = recipe.load(REPO)
    assert r.hypervisor.package in r.packages and r.dom0.kernel_package in r.packages
    assert all(v and v[0].isdigit() for v in r.packages.values())
    assert r.qemu.smp == 1 and r.qemu.cpu == "Westmere"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "memory_mb = 320",
            "memory_mb = 12",
            r"ami/xen.toml: dom0.memory_mb: expected integer 128-4096, got 12",
        ),
        (
            'package = "xen-hypervisor-4.17-amd64"',
            'package = "xen-hypervisor-9"',
            r"hypervisor.package: package 'xen-hypervisor-9' is not pinned",
        ),
        (
            '"libc6" = "2.36-9+deb12u14"',
            '"libc6" = ""',
            r'packages."libc6": expected an exact version string',
        ),
        (
            'cmdline = "console=hvc0 quiet"',
            'cmdline = "a,b"',
            r"dom0.cmdline: expected a non-empty string without ','",
        ),
        ("[timeouts]", "[timeout]", r"timeouts.toolstack: missing"),
    ],
)
def test_bad_recipe_values_name_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = (REPO / "ami" / "xen.toml").read_text()
    assert old in text
    (tmp_path / "ami").mkdir()
    (tmp_path / "ami" / "xen.toml").write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as err:
        recipe.load(tmp_path)
    assert "\n" not in str(err.value)


# -- the task ------------------------------------------------------------------------------------------


def test_xen_check_task_refuses_a_bad_disk_in_one_line_before_booting(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    disk = ext2_disk(tmp_path / "no-menu.img", {"/boot/vmlinuz": b"not a kernel"}, size_mb=8)
    done = invoke(project, "xen.check", "--disk", str(disk), timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no-menu.img: no menu.lst in any place PV-GRUB looks ((hd0)/boot/grub,")
    assert "(hint: write /boot/grub/menu.lst on the disk's file system)" in last
    assert not (project / ".pipeline" / "xen").exists() or not list((project / ".pipeline" / "xen").iterdir())


def test_xen_check_task_without_a_build_says_how_to_make_one(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    done = invoke(project, "xen.check", timeout=120)
    assert done.returncode == 1
    assert "error: no build of the current sources and settings" in done.stderr
    assert "(hint: run: invoke build --env dev)" in done.stderr
