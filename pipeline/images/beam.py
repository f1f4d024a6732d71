"""The ``beam`` target: a Linux + BEAM microVM (Debian cloud kernel, busybox init, trimmed erts).

What a build makes, under the build directory:

- ``boot/vmlinuz``, ``boot/initrd.img`` and ``boot/cmdline`` - the kernel from the pinned Debian
  package, the initramfs (busybox, the init script, the kernel modules of every platform, the trimmed
  Erlang runtime and the app with its baked configuration) and the kernel command line for direct
  kernel boot (QEMU ``-kernel``).
- ``disks/hvm-uefi.img`` - GPT + EFI system partition with a unified kernel image (systemd's EFI
  stub with the kernel, the initramfs and the command line as PE sections) at the removable-media
  path ``EFI/BOOT/BOOTX64.EFI``, so UEFI firmware (Nitro, OVMF) boots it with no NVRAM entry and
  the command line cannot be changed at boot.
- ``disks/pv.img`` - ext2 on the whole disk with ``/boot/grub/menu.lst`` for PV-GRUB ``hd0``.

The recipe (``ami/beam.toml``) pins the packages; it is validated, and the kernel command lines are
checked against their limits, when the build is planned, before anything is built.
"""

from __future__ import annotations

import errno
import logging
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import erlang, rebar, release, render
from pipeline.blocks import DiskRecord, describe
from pipeline.config import Settings
from pipeline.erlang import Artifact
from pipeline.errors import ConfigError, ImageError
from pipeline.images import BuildContext, debs, disk, initramfs, kmod, recipe, runtime
from pipeline.images.recipe import Recipe
from pipeline.manifest import digest_of, sha256_file, write_atomic
from pipeline.proc import run
from pipeline.xen import pvkernel

if TYPE_CHECKING:
    from pipeline.release import Source

log = logging.getLogger(__name__)

EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
# Host packages whose files end up in the image or shape its bytes: their versions are build inputs.
HOST_PACKAGES = (
    "e2fsprogs", "libext2fs2", "libc6", "libstdc++6", "libgcc-s1", "libtinfo6", "zlib1g",
    "dosfstools", "mtools", "fdisk", "binutils", "systemd-boot-efi", "zstd",
)  # fmt: skip
SCRATCH_LABEL = "scratch"
CONSOLE_CONFIG = "/etc/erlang/console"  # the VM's logger settings (templates/console.config.j2)
# What the initramfs needs from the host besides erts: mke2fs for the scratch disk (ext4 with a
# journal; busybox's mke2fs makes only ext2, which a hard reset can leave inconsistent). The init
# script calls it by its full path: busybox's shell prefers its own applets to programs on PATH.
HOST_PROGRAMS = ("/usr/sbin/mke2fs",)
ACPI_POWER_ACTION = (
    "#!/bin/sh\n# busybox acpid runs this on the ACPI power button: ask init to stop\nkill -TERM 1\n"
)
SHUTDOWN_REQUEST = (
    "#!/bin/sh\n# the kernel runs this (poweroff_cmd) on a Xen shutdown request\nkill -TERM 1\n"
)


class BeamTarget:
    name = "beam"

    def tool_versions(self, settings: Settings) -> dict[str, str]:
        r = recipe.load(settings.assets_dir)
        tc = erlang.host_toolchain()
        versions = {
            "otp": tc.otp_version,
            "erts": tc.erts_version,
            "rebar3": rebar.rebar3_version(),
            r.kernel.package: r.kernel.version,
            r.busybox.package: r.busybox.version,
        }
        versions.update(_host_package_versions())
        return versions

    def input_files(self, settings: Settings) -> dict[str, str]:
        r = recipe.load(settings.assets_dir)
        for spec in r.disks:
            check_cmdline(cmdline(r, spec.console), spec.cmdline_max, f"disks.{spec.name}")
        return {recipe.RECIPE: sha256_file(settings.assets_dir / recipe.RECIPE)}

    def compile(self, settings: Settings, source: Source, work: Path) -> Artifact:
        return release.build_release(settings, source, work)

    def build_image(self, ctx: BuildContext) -> dict[str, Any]:
        return build_image(ctx, recipe.load(ctx.settings.assets_dir))


