"""Prepare the Xen test host from pinned Debian packages, in the user's cache, never installed.

What it makes (under ``<cache>/xen/<key>/``, where the key is a digest of ``ami/xen.toml``, the
loader template and :data:`FORMAT`):

- ``xen.elf``: the hypervisor, gunzipped (QEMU boots it as a multiboot kernel);
- ``dom0.elf``: the dom0 kernel's ELF, taken out of its bzImage once here so that Xen does not
  decompress it under emulation at every boot (about 5 s);
- ``dom0.cpio``: the dom0 initramfs: busybox, the Xen toolstack programs with exactly the shared
  libraries their ELF headers name (found in the pinned packages), and the kernel modules listed in
  the recipe with their dependencies, in load order. The init script and the guest configuration are
  not in it: each run appends its own small archive (see :mod:`pipeline.xen.machine`);
- ``pvgrub.bin``: the PV-GRUB-compatible loader, ``grub-mkimage -O x86_64-xen`` with the rendered
  ``templates/xen/pvgrub.cfg.j2`` in its memdisk.

Packages are fetched and unpacked by :mod:`pipeline.images.debs` (the image targets' pinned-package
cache, never installed). Every output appears only complete (made in a temporary
directory that is renamed into place), so a killed run never leaves a host that looks ready.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from pipeline import render
from pipeline.errors import ImageError
from pipeline.images import debs
from pipeline.manifest import digest_of, sha256_file
from pipeline.proc import run
from pipeline.xen import pvdisk, pvkernel
from pipeline.xen.recipe import XenRecipe

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of the prepared host changes
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
LOADER_TEMPLATE = "xen/pvgrub.cfg.j2"
PIN_HINT = "add the Debian package that holds it to [packages] in ami/xen.toml"


@dataclass(frozen=True)
class PreparedHost:
    """A prepared test host: the files QEMU boots and what they were made of."""

    directory: Path
    xen: Path
    dom0_kernel: Path
    dom0_initrd: Path
    loader: Path
    record: dict[str, object]  # package versions, file sizes, module load order

    @property
    def modules(self) -> list[str]:
        """dom0's kernel modules in load order (dependencies first)."""
        mods = self.record.get("modules")
        return [str(m) for m in mods] if isinstance(mods, list) else []


