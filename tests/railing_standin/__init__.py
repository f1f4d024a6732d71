"""Test doubles for the LING toolchain, which cannot exist on the test machines.

- ``railing.erl``: a stand-in for LING's railing escript (see its header for what it follows and where
  it differs); :func:`build_railing` makes the escript as LING's ``railing/escriptize`` does: the
  module's beam plus ``vmling.o`` and ``ling.lds`` in the escript's archive.
- ``fake_otp.py``: a stand-in for an OTP 17 installation (reports release 17, compiles with the host's
  OTP); :func:`make_toolchain` lays one out.

The pipeline is not told about either: tests point ``ling.otp_bin`` / ``ling.railing`` (or PATH) at
them exactly as a user points the settings at a real OTP 17 and a real railing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAILING_SRC = HERE / "railing.erl"
FAKE_OTP = HERE / "fake_otp.py"

# LING's core is one relocatable object (its Makefile links core/vmling.o with -Xlinker -r). The
# stand-in's has what the pipeline looks at: the __xen_guest string of core/arch/xen/startup.S
# (x86_64), a _start, and core/outlet.c's table of port drivers, outlet_drivers, whose `disk` entry
# (ol_disk_factory, defined in core/arch/xen/ol_disk.c, compiled in every Xen build) exists only when
# LING is built with LING_CONFIG_DISK.
STARTUP_S = """\t.section __xen_guest
\t.ascii "GUEST_OS=Ling"
\t.ascii ",XEN_VER=xen-3.0"
\t.ascii ",VIRT_BASE=0x0"
\t.ascii ",ELF_PADDR_OFFSET=0x0"
\t.ascii ",HYPERCALL_PAGE=0x1"
\t.ascii ",LOADER=generic"
\t.byte 0
\t.text
\t.globl _start
_start:
1:\thlt
\tjmp 1b
"""
DRIVERS = ("echo", "vif", "dcons", "console", "dns", "udp", "tcp", "tube")
LING_LDS = """ENTRY(_start)
SECTIONS
{
  . = 0;
  .text : { *(.text) }
  .rodata : { *(.rodata) }
  .data : { *(.data) }
  .bss : { *(.bss) }
}
"""


def outlet_s(disk_driver: bool) -> str:
    """core/outlet.c's driver table as assembly: one pointer per driver, the disk's only with it."""
    names = [*DRIVERS, "disk"] if disk_driver else list(DRIVERS)
    table = "".join(f"\t.quad ol_{n}_factory\n" for n in names)
    return f"\t.data\n\t.globl outlet_drivers\noutlet_drivers:\n{table}"


def drivers_s() -> str:
    """The drivers' factories (ol_disk.c's included: it is compiled whatever the configuration)."""
    return "\t.text\n" + "".join(
        f"\t.globl ol_{n}_factory\nol_{n}_factory:\n\tret\n" for n in (*DRIVERS, "disk")
    )


def build_vmling(dest: Path, disk_driver: bool = True) -> Path:
    """Assemble the stand-in core and partially link it into ``dest`` (``ld -r``, as LING does)."""
    work = Path(tempfile.mkdtemp(prefix="vmling-"))
    try:
        objects = []
        for name, text in (
            ("startup", STARTUP_S),
            ("outlet", outlet_s(disk_driver)),
            ("drivers", drivers_s()),
        ):
            (work / f"{name}.S").write_text(text)
            subprocess.run(["as", "--64", "-o", work / f"{name}.o", work / f"{name}.S"], check=True)
            objects.append(work / f"{name}.o")
        subprocess.run(["ld", "-r", "-o", dest, *objects], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def build_railing(dest: Path, disk_driver: bool = True) -> Path:
    """Make the stand-in railing escript at ``dest``: railing.beam, vmling.o and ling.lds in its archive."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="railing-"))
    try:
        subprocess.run(["erlc", "-o", work, RAILING_SRC], check=True)
        build_vmling(work / "vmling.o", disk_driver)
        (work / "ling.lds").write_text(LING_LDS)
        create = (
            "[Out | Files] = init:get_plain_arguments(),"
            "Archive = [{filename:basename(F), element(2, file:read_file(F))} || F <- Files],"
            'Sections = [shebang, {emu_args, "-escript main railing"}, {archive, Archive, []}],'
            "ok = escript:create(Out, Sections),"
            "halt()."
        )
        tmp = dest.with_name(dest.name + ".tmp")
        files = [work / "railing.beam", work / "vmling.o", work / "ling.lds"]
        subprocess.run(["erl", "-noshell", "-eval", create, "-extra", tmp, *files], check=True)
        tmp.chmod(0o755)
        tmp.replace(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def standin_railing(disk_driver: bool = True) -> Path:
    """The stand-in railing, built once per content of its sources (in the system's temp directory)."""
    digest = hashlib.sha256(RAILING_SRC.read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
    path = (
        Path(tempfile.gettempdir())
        / f"railing-standin-{digest}-{'disk' if disk_driver else 'nodisk'}"
        / "railing"
    )
    if not path.exists():
        build_railing(path, disk_driver)
    return path


def make_toolchain(dest: Path, release: str = "17", version: str | None = None) -> Path:
    """Lay out a stand-in OTP installation of ``release`` under ``dest``; return its ``bin`` directory."""
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("erl", "erlc", "escript"):
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(FAKE_OTP)
    rel = dest / "releases" / release
    rel.mkdir(parents=True, exist_ok=True)
    (rel / "OTP_VERSION").write_text((version or f"{release}.5") + "\n")
    return bin_dir


def railing_dir(dest: Path, disk_driver: bool = True) -> Path:
    """A directory holding ``railing`` (the stand-in), to put on PATH; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "railing"
    if not target.exists():
        shutil.copy2(standin_railing(disk_driver), target)
    return dest


def wrapper(path: Path, script: str) -> Path:
    """Write an executable ``sh`` script (a railing that misbehaves in a chosen way); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nset -e\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def path_with(*dirs: Path) -> str:
    return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", "")])