def cmdline(r: Recipe, console: str) -> str:
    return " ".join(f"console={console} {r.kernel_cmdline}".split())


def check_cmdline(text: str, limit: int, where: str) -> None:
    if len(text.encode()) > limit:
        raise ConfigError(
            f"{recipe.RECIPE}: kernel.cmdline: the {where} command line is {len(text.encode())} bytes, "
            f"over its limit of {limit}",
            hint="shorten kernel.cmdline",
        )


def build_image(ctx: BuildContext, r: Recipe) -> dict[str, Any]:
    """Make ``boot/`` and ``disks/`` under ``ctx.out``; return the manifest's ``image`` section.

    Everything is written inside the (temporary) build directory, which the build removes whole if
    anything fails; the package cache outside it only ever holds complete packages.
    """
    settings = ctx.settings
    work = ctx.out / ".work"
    work.mkdir()
    kernel_pkg = debs.fetch(r.kernel.package, r.kernel.version, f"{recipe.RECIPE}: kernel")
    busybox_pkg = debs.fetch(r.busybox.package, r.busybox.version, f"{recipe.RECIPE}: busybox")
    modules_dirs = sorted((kernel_pkg.root / "lib" / "modules").iterdir())
    vmlinuz = sorted((kernel_pkg.root / "boot").glob("vmlinuz-*"))
    if len(modules_dirs) != 1 or len(vmlinuz) != 1:
        raise ImageError(
            f"{recipe.RECIPE}: kernel: {r.kernel.package} does not hold one kernel and its modules"
        )
    index = kmod.ModuleIndex(modules_dirs[0])

    tree = initramfs.Tree()
    _base_system(tree, busybox_pkg.root)
    platforms = _modules(tree, index, r)
    for prog in HOST_PROGRAMS:
        tree.add_file(prog, Path(prog))
    host_libs = runtime.shared_libraries([Path(p) for p in HOST_PROGRAMS])

    templates = settings.assets_dir / "templates"
    tc = erlang.host_toolchain()
    vm_args = ctx.config_dir / "vm.args"
    write_atomic(vm_args, compose_vm_args(templates, ctx))
    # epmd (and the libraries it links) only when the VM arguments name the node: the launcher starts
    # it then, and nothing needs it otherwise.
    distributed = names_node(vm_args.read_text())
    programs = tuple(p for p in r.otp_programs if p != "epmd" or distributed)
    rt = runtime.assemble(tree, tc, ctx.app.directory, ctx.app.name, ctx.app.version, programs, work)
    for image_path, host_path in host_libs.items():
        tree.add_file(image_path, host_path)
    # What changes with the configuration (the build id, env and settings baked in) goes into a
    # second, small archive after the runtime's, so a configuration-only rebuild leaves the runtime
    # archive, and its blocks on the disks, byte-identical.
    baked = initramfs.Tree()
    rel = runtime.release_dir(rt)
    baked.add_file(f"{rel}/sys.config", ctx.config_dir / "sys.config", mode=0o644)
    baked.add_file(f"{rel}/vm.args", vm_args, mode=0o644)

    context = {
        **ctx.template_context,
        "kernel_release": index.release,
        "platforms": platforms,
        "net": {"interface": r.interface, "wait_ticks": r.wait_seconds * 50, "dhcp_tries": r.dhcp_tries},
        "boot_label": disk.PV_LABEL,
        "scratch_label": SCRATCH_LABEL,
        "mke2fs": HOST_PROGRAMS[0],
        "console_config": CONSOLE_CONFIG,
        "erlang": {"root": rt.root, "erts_version": rt.erts_version, "release_version": rt.release_version},
    }
    baked.add("/init", initramfs.file(render.render(templates, "init.sh.j2", context).encode(), 0o755))
    tree.add(
        "/etc/udhcpc.script",
        initramfs.file(render.render(templates, "udhcpc.sh.j2", context).encode(), 0o755),
    )
    # The VM's logger on the console (the same for every configuration: in the runtime archive).
    tree.add(
        CONSOLE_CONFIG + ".config", initramfs.file(render.render(templates, "console.config.j2", {}).encode())
    )
    for path in baked.entries:  # every file in one archive only, so the order cannot matter
        if path in tree.entries and not stat.S_ISDIR(baked.entries[path].mode):
            raise ImageError(f"initramfs path {path}: in both the runtime and the configuration archive")

    boot = ctx.out / "boot"
    boot.mkdir()
    initrd = boot / "initrd.img"
    parts = {"runtime": tree, "config": baked}
    sizes = dict(zip(parts, initramfs.write(initrd, list(parts.values()), r.compression), strict=True))
    kernel = boot / "vmlinuz"
    copy_file(vmlinuz[0], kernel, "the kernel")
    lines = {spec.name: cmdline(r, spec.console) for spec in r.disks}
    direct = cmdline(r, "ttyS0")
    write_atomic(boot / "cmdline", (direct + "\n").encode())

    disks = [_disk(ctx, spec, kernel, initrd, lines[spec.name], work) for spec in r.disks]
    shutil.rmtree(work)
    return {
        "kernel": {
            "package": r.kernel.package,
            "version": r.kernel.version,
            "release": index.release,
            "deb_sha256": kernel_pkg.deb_sha256,
            "file": "boot/vmlinuz",
            "size": kernel.stat().st_size,
        },
        "busybox": {
            "package": r.busybox.package,
            "version": r.busybox.version,
            "deb_sha256": busybox_pkg.deb_sha256,
        },
        "initramfs": {
            "file": "boot/initrd.img",
            "compression": r.compression,
            "size": initrd.stat().st_size,
            "unpacked_size": sum(u for u, _ in sizes.values()),
            "files": len(tree.entries.keys() | baked.entries.keys()),
            "parts": [
                {"name": n, "size": p, "unpacked_size": u, "files": len(parts[n].entries)}
                for n, (u, p) in sizes.items()
            ],
        },
        "cmdline": {"direct": direct, **lines},
        "modules": {p["name"]: p["modules"] for p in platforms},
        "runtime": {
            "root": rt.root,
            "erts": rt.erts_version,
            "own_erts": rt.own_erts,
            "release": {"name": rt.release_name, "version": rt.release_version},
            "applications": rt.applications,
            "libraries": list(rt.libraries),
            "size": rt.size,
        },
        "disks": disks,
    }


