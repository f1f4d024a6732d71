"""What LING's core in a railing can do: does its ``vmling.o`` include the disk driver?

railing is an escript whose archive holds LING's core, ``vmling.o`` (one relocatable object, linked
with ``-Xlinker -r``), next to ``ling.lds`` and railing's own beams (LING's ``railing/escriptize``).
Every image railing makes is that core plus the embedded files.

LING's kernel always starts ``disk_server``, which opens the ``disk`` port whenever the domain has the
vbd LING reads (xenstore ``device/vbd/51712``; apps/kernel/src/disk_server.erl). The port exists only
in a core built with ``LING_CONFIG_DISK``: core/outlet.c lists ``ol_disk_factory`` in its driver table,
``outlet_drivers``, only then, and LING's Makefile leaves ``CPPFLAGS += -DLING_CONFIG_DISK`` commented
out. In a partially linked object that table entry is a relocation against the symbol
``ol_disk_factory``; the function itself (core/arch/xen/ol_disk.c) is compiled either way. So a core
has the disk driver when a relocation refers to ``ol_disk_factory``.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from pipeline.errors import ToolFailed, ToolMissing
from pipeline.remote import Host

CORE = "vmling.o"
DRIVER_TABLE = "outlet_drivers"
DISK_FACTORY = "ol_disk_factory"


class NotLingCore(ValueError):
    """The file is not a railing with LING's core; ``str()`` says why."""


class NoArchive(NotLingCore):
    """The file is not an escript with an archive (it may be a script that runs railing)."""


def core_of(railing: Path) -> bytes:
    """The ``vmling.o`` inside the railing escript at ``railing`` (an escript's archive is a zip file
    after its header lines)."""
    try:
        with zipfile.ZipFile(railing) as archive:
            return archive.read(CORE)
    except zipfile.BadZipFile as err:
        raise NoArchive(f"{railing.name} is not an escript with an archive ({err})") from err
    except KeyError as err:
        raise NotLingCore(f"{railing.name}'s archive has no {CORE}") from err


def has_disk_driver(core: bytes) -> bool:
    """Whether the LING core ``core`` (vmling.o) registers its disk port driver."""
    try:
        elf = ELFFile(io.BytesIO(core))
        if elf["e_type"] != "ET_REL":
            raise NotLingCore(f"{CORE} is {elf['e_type']}, not a relocatable object")
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection) or not symtab.get_symbol_by_name(DRIVER_TABLE):
            raise NotLingCore(f"{CORE} has no {DRIVER_TABLE} table: not LING's core")
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection):
                table = elf.get_section(section["sh_link"])
                if not isinstance(table, SymbolTableSection):
                    continue
                for reloc in section.iter_relocations():
                    if table.get_symbol(reloc["r_info_sym"]).name == DISK_FACTORY:
                        return True
    except ELFError as err:
        raise NotLingCore(f"{CORE} is not an ELF object ({err})") from err
    return False


def check_railing(host: Host, railing: str, path: str, where: str, hint: str) -> None:
    """Refuse the ``railing`` on ``host`` when the LING core in its escript has no disk driver.

    A railing that is not an escript with an archive (a script that runs one) cannot be read here:
    the core it unpacks into ``.railing`` when it runs is checked instead (``ling.py``)."""
    located = host.run(["sh", "-c", 'command -v "$0"', railing], path=path, what="railing", quiet=True)
    with tempfile.TemporaryDirectory(prefix="railing-") as tmp:
        local = Path(tmp) / "railing"
        host.download(located.strip(), local)
        try:
            core = core_of(local)
        except NoArchive:
            return
        except NotLingCore as err:
            raise ToolFailed(f"{where}: {railing}: {err}", hint=hint) from err
    require_disk_driver(core, railing, where, hint)


def require_disk_driver(core: bytes, railing: str, where: str, hint: str) -> None:
    """Raise :class:`ToolMissing` (one line, with the ways out) when ``core`` has no disk driver."""
    try:
        has_disk = has_disk_driver(core)
    except NotLingCore as err:
        raise ToolFailed(f"{where}: {railing}: {err}", hint=hint) from err
    if not has_disk:
        raise ToolMissing(
            f"{where}: the LING core in {railing} (vmling.o) has no disk driver (LING was built without "
            "LING_CONFIG_DISK), and such a LING stops at start-up when the scratch volume it mounts "
            "with GooFS (Xen vbd 51712) is attached",
            hint='use a railing of a LING built with "CPPFLAGS += -DLING_CONFIG_DISK", '
            'or set app.storage = "ram" (no scratch volume)',
        )
