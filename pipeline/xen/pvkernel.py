"""Is a kernel file one that Xen can start as a 64-bit PV guest (what PV-GRUB boots)?

PV-GRUB loads ELF kernels, plain or compressed (gzip, bzip2, lzo, xz), and Linux bzImages whose
protected-mode payload is such a compressed ELF (x86 boot protocol 2.08+: ``payload_offset`` and
``payload_length`` in the setup header). A kernel is a Xen PV kernel when that ELF is 64-bit x86-64
and announces itself to Xen: with ELF notes named ``Xen`` (Linux, Mini-OS) or with the legacy
``__xen_guest`` section (LING), checked as Xen's loader checks it. Only :func:`for_pv_grub` runs a
program (a decompressor).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import zlib
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

from pipeline.images import xenguest
from pipeline.images.elfcheck import loadable
from pipeline.proc import run

ELF_MAGIC = b"\x7fELF"
_XZ = b"\xfd7zXZ\x00"
_GZIP = b"\x1f\x8b"
_BZIP2 = b"BZh"
_LZMA = b"\x5d\x00\x00"
_LZO = b"\x89LZO"
_ZSTD = b"\x28\xb5\x2f\xfd"
_LZ4 = b"\x02\x21\x4c\x18"
_BZIMAGE_MAGIC = b"HdrS"  # at 0x202 in a Linux boot sector's setup header


@dataclass(frozen=True)
class PvKernel:
    """What was found: how the file is packed, the ELF's entry point and how it talks to Xen."""

    packing: str  # "elf", "gzip elf", "bzImage (xz)", ...
    entry: int
    xen: str  # "elf notes" or "__xen_guest"


PV_HINT = "PV instances boot only kernels built for Xen PV (Linux with CONFIG_XEN_PV, LING)"
PACKING_HINT = (
    "put the kernel on the disk in a form PV-GRUB reads: its ELF (a bzImage's payload, decompressed), "
    "plain or gzip/xz-compressed"
)


class NotPvKernel(ValueError):
    """The file is not a 64-bit Xen PV kernel PV-GRUB can load; ``str()`` says why in one phrase."""

    def __init__(self, message: str, hint: str = PV_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def inspect(data: bytes) -> PvKernel:
    """Describe the PV kernel in ``data``; raise :class:`NotPvKernel` saying why it is not one."""
    packing, elf = unpack(data)
    try:
        f = ELFFile(io.BytesIO(elf))
    except ELFError as err:
        raise NotPvKernel(f"{packing}: not a valid ELF file ({err})") from err
    if f.elfclass != 64 or f["e_machine"] != "EM_X86_64":
        raise NotPvKernel(
            f"{packing}: ELF{f.elfclass} {f['e_machine']}; a 64-bit PV-GRUB boots only x86-64 kernels"
        )
    # Xen reads the legacy __xen_guest section only when there are no Xen ELF notes.
    if _has_xen_notes(f):
        return PvKernel(packing, int(f["e_entry"]), "elf notes")
    section = f.get_section_by_name("__xen_guest")
    if section is not None:
        text = bytes(section.data()).split(b"\0", 1)[0].decode("ascii", errors="replace")
        refused = xenguest.refusal(text, loadable(f))
        if refused is not None:
            raise NotPvKernel(f"{packing}: Xen would refuse to start it: {refused} (__xen_guest: {text!r})")
        return PvKernel(packing, int(f["e_entry"]), "__xen_guest")
    raise NotPvKernel(
        f"{packing}: the ELF has neither Xen ELF notes nor a __xen_guest section, so Xen cannot start "
        "it as a PV guest"
    )


def unpack(data: bytes) -> tuple[str, bytes]:
    """``(how it was packed, the ELF bytes)`` for a plain, compressed or bzImage kernel."""
    if data.startswith(ELF_MAGIC):
        return "elf", data
    if data[0x202:0x206] == _BZIMAGE_MAGIC:
        return _bzimage_payload(data)
    kind = _compression(data)
    if kind is None:
        raise NotPvKernel("neither an ELF file, a compressed ELF file nor a Linux bzImage")
    return f"{kind} elf", _decompress(kind, data, "file")


def for_pv_grub(data: bytes) -> bytes:
    """``data`` in a form PV-GRUB loads: unchanged when it can already, else the kernel's ELF, gzipped.

    A bzImage whose payload PV-GRUB cannot decompress (Debian's cloud kernel is LZ4-compressed; zstd
    is also used) is unpacked with the ``lz4``/``zstd`` program and its ELF gzipped (fixed header
    time, so equal input gives equal output). Raises :class:`NotPvKernel` when the result would not
    be a Xen PV kernel either.
    """
    try:
        inspect(data)
        return data
    except NotPvKernel:
        if data[0x202:0x206] != _BZIMAGE_MAGIC:
            raise
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    payload = data[start + offset : start + offset + length]
    kind = _compression(payload)
    if kind not in ("lz4", "zstd"):
        raise NotPvKernel(f"bzImage payload in a format that cannot be repacked ({kind or 'unknown'})")
    # The kernel's build appends the uncompressed size (32 bits) to the compressed stream.
    (size,) = struct.unpack("<I", payload[-4:])
    elf = run([kind, "-d", "-c"], input=payload[:-4], what=f"{kind} -d").stdout
    if len(elf) != size:
        raise NotPvKernel(f"bzImage payload unpacked to {len(elf)} bytes, its trailer says {size}")
    packed = gzip.compress(elf, compresslevel=6, mtime=0)
    inspect(packed)
    return packed


def vmlinux(data: bytes) -> bytes:
    """The uncompressed ELF of a kernel (a bzImage's payload), e.g. to give Xen a dom0 kernel it need
    not decompress itself."""
    return unpack(data)[1]


def _bzimage_payload(data: bytes) -> tuple[str, bytes]:
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        raise NotPvKernel(f"bzImage boot protocol {version >> 8}.{version & 0xFF} has no payload fields")
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    payload = data[start + offset : start + offset + length]
    kind = _compression(payload)
    if kind is None:
        raise NotPvKernel(f"bzImage payload in an unknown format (starts {payload[:4].hex()})")
    return f"bzImage ({kind})", _decompress(kind, payload, "bzImage payload")


def _compression(data: bytes) -> str | None:
    for magic, kind in (
        (_XZ, "xz"),
        (_GZIP, "gzip"),
        (_BZIP2, "bzip2"),
        (_LZMA, "lzma"),
        (_LZO, "lzo"),
        (_ZSTD, "zstd"),
        (_LZ4, "lz4"),
    ):
        if data.startswith(magic):
            return kind
    return None


def _decompress(kind: str, data: bytes, what: str) -> bytes:
    try:
        if kind == "gzip":
            # A bzImage payload may carry trailing bytes (the size word) after the gzip stream.
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        if kind in ("xz", "lzma"):
            return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO).decompress(data)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as err:
        raise NotPvKernel(f"{what}: corrupt {kind} data ({err})") from err
    raise NotPvKernel(
        f"{what} is {kind}-compressed; PV-GRUB reads gzip, bzip2, xz and lzo kernels"
        + (" (lzo kernels cannot be checked here)" if kind == "lzo" else ""),
        hint=PACKING_HINT,
    )


def _has_xen_notes(f: ELFFile) -> bool:
    for segment in f.iter_segments():
        if isinstance(segment, NoteSegment):
            for note in segment.iter_notes():
                if note["n_name"] == "Xen":
                    return True
    return False