def compose_vm_args(templates: Path, ctx: BuildContext) -> bytes:
    """The image's VM arguments (``templates/vm.args.j2``) followed by the app's own (its
    ``config/vm.args.j2`` or its release's ``vm.args``), which therefore win where both set a flag."""
    context = {**ctx.template_context, "erlang_root": runtime.ROOT}
    text = render.render(templates, "vm.args.j2", context).encode()
    own = ctx.config_dir / "app.vm.args"
    if own.is_file():
        text += b"## The app's own VM arguments:\n" + own.read_bytes()
        if not text.endswith(b"\n"):
            text += b"\n"
    return text


def names_node(vm_args: str) -> bool:
    """Whether VM arguments start distribution (``-name`` or ``-sname`` outside a comment)."""
    return any(line.split()[:1] in (["-name"], ["-sname"]) for line in vm_args.splitlines())


def _modules(tree: initramfs.Tree, index: kmod.ModuleIndex, r: Recipe) -> list[dict[str, Any]]:
    """Add every platform's modules (dependencies first) to ``tree``; return the init script's view."""
    platforms = []
    for p in r.platforms:
        mods = index.load_order(p.modules, f"{recipe.RECIPE}: platforms.{p.name}.modules")
        for m in mods:
            tree.add_file(f"/lib/modules/{index.release}/{m.relpath}", m.path, mode=0o644)
        kind, _, arg = p.detect.partition(":")
        platforms.append(
            {
                "name": p.name,
                "description": p.description,
                "detect": {"kind": kind, "arg": arg},
                "modules": [m.relpath for m in mods],
            }
        )
    return platforms


