"""A deterministic initramfs: a cpio archive in the kernel's ``newc`` format, compressed.

Written here rather than with the ``cpio`` program so that the archive depends only on its content:
entries sorted by path (so parents precede children), inode numbers assigned in that order, every
mtime :data:`MTIME`, owner root, and device nodes (``/dev/console``) made without being root.

Compression (the cloud kernel is built with every ``CONFIG_RD_*``): ``xz`` gives the smallest image
(CRC32 check and the x86 BCJ filter, as the kernel's XZ decoder requires and benefits from) but is
the slowest to make and to unpack under emulation; ``zstd`` is a little larger and unpacks fastest;
``gzip`` is the baseline. ``bench/image.py`` compares them.

An initramfs may be several archives, each compressed on its own and concatenated (the kernel
unpacks them in order, later files over earlier ones). The beam image uses two: the runtime, which
only changes with the code, then the few files that carry the build's configuration. A
configuration-only rebuild thus leaves the first archive, and its blocks on a disk, byte-identical.
"""

from __future__ import annotations

import gzip
import lzma
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from pipeline.errors import ImageError
from pipeline.manifest import write_atomic
from pipeline.proc import run

Compression = Literal["gzip", "xz", "zstd", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "xz", "zstd", "none")
MTIME = 946684800  # 1 January 2000, the same fixed time as the disk images
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` for files, ``target`` for symlinks, ``rdev`` for device nodes."""

    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)


def file(data: bytes, mode: int = 0o644) -> Entry:
    return Entry(stat.S_IFREG | mode, data=data)


def directory(mode: int = 0o755) -> Entry:
    return Entry(stat.S_IFDIR | mode)


def symlink(target: str) -> Entry:
    return Entry(stat.S_IFLNK | 0o777, target=target)


def char_device(major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(stat.S_IFCHR | mode, rdev=(major, minor))


class Tree:
    """The archive's content, keyed by absolute path; parent directories are added implicitly."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, path: str, entry: Entry) -> None:
        p = PurePosixPath(path)
        if not p.is_absolute() or ".." in p.parts:
            raise ImageError(f"initramfs path {path!r}: expected an absolute path")
        key = p.as_posix()
        old = self.entries.get(key)
        if old is not None and old != entry and not (stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode)):
            raise ImageError(f"initramfs path {key}: added twice with different content")
        for parent in reversed(p.parents[:-1]):
            self.entries.setdefault(parent.as_posix(), directory())
        self.entries[key] = entry

    def add_file(self, path: str, source: Path, mode: int | None = None) -> None:
        """Add a local file; its permission bits are kept (executables stay executable) unless given."""
        perms = stat.S_IMODE(source.stat().st_mode) if mode is None else mode
        self.add(path, file(source.read_bytes(), 0o755 if perms & 0o111 else 0o644))

    def add_tree(self, dest: str, source: Path, skip: Iterable[str] = ()) -> None:
        """Add ``source``'s files and symlinks under ``dest`` (``skip``: relative path prefixes)."""
        skipped = tuple(skip)
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if rel.startswith(skipped):
                continue
            target = f"{dest.rstrip('/')}/{rel}"
            if path.is_symlink():
                self.add(target, symlink(str(path.readlink())))
            elif path.is_dir():
                self.add(target, directory())
            elif path.is_file():
                self.add_file(target, path)

    def size(self) -> int:
        """Bytes of file content (what the unpacked initramfs holds)."""
        return sum(len(e.data) + len(e.target) for e in self.entries.values())


def archive(entries: Mapping[str, Entry]) -> bytes:
    """The uncompressed ``newc`` cpio archive of ``entries`` (sorted; root directory omitted)."""
    out = bytearray()
    for ino, path in enumerate(sorted(p for p in entries if p != "/"), start=1):
        e = entries[path]
        body = e.target.encode() if stat.S_ISLNK(e.mode) else e.data
        name = path.lstrip("/").encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        fields = (ino, e.mode, 0, 0, nlink, MTIME, len(body), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name
        out += b"\0" * (-len(out) % 4)
        out += body
        out += b"\0" * (-len(out) % 4)
    name = _TRAILER.encode() + b"\0"
    out += b"070701" + b"".join(b"%08X" % f for f in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0))
    out += name + b"\0" * (-(len(out) + len(name)) % 4)
    return bytes(out)


def compress(data: bytes, method: Compression) -> bytes:
    """Compress an archive the way the kernel's initramfs decompressors accept it."""
    if method == "none":
        return data
    if method == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if method == "xz":
        filters: list[dict[str, int]] = [
            {"id": lzma.FILTER_X86},
            {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 32 << 20},
        ]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if method == "zstd":
        # Level 9: within 10% of level 19's size in a thirtieth of the time (single-threaded, so the
        # output does not depend on the machine).
        return run(["zstd", "-9", "-q", "-c", "--no-progress"], input=data, what="zstd").stdout
    raise ImageError(f"unknown initramfs compression {method!r}", hint=f"one of {', '.join(COMPRESSIONS)}")


def write(path: Path, parts: Sequence[Tree], method: Compression) -> list[tuple[int, int]]:
    """Write the archives of ``parts``, each compressed on its own, one after the other, atomically.

    Returns ``(uncompressed, compressed)`` sizes in bytes per part, in order.
    """
    sizes = []
    out = bytearray()
    for tree in parts:
        raw = archive(tree.entries)
        packed = compress(raw, method)
        sizes.append((len(raw), len(packed)))
        out += packed
    write_atomic(path, bytes(out))
    return sizes


def split(raw: bytes) -> list[bytes]:
    """The archives of a decompressed initramfs (concatenated ``newc`` archives), one per trailer.

    For tools that read one archive at a time (``cpio -i`` stops at the first trailer).
    """
    parts = []
    start = at = 0
    while at < len(raw):
        if raw[at : at + 6] != b"070701":
            if raw[at:].strip(b"\0"):
                raise ImageError(f"initramfs: no cpio header at byte {at}")
            break
        namesize, filesize = int(raw[at + 94 : at + 102], 16), int(raw[at + 54 : at + 62], 16)
        name = raw[at + 110 : at + 110 + namesize - 1]
        at += 110 + namesize
        at += -at % 4 + filesize
        at += -at % 4
        if name == _TRAILER.encode():
            parts.append(raw[start:at])
            start = at
    return parts
