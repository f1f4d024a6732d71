"""Read and verify a LING image: the ELF kernel that LING's ``railing image`` links.

What a LING image is (from LING's sources: ``core/arch/xen/startup.S``, ``core/embed.c``,
``railing/railing.erl``):

- A static ELF64 x86-64 executable, a Xen PV kernel that announces itself with the legacy
  ``__xen_guest`` section (a NUL-terminated ``KEY=VALUE,...`` string with ``GUEST_OS=Ling``,
  ``XEN_VER=xen-3.0`` and ``LOADER=generic``), not with ELF notes. The section is checked as Xen's
  loader checks it (:mod:`pipeline.images.xenguest`).
- Every file the VM can read at run time is linked into ``.rodata`` as one blob, the *embedded file
  system*, starting at the symbol ``_binary_embed_fs_start`` (made by ``objcopy -I binary``, which also
  defines ``_binary_embed_fs_end``). Its layout, all integers big-endian::

      <<BucketCount:32, FileCount:32>>
      per bucket:  <<NameLen:8, Name:NameLen/bytes, Count:32>>
      per file:    <<NameLen:8, Name:NameLen/bytes, Size:32, Data:Size/bytes>>

  Buckets are directories: ``boot`` (``local.map`` and ``start.boot``), one per OTP library
  (``kernel``, ``stdlib``, ...), and one per project directory. ``boot/local.map`` says where each
  bucket is mounted, one ``<mount point> /<bucket>`` line each.
- railing translates every ``.beam`` into LING's own code format (``<module>.ling``: an IFF container
  ``FOR1 <size> LING`` whose ``Atom`` chunk lists the module's atoms), so app modules are inside as
  ``.ling`` files, not as beam bytes. Other files (the ``.app`` file, ``sys.config``) are embedded as
  they are, byte for byte.
- At run time a file is found by its base name, scanning the files in reverse order, so the *last*
  file of a name wins (``embed_lookup_simple``). Verification therefore checks the file that wins.

This module only reads files; it runs nothing.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from pipeline.errors import ImageError
from pipeline.images import xenguest

XEN_GUEST_SECTION = "__xen_guest"
EMBED_START = "_binary_embed_fs_start"
EMBED_END = "_binary_embed_fs_end"
GUEST_OS = "Ling"
VERIFY_HINT = "the image was not made by a working LING railing for Xen; check the build host's railing"


@dataclass(frozen=True)
class EmbeddedFile:
    bucket: str
    name: str
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class LingImage:
    """What an image holds: its ``__xen_guest`` string, embedded files and bucket mount points."""

    path: Path
    xen_guest: str
    guest: dict[str, str]
    files: tuple[EmbeddedFile, ...]
    mounts: dict[str, str]  # bucket -> mount point, from boot/local.map

    def bucket_at(self, mount: str) -> str | None:
        for bucket, where in self.mounts.items():
            if where == mount:
                return bucket
        return None

    def winner(self, name: str) -> EmbeddedFile | None:
        """The file LING finds for base name ``name``: the last one embedded."""
        found = None
        for f in self.files:
            if f.name == name:
                found = f
        return found

    def listing(self) -> list[dict[str, Any]]:
        """Every embedded file with its mount point, size and digest (for the build manifest)."""
        return [
            {
                "bucket": f.bucket,
                "mount": self.mounts.get(f.bucket, ""),
                "name": f.name,
                "size": len(f.data),
                "sha256": f.sha256,
            }
            for f in self.files
        ]


@dataclass(frozen=True)
class Expected:
    """What a correct image of the app must contain."""

    project: str  # railing's project name: files are mounted under /<project>/<dir>
    app: str
    modules: tuple[str, ...]
    app_file: bytes  # the compiled <app>.app, byte for byte
    sys_config: bytes  # the rendered sys.config, byte for byte
    libs: tuple[str, ...]  # OTP applications that must be embedded (kernel, stdlib, ...)

    @property
    def ebin_mount(self) -> str:
        return f"/{self.project}/ebin"

    @property
    def priv_mount(self) -> str:
        return f"/{self.project}/priv"


# -- reading -------------------------------------------------------------------------------------------


def read(path: Path) -> LingImage:
    """Parse the image at ``path``; raise :class:`ImageError` when it is not a LING image."""
    where = path.name
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            _check_header(elf, where)
            xen_guest = _xen_guest(elf, where)
            refused = xenguest.refusal(xen_guest, loadable(elf))
            if refused is not None:
                raise ImageError(
                    f"{where}: Xen would refuse to start it: {refused} ({XEN_GUEST_SECTION}: {xen_guest!r})",
                    hint=VERIFY_HINT,
                )
            blob = _embedded_blob(elf, where)
    except ELFError as err:
        raise ImageError(f"{where}: not an ELF file ({err})", hint=VERIFY_HINT) from err
    except OSError as err:
        raise ImageError(f"{where}: cannot read: {err.strerror}") from err
    guest = xenguest.fields(xen_guest)
    if guest.get("GUEST_OS") != GUEST_OS:
        raise ImageError(
            f"{where}: {XEN_GUEST_SECTION} section says GUEST_OS={guest.get('GUEST_OS', '(missing)')}, "
            f"expected GUEST_OS={GUEST_OS} (section: {xen_guest!r})",
            hint=VERIFY_HINT,
        )
    files = parse_embed_fs(blob, where)
    return LingImage(path, xen_guest, guest, files, _mounts(files, where))


def _check_header(elf: ELFFile, where: str) -> None:
    got = (elf.elfclass, elf.little_endian, elf["e_machine"], elf["e_type"])
    if got != (64, True, "EM_X86_64", "ET_EXEC"):
        raise ImageError(
            f"{where}: ELF{elf.elfclass} {'LE' if elf.little_endian else 'BE'} {elf['e_machine']} "
            f"{elf['e_type']}, expected an ELF64 little-endian EM_X86_64 executable (ET_EXEC)",
            hint=VERIFY_HINT,
        )


def _xen_guest(elf: ELFFile, where: str) -> str:
    section = elf.get_section_by_name(XEN_GUEST_SECTION)
    if section is None:
        names = ", ".join(s.name for s in elf.iter_sections() if s.name) or "none"
        raise ImageError(
            f"{where}: no {XEN_GUEST_SECTION} section, so Xen would not load it as a LING guest "
            f"(sections: {names})",
            hint=VERIFY_HINT,
        )
    data: bytes = section.data()
    return data.split(b"\0", 1)[0].decode("ascii", errors="replace")


def loadable(elf: ELFFile) -> xenguest.Loadable:
    # Xen's elf_parse_binary: the PT_LOAD segments with any of the R, W, X flags.
    loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 0x7]
    start = min((int(seg["p_paddr"]) for seg in loads), default=0)
    end = max((int(seg["p_paddr"]) + int(seg["p_memsz"]) for seg in loads), default=0)
    return xenguest.Loadable(entry=int(elf["e_entry"]), start=start, end=end)


def _embedded_blob(elf: ELFFile, where: str) -> bytes:
    """The bytes from ``_binary_embed_fs_start`` to ``_binary_embed_fs_end`` (or its section's end)."""
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise ImageError(
            f"{where}: no symbol table, so {EMBED_START} (the embedded files) cannot be found",
            hint="do not strip the image; " + VERIFY_HINT,
        )
    start = _symbol(symtab, EMBED_START)
    if start is None:
        raise ImageError(f"{where}: no symbol {EMBED_START}: no embedded file system", hint=VERIFY_HINT)
    end = _symbol(symtab, EMBED_END)
    for section in elf.iter_sections():
        lo, size = section["sh_addr"], section["sh_size"]
        if section["sh_flags"] & 0x2 and lo <= start < lo + size:  # SHF_ALLOC: loaded into memory
            if section["sh_type"] == "SHT_NOBITS":
                break
            stop = end if end is not None and start <= end <= lo + size else lo + size
            data: bytes = section.data()
            return data[start - lo : stop - lo]
    raise ImageError(
        f"{where}: {EMBED_START} (0x{start:x}) is not inside a loaded section with contents",
        hint=VERIFY_HINT,
    )


def _symbol(symtab: SymbolTableSection, name: str) -> int | None:
    symbols = symtab.get_symbol_by_name(name)
    return int(symbols[0]["st_value"]) if symbols else None


def parse_embed_fs(blob: bytes, where: str = "embed.fs") -> tuple[EmbeddedFile, ...]:
    """Parse railing's embedded file system; raise :class:`ImageError` on any inconsistency."""
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise ImageError(
                f"{where}: embedded file system truncated at byte {pos} (reading {what}, "
                f"{n} bytes, {len(blob)} in total)",
                hint=VERIFY_HINT,
            )
        chunk = blob[pos : pos + n]
        pos += n
        return chunk

    buckets, total = struct.unpack(">II", take(8, "header"))
    files: list[EmbeddedFile] = []
    for _ in range(buckets):
        bucket = take(take(1, "bucket name length")[0], "bucket name").decode("latin-1")
        (count,) = struct.unpack(">I", take(4, f"file count of bucket {bucket}"))
        for _ in range(count):
            name = take(take(1, "file name length")[0], "file name").decode("latin-1")
            (size,) = struct.unpack(">I", take(4, f"size of {bucket}/{name}"))
            files.append(EmbeddedFile(bucket, name, take(size, f"{bucket}/{name}")))
    if len(files) != total:
        raise ImageError(
            f"{where}: embedded file system header says {total} files, its buckets hold {len(files)}",
            hint=VERIFY_HINT,
        )
    if pos != len(blob):
        raise ImageError(
            f"{where}: {len(blob) - pos} unexpected bytes after the embedded file system", hint=VERIFY_HINT
        )
    return tuple(files)


def _mounts(files: Iterable[EmbeddedFile], where: str) -> dict[str, str]:
    local_map = next((f for f in files if f.bucket == "boot" and f.name == "local.map"), None)
    if local_map is None:
        raise ImageError(f"{where}: no boot/local.map in the embedded file system", hint=VERIFY_HINT)
    mounts: dict[str, str] = {}
    for line in local_map.data.decode("latin-1").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("/"):
            mounts[parts[1][1:]] = parts[0]
    return mounts


def ling_module_atoms(data: bytes) -> list[str] | None:
    """The ``Atom`` chunk of a ``.ling`` file (LING's translated module), or None if it is not one."""
    if len(data) < 12 or data[:4] != b"FOR1" or data[8:12] != b"LING":
        return None
    pos = 12
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if tag == b"Atom":
            if len(body) < 4:
                return None
            (count,) = struct.unpack(">I", body[:4])
            atoms, p = [], 4
            for _ in range(count):
                if p >= len(body):
                    return None
                n = body[p]
                atoms.append(body[p + 1 : p + 1 + n].decode("latin-1"))
                p += 1 + n
            return atoms
        pos += 8 + ((size + 3) & ~3)
    return None


# -- verifying -----------------------------------------------------------------------------------------


def verify(path: Path, expected: Expected) -> LingImage:
    """Read the image and check it holds exactly what the app needs; raise :class:`ImageError` if not.

    Checks: the ELF and ``__xen_guest`` (in :func:`read`); the app's ebin and priv directories are
    mounted where the boot line says; every app module is there as LING code naming that module; the
    ``.app`` file and ``sys.config`` are the ones built, byte for byte, and are the files LING finds
    by those names; every OTP library the app needs is embedded; ``start.boot`` is there.
    """
    image = read(path)
    where = path.name
    ebin = image.bucket_at(expected.ebin_mount)
    priv = image.bucket_at(expected.priv_mount)
    for mount, bucket in ((expected.ebin_mount, ebin), (expected.priv_mount, priv)):
        if bucket is None:
            raise ImageError(
                f"{where}: nothing is mounted at {mount} (local.map mounts: "
                f"{', '.join(sorted(image.mounts.values()))})",
                hint=VERIFY_HINT,
            )
    missing = [m for m in expected.modules if not _has_module(image, ebin, m)]
    if missing:
        raise ImageError(
            f"{where}: app module{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"missing from {expected.ebin_mount} (expected {len(expected.modules)} modules as .ling code)",
            hint=VERIFY_HINT,
        )
    _same_bytes(image, where, f"{expected.app}.app", ebin, expected.app_file)
    _same_bytes(image, where, "sys.config", priv, expected.sys_config)
    if image.winner("start.boot") is None:
        raise ImageError(f"{where}: no start.boot embedded: LING cannot boot", hint=VERIFY_HINT)
    for lib in expected.libs:
        app_file = image.winner(f"{lib}.app")
        if app_file is None or not image.mounts.get(app_file.bucket, "").startswith("/erlang/lib/"):
            raise ImageError(
                f"{where}: OTP application {lib} is not embedded (no {lib}.app under /erlang/lib)",
                hint=f"railing embeds it when called with -l {lib}; " + VERIFY_HINT,
            )
    return image


def _has_module(image: LingImage, bucket: str | None, module: str) -> bool:
    found = image.winner(f"{module}.ling")
    if found is None or found.bucket != bucket:
        return False
    atoms = ling_module_atoms(found.data)
    return atoms is not None and module in atoms


def _same_bytes(image: LingImage, where: str, name: str, bucket: str | None, want: bytes) -> None:
    found = image.winner(name)
    if found is None:
        raise ImageError(f"{where}: {name} is not embedded", hint=VERIFY_HINT)
    if found.bucket != bucket:
        raise ImageError(
            f"{where}: the {name} LING would read is {found.bucket}/{name} "
            f"(mounted at {image.mounts.get(found.bucket, '?')}), not the app's",
            hint="another embedded file of the same name shadows it; " + VERIFY_HINT,
        )
    if found.data != want:
        raise ImageError(
            f"{where}: embedded {name} differs from the one built "
            f"(sha256 {found.sha256[:16]}, expected {hashlib.sha256(want).hexdigest()[:16]})",
            hint=VERIFY_HINT,
        )