def _disk(
    ctx: BuildContext, spec: recipe.DiskSpec, kernel: Path, initrd: Path, line: str, work: Path
) -> DiskRecord:
    """Make one disk of the recipe under ``disks/`` and describe it for the manifest."""
    check_cmdline(line, spec.cmdline_max, f"disks.{spec.name}")
    image = ctx.out / "disks" / f"{spec.name}.img"
    if spec.name == "hvm-uefi":
        uki = unified_kernel_image(work / "linux.efi", kernel, initrd, line, ctx)
        disk.uefi_disk(image, {"/EFI/BOOT/BOOTX64.EFI": uki}, seed=_disk_seed(ctx, spec.name))
        return describe(ctx.out, image, spec.name, "hvm", "uefi")
    menu = render.render(
        ctx.settings.assets_dir / "templates",
        "menu.lst.j2",
        {
            **ctx.template_context,
            "kernel_path": "/boot/vmlinuz",
            "initrd_path": "/boot/initrd.img",
            "cmdline": line,
        },
    )
    # PV-GRUB cannot read every kernel packing (Debian's cloud kernel is an LZ4 bzImage).
    files = {"/boot/vmlinuz": _pv_grub_kernel(kernel), "/boot/initrd.img": initrd}
    disk.pv_disk(image, files, menu, seed=_disk_seed(ctx, spec.name))
    return describe(ctx.out, image, spec.name, "pv", "pv-grub")


def _pv_grub_kernel(kernel: Path) -> Path:
    """The kernel repacked for PV-GRUB, from the download cache when the same kernel was repacked by
    the same code before (it depends on nothing else; gzip -9 of the ELF takes seconds)."""
    key = digest_of({"kernel": sha256_file(kernel), "code": sha256_file(Path(pvkernel.__file__))})
    cached = debs.cache_dir() / "pv-grub-kernels" / f"{key[:32]}.vmlinuz"
    if not cached.is_file():
        write_atomic(cached, pvkernel.for_pv_grub(kernel.read_bytes()))
    return cached


def _disk_seed(ctx: BuildContext, name: str) -> str:
    """What a disk's ids (GPT GUIDs, file system UUID, hash seed) derive from: one value per app,
    environment, target and disk, so that a rebuild with other code or configuration keeps them and
    the blocks that hold them do not change. The disks stay byte-identical for equal inputs."""
    return f"{ctx.app.name}|{ctx.settings.env}|{ctx.settings.image.target}|{name}"


def _base_system(tree: initramfs.Tree, busybox_root: Path) -> None:
    """busybox with a link per applet, the directories init mounts on, /dev/console, the hooks."""
    busybox = busybox_root / "bin" / "busybox"
    tree.add_file("/bin/busybox", busybox, mode=0o755)
    applets = run([busybox, "--list"], what="busybox --list").stdout.decode().split()
    for applet in applets:
        if applet != "busybox":
            tree.add(f"/bin/{applet}", initramfs.symlink("busybox"))
    tree.add("/sbin", initramfs.symlink("bin"))
    for d in ("/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/root"):
        tree.add(d, initramfs.directory())
    # The kernel opens /dev/console for /init before anything is mounted: it must be in the archive.
    tree.add("/dev/console", initramfs.char_device(5, 1))
    tree.add("/etc/acpi/PWRF/00000080", initramfs.file(ACPI_POWER_ACTION.encode(), 0o755))
    tree.add("/etc/shutdown-request", initramfs.file(SHUTDOWN_REQUEST.encode(), 0o755))
    tree.add("/etc/resolv.conf", initramfs.file(b""))


