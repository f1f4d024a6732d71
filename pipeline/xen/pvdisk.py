"""Read a PV disk image the way EC2's PV-GRUB ``hd0`` AKI does, and check it before booting it.

PV-GRUB looks for ``menu.lst`` in this order and takes the first it finds (AWS user guide, "User
provided kernels")::

    (hd0)/boot/grub  (hd0,0)/boot/grub  (hd0,0)/grub  (hd0,1)/boot/grub  (hd0,1)/grub  ...  (hd0,3)/grub

``(hd0)`` is a file system on the whole disk, ``(hd0,N)`` one in MBR partition N+1. The check finds
menu.lst in that order, parses it (:mod:`pipeline.xen.menulst`), and checks that the boot entry's
kernel and initrd exist on its root and that the kernel is a 64-bit Xen PV kernel. Files are read with
e2fsprogs' ``debugfs`` (ext2/3/4, what the images here use); nothing is mounted or written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import ImageError, ToolFailed
from pipeline.proc import run
from pipeline.xen import menulst, pvkernel

SECTOR = 512
_EXT_MAGIC_AT = 1024 + 56  # s_magic in the superblock at byte 1024 of the file system
_EXT_MAGIC = 0xEF53


def search_order() -> list[tuple[int | None, str]]:
    """``(partition, directory)`` in PV-GRUB's order; partition None is the whole disk."""
    order: list[tuple[int | None, str]] = [(None, "/boot/grub")]
    for part in range(4):
        order += [(part, "/boot/grub"), (part, "/grub")]
    return order


def device(partition: int | None) -> str:
    return "(hd0)" if partition is None else f"(hd0,{partition})"


@dataclass(frozen=True)
class PvDisk:
    """What PV-GRUB would boot from the disk."""

    path: Path
    menu_lst: str  # where it was found, e.g. "(hd0)/boot/grub/menu.lst"
    menu: menulst.MenuLst
    kernel: pvkernel.PvKernel
    kernel_size: int
    initrd_size: int | None

    @property
    def entry(self) -> menulst.Entry:
        return self.menu.boot


def inspect(path: Path) -> PvDisk:
    """Find and check what PV-GRUB would boot from the raw disk image at ``path``.

    Raises :class:`ImageError` (one line naming the disk, the file and the problem) when PV-GRUB would
    find no menu.lst, menu.lst is outside the accepted subset, a file it names is missing, or the
    kernel is not a Xen PV kernel.
    """
    name = path.name
    if not path.is_file():
        raise ImageError(f"{path}: no such disk image", hint="run invoke build first")
    filesystems = _filesystems(path)
    if not filesystems:
        raise ImageError(
            f"{name}: no ext2/3/4 file system on the whole disk or in MBR partitions 1-4, so PV-GRUB "
            "finds nothing to boot",
            hint="the PV disk must hold /boot/grub/menu.lst on an ext file system",
        )
    for partition, directory in search_order():
        if partition not in filesystems:
            continue
        text = _read(path, filesystems[partition], f"{directory}/menu.lst")
        if text is None:
            continue
        where = f"{device(partition)}{directory}/menu.lst"
        menu = menulst.parse(text.decode("utf-8", errors="replace"), where=f"{name}:{where}")
        return _check_entry(path, filesystems, where, menu)
    places = ", ".join(f"{device(p)}{d}" for p, d in search_order())
    raise ImageError(
        f"{name}: no menu.lst in any place PV-GRUB looks ({places})",
        hint="write /boot/grub/menu.lst on the disk's file system",
    )


def _check_entry(path: Path, filesystems: dict[int | None, int], where: str, menu: menulst.MenuLst) -> PvDisk:
    name = path.name
    entry = menu.boot
    root = device(entry.partition)
    at = f"{name}:{where}:{entry.line}"
    if entry.partition not in filesystems:
        raise ImageError(
            f"{at}: root {root} holds no ext file system", hint="point root at the boot file system"
        )
    offset = filesystems[entry.partition]
    kernel = _read(path, offset, entry.kernel)
    if kernel is None:
        raise ImageError(
            f"{at}: kernel {entry.kernel} is not a file on {root}",
            hint="put the kernel on the disk or fix the kernel line",
        )
    try:
        info = pvkernel.inspect(kernel)
    except pvkernel.NotPvKernel as err:
        raise ImageError(
            f"{at}: kernel {entry.kernel} is not a Xen PV kernel: {err}",
            hint=err.hint,
        ) from err
    initrd_size = None
    if entry.initrd is not None:
        initrd = _read(path, offset, entry.initrd)
        if initrd is None:
            raise ImageError(
                f"{at}: initrd {entry.initrd} is not a file on {root}",
                hint="put the initrd on the disk or fix the initrd line",
            )
        initrd_size = len(initrd)
    return PvDisk(path, where, menu, info, len(kernel), initrd_size)


def _filesystems(path: Path) -> dict[int | None, int]:
    """Byte offsets of ext file systems: key None for the whole disk, 0-3 for MBR partitions."""
    found: dict[int | None, int] = {}
    with path.open("rb") as f:
        if _is_ext(f, 0):
            found[None] = 0
            return found  # a whole-disk file system: sector 0 is its boot block, not a partition table
        f.seek(0)
        mbr = f.read(SECTOR)
        if len(mbr) == SECTOR and mbr[510:512] == b"\x55\xaa":
            for part in range(4):
                entry = mbr[446 + 16 * part : 462 + 16 * part]
                ptype = entry[4]
                (start,) = struct.unpack_from("<I", entry, 8)
                if ptype not in (0x00, 0x05, 0x0F, 0x85, 0xEE) and start and _is_ext(f, start * SECTOR):
                    found[part] = start * SECTOR
    return found


def _is_ext(f: BinaryIO, offset: int) -> bool:
    f.seek(offset + _EXT_MAGIC_AT)
    data = f.read(2)
    return len(data) == 2 and struct.unpack("<H", data)[0] == _EXT_MAGIC


def _read(image: Path, offset: int, path: str) -> bytes | None:
    """The contents of regular file ``path`` in the file system at ``offset``, or None if there is none."""
    spec = f"{image}?offset={offset}" if offset else str(image)
    try:
        stat = run(["debugfs", "-R", f"stat {_quote(path)}", spec], what="debugfs")
    except ToolFailed as err:
        raise ImageError(f"{image.name}: debugfs cannot read the file system: {err.message}") from err
    if b"Type: regular" not in stat.stdout:
        return None
    return run(["debugfs", "-R", f"cat {_quote(path)}", spec], what="debugfs").stdout


def _quote(path: str) -> str:
    if any(c in path for c in " \t\"'"):
        return '"' + path.replace('"', '\\"') + '"'
    return path