def prepare(root: Path, recipe: XenRecipe, cache: Path | None = None) -> PreparedHost:
    """The test host for ``recipe``: reused from the cache, else made (downloading what is missing)."""
    cache = cache or debs.cache_dir()
    template = root / "templates" / LOADER_TEMPLATE
    key = digest_of(
        {
            "format": FORMAT,
            "recipe": recipe.digest,
            "loader": sha256_file(template) if template.is_file() else "",
        }
    )[:16]
    final = cache / "xen" / key
    if (final / "host.json").is_file():
        return _host(final)
    roots = {
        name: debs.fetch(name, version, "ami/xen.toml: packages", cache).root
        for name, version in recipe.packages.items()
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}."))
    try:
        record = _make(root, recipe, roots, work)
        (work / "host.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            work.rename(final)
        except OSError:
            if not (final / "host.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _host(final)


def _host(d: Path) -> PreparedHost:
    record = json.loads((d / "host.json").read_text())
    return PreparedHost(d, d / "xen.elf", d / "dom0.elf", d / "dom0.cpio", d / "pvgrub.bin", record)


# -- making the host -----------------------------------------------------------------------------------


def _make(root: Path, recipe: XenRecipe, roots: dict[str, Path], out: Path) -> dict[str, object]:
    # The hypervisor: a gzipped multiboot ELF that QEMU loads once gunzipped.
    xen_gz = roots[recipe.hypervisor.package] / recipe.hypervisor.image
    if not xen_gz.is_file():
        raise ImageError(f"ami/xen.toml: hypervisor.image: {recipe.hypervisor.image} is not in the package")
    with gzip.open(xen_gz, "rb") as f:
        (out / "xen.elf").write_bytes(f.read())

    kroot = roots[recipe.dom0.kernel_package]
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    moddirs = sorted((kroot / "lib" / "modules").glob("*"))
    if len(vmlinuz) != 1 or len(moddirs) != 1:
        raise ImageError(
            f"ami/xen.toml: dom0.kernel_package: {recipe.dom0.kernel_package} is not a kernel package"
        )
    (out / "dom0.elf").write_bytes(pvkernel.vmlinux(vmlinuz[0].read_bytes()))

    order = [p for p in recipe.packages if p != recipe.dom0.kernel_package]
    stage = out / "dom0"
    copied = _copy_programs(recipe, [roots[p] for p in order], stage)
    modules = _copy_modules(recipe.dom0.modules, moddirs[0], stage / "lib" / "modules")
    for d in ("proc", "sys", "dev", "tmp", "run", "var/log/xen/console", "var/lib/xen", "etc/xen/scripts"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    (out / "dom0.cpio").write_bytes(cpio(stage))
    shutil.rmtree(stage)

    grub_version = recipe.packages.get("grub-xen-bin", "?")
    _make_loader(root, recipe, roots, grub_version, out)
    return {
        "packages": recipe.packages,
        "dom0_files": sorted(copied),
        "modules": modules,
        "sizes": {f: (out / f).stat().st_size for f in ("xen.elf", "dom0.elf", "dom0.cpio", "pvgrub.bin")},
    }


def _copy_programs(recipe: XenRecipe, roots: list[Path], stage: Path) -> list[str]:
    """Copy the programs, the libraries their ELF headers need (transitively) and the extra libraries."""

    def find(rel: str) -> Path | None:
        for r in roots:
            if (r / rel).exists():
                return r / rel
        return None

    def library(soname: str, needed_by: str) -> str:
        for d in LIB_DIRS:
            if find(f"{d}/{soname}") is not None:
                return f"{d}/{soname}"
        raise ImageError(
            f"ami/xen.toml: {needed_by} needs {soname}, which no pinned package holds", hint=PIN_HINT
        )

    todo = [(p, "dom0.programs") for p in recipe.dom0.programs]
    todo += [(library(lib, "dom0.libraries"), "dom0.libraries") for lib in recipe.dom0.libraries]
    done: set[str] = set()
    while todo:
        rel, why = todo.pop()
        if rel in done:
            continue
        src = find(rel)
        if src is None:
            raise ImageError(f"ami/xen.toml: {why}: {rel} is in no pinned package", hint=PIN_HINT)
        done.add(rel)
        dest = stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.resolve(), dest)
        dest.chmod(0o755)
        needed, interp = _elf_needs(src, rel)
        todo += [(library(soname, rel), rel) for soname in needed]
        if interp:
            todo.append((library(PurePosixPath(interp).name, rel), rel))
            link = stage / interp.lstrip("/")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/" + library(PurePosixPath(interp).name, rel))
    return list(done)


def _elf_needs(path: Path, rel: str) -> tuple[list[str], str | None]:
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            interp = None
            for seg in elf.iter_segments():
                if isinstance(seg, InterpSegment):
                    interp = seg.get_interp_name()
            dynamic = elf.get_section_by_name(".dynamic")
            needed = (
                [str(t.needed) for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]  # type: ignore[attr-defined]
                if isinstance(dynamic, DynamicSection)
                else []
            )
    except ELFError as err:
        raise ImageError(f"ami/xen.toml: {rel} is not an ELF program ({err})") from err
    return needed, interp


def _copy_modules(wanted: Iterable[str], moddir: Path, dest: Path) -> list[str]:
    """Copy the modules and their dependencies (``depends=`` in .modinfo); return the load order."""
    index = {p.name[: -len(".ko")].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key not in index:
            raise ImageError(
                f"ami/xen.toml: dom0.modules: {name} is not a module of the dom0 kernel"
                + (f" (needed by {chain[-1]})" if chain else ""),
                hint="it may be built into the kernel (then drop it) or misspelt",
            )
        for dep in _depends(index[key]):
            visit(dep, (*chain, key))
        order.append(key)

    for name in wanted:
        visit(name, ())
    dest.mkdir(parents=True, exist_ok=True)
    for key in order:
        shutil.copyfile(index[key], dest / f"{key}.ko")
    return order


def _depends(ko: Path) -> list[str]:
    with ko.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return [d for d in item[len(b"depends=") :].decode().split(",") if d]
    return []


def cpio(stage: Path) -> bytes:
    """A newc cpio archive of everything under ``stage`` (owned by root), as the kernel unpacks it."""
    paths = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*"))
    listing = ("\n".join(paths) + "\n").encode()
    return run(
        ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0", "--reproducible"],
        cwd=stage,
        input=listing,
        what="cpio",
    ).stdout


def _make_loader(root: Path, recipe: XenRecipe, roots: dict[str, Path], version: str, out: Path) -> None:
    places = [f"{_grub2_device(p)}{d}" for p, d in pvdisk.search_order()]
    config = render.render(
        root / "templates", LOADER_TEMPLATE, {"places": places, "grub_version": version}
    ).encode()
    memdisk = io.BytesIO()
    with tarfile.open(fileobj=memdisk, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("grub.cfg")
        info.size = len(config)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(config))
    (out / "memdisk.tar").write_bytes(memdisk.getvalue())
    # GRUB runs its embedded config with the minimal rescue parser; this line hands over to the
    # normal parser (loops, conditions) with the memdisk config.
    (out / "early.cfg").write_text("normal (memdisk)/grub.cfg\n")
    mkimage = _one(roots, "usr/bin/grub-mkimage")
    moddir = _one(roots, "usr/lib/grub/x86_64-xen")
    run(
        [
            mkimage, "-O", "x86_64-xen", "-d", moddir, "-p", "(memdisk)",
            "-m", out / "memdisk.tar", "-c", out / "early.cfg", "-o", out / "pvgrub.bin",
            *recipe.grub_modules,
        ],
        what="grub-mkimage",
        hint="ami/xen.toml: loader.grub_modules must name modules of grub-xen-bin",
    )  # fmt: skip


def _one(roots: dict[str, Path], rel: str) -> Path:
    for r in roots.values():
        if (r / rel).exists():
            return r / rel
    raise ImageError(f"ami/xen.toml: no pinned package holds {rel}", hint=PIN_HINT)


def _grub2_device(partition: int | None) -> str:
    """GRUB 2's name for PV-GRUB's (hd0) / (hd0,N): MBR partitions count from 1 as msdosN."""
    return "(hd0)" if partition is None else f"(hd0,msdos{partition + 1})"