def unified_kernel_image(out: Path, kernel: Path, initrd: Path, line: str, ctx: BuildContext) -> Path:
    """A UEFI executable: systemd's EFI stub with the kernel, initramfs and command line as sections."""
    if not EFI_STUB.is_file():
        raise ImageError(
            f"{EFI_STUB}: not found", hint="install the Debian package systemd-boot-efi (./setup.sh)"
        )
    osrel = out.parent / "os-release"
    osrel.write_text(
        f'ID={ctx.app.name}\nNAME="{ctx.app.name}"\nVERSION_ID="{ctx.app.version}"\nBUILD_ID="{ctx.build_id}"\n'
    )
    cmd = out.parent / "cmdline"
    cmd.write_bytes(line.encode() + b"\0")
    # Section addresses as systemd documents them for its stub: small sections above the stub's own
    # (which end below 0x20000), the kernel at 32 MiB, the initramfs after it on a 1 MiB boundary.
    kernel_at = 0x2000000
    initrd_at = kernel_at + -(-kernel.stat().st_size // 0x100000) * 0x100000
    run(
        [
            "objcopy",
            "--add-section", f".osrel={osrel}", "--change-section-vma", ".osrel=0x20000",
            "--add-section", f".cmdline={cmd}", "--change-section-vma", ".cmdline=0x30000",
            "--add-section", f".linux={kernel}", "--change-section-vma", f".linux={kernel_at:#x}",
            "--add-section", f".initrd={initrd}", "--change-section-vma", f".initrd={initrd_at:#x}",
            str(EFI_STUB), str(out),
        ],
        what="objcopy",
    )  # fmt: skip
    fix_pe_timestamp(out, disk.EPOCH)
    out.chmod(stat.S_IMODE(out.stat().st_mode) & ~0o022)
    return out


def fix_pe_timestamp(path: Path, timestamp: int) -> None:
    """Set a PE file's COFF TimeDateStamp (objcopy writes the current time) and redo its checksum.

    Offsets from the PE/COFF specification: the PE header offset is at 0x3C; the timestamp is 8
    bytes into the COFF header, the checksum 64 bytes into the optional header that follows it.
    """
    data = bytearray(path.read_bytes())
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if data[pe : pe + 4] != b"PE\0\0":
        raise ImageError(f"{path.name}: not a PE file")
    data[pe + 8 : pe + 12] = timestamp.to_bytes(4, "little")
    checksum_at = pe + 24 + 64
    data[checksum_at : checksum_at + 4] = bytes(4)
    padded = bytes(data) + b"\0" * (len(data) % 2)
    total = sum(memoryview(padded).cast("H"))  # 16-bit little-endian words (x86 is little-endian)
    while total > 0xFFFF:  # end-around carry, as the specification's running sum does
        total = (total & 0xFFFF) + (total >> 16)
    data[checksum_at : checksum_at + 4] = ((total & 0xFFFF) + len(data)).to_bytes(4, "little")
    write_atomic(path, bytes(data))


def _host_package_versions() -> dict[str, str]:
    proc = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *HOST_PACKAGES], what="dpkg-query")
    versions = {}
    for line in proc.stdout.decode().splitlines():
        name, _, version = line.partition(" ")
        versions[f"host:{name}"] = version
    return versions


def copy_file(src: Path, dest: Path, what: str) -> None:
    """Copy ``src`` to ``dest``; a full disk (or any other write error) is a one-line ImageError. The
    build directory it writes into is removed by the build when this fails."""
    try:
        shutil.copyfile(src, dest)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ImageError(
                f"no space left on the disk of {dest.parent} while copying {what} ({src.name})",
                hint=f"free some space there (df -h {dest.parent}), then run invoke build again",
            ) from err
        raise ImageError(
            f"cannot copy {what} {src} to {dest}: {err.strerror or err}",
            hint="check that the build directory is writable, then run invoke build again",
        ) from err
