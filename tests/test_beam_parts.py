"""Parts of the beam target that need no kernel package and no VM: the cpio writer, the recipe
loader, the QEMU runner's refusals."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, PipelineError, ToolMissing
from pipeline.images import beam, initramfs, recipe
from pipeline.local import qemu

ROOT = Path(__file__).resolve().parent.parent


def _listing(archive: bytes) -> list[str]:
    """``cpio -itv`` of an archive: the real cpio program reads what we wrote."""
    out = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    return out.splitlines()


def test_cpio_archive_is_read_back_by_cpio_with_fixed_owner_times_and_a_device_node(tmp_path: Path) -> None:
    tree = initramfs.Tree()
    tree.add("/init", initramfs.file(b"#!/bin/sh\n", 0o755))
    tree.add("/bin/sh", initramfs.symlink("busybox"))
    tree.add("/dev/console", initramfs.char_device(5, 1))
    tree.add("/opt/erlang/lib/x.beam", initramfs.file(b"FOR1"))
    lines = _listing(initramfs.archive(tree.entries))
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == ["bin", "bin/sh", "dev", "dev/console", "init", "opt", "opt/erlang", "opt/erlang/lib",
                     "opt/erlang/lib/x.beam"]  # fmt: skip
    console = next(line for line in lines if line.endswith("dev/console"))
    assert console.startswith("crw-------") and " 5,   1 " in console
    for line in lines:
        assert " root     root " in line and "Jan  1  2000" in line
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=initramfs.archive(tree.entries),
        cwd=extract,
        check=True,
    )
    assert (extract / "init").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((extract / "init").stat().st_mode) == 0o755
    assert (extract / "bin" / "sh").readlink() == Path("busybox")


@pytest.mark.parametrize("method", ["gzip", "xz", "zstd"])
def test_compressed_archive_is_deterministic_and_unpacks(
    method: initramfs.Compression, tmp_path: Path
) -> None:
    tree = initramfs.Tree()
    tree.add("/a/b", initramfs.file(b"hello" * 1000))
    raw = initramfs.archive(tree.entries)
    packed = initramfs.compress(raw, method)
    assert packed == initramfs.compress(raw, method)
    tool = {"gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "zstd": ["zstd", "-dcq"]}[method]
    assert subprocess.run(tool, input=packed, capture_output=True, check=True).stdout == raw


def test_tree_refuses_the_same_path_with_different_content() -> None:
    tree = initramfs.Tree()
    tree.add("/bin/mke2fs", initramfs.symlink("busybox"))
    with pytest.raises(PipelineError, match="initramfs path /bin/mke2fs: added twice"):
        tree.add("/bin/mke2fs", initramfs.file(b"ELF"))


def _project_recipe(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    (tmp_path / "ami").mkdir()
    text = (ROOT / recipe.RECIPE).read_text()
    if edit:
        text, count = re.subn(
            edit[0] if edit[0].startswith("version") else re.escape(edit[0]), edit[1], text, count=1
        )
        assert count == 1
    (tmp_path / recipe.RECIPE).write_text(text)
    return tmp_path


def test_the_shipped_recipe_loads() -> None:
    r = recipe.load(ROOT)
    assert r.kernel.package.startswith("linux-image-") and r.kernel.version
    assert {d.name for d in r.disks} == {"hvm-uefi", "pv"}
    assert {p.name for p in r.platforms} >= {"virtio", "nitro", "xen"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('version = "6.1.192-2"', 'version = ""'),
            "ami/beam.toml: kernel.version: expected an exact Debian",
        ),
        (('detect = "pci:1d0f"', 'detect = "usb"'), "ami/beam.toml: platforms.nitro.detect: expected"),
        (
            ('compression = "zstd"', 'compression = "lz5"'),
            "ami/beam.toml: initramfs.compression: expected one",
        ),
        (("[disks.pv]", "[disks.floppy]"), "ami/beam.toml: disks.floppy: unknown disk"),
        (('modules = ["ena"]', "modules = []"), "ami/beam.toml: platforms.nitro.modules: expected a list"),
    ],
)
def test_recipe_errors_name_the_file_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        recipe.load(_project_recipe(tmp_path, edit))
    assert "\n" not in str(err.value)


def test_a_missing_recipe_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ami/beam.toml: network.dhcp_tries: missing"):
        recipe.load(_project_recipe(tmp_path, ("dhcp_tries = 20", "")))


def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = qemu.VmSpec(
            name="t", console_log=tmp_path / "c.log", kernel=tmp_path / "k", initrd=tmp_path / "i",
            forwards={8080: port},
        )  # fmt: skip
        (tmp_path / "k").write_bytes(b"k")
        (tmp_path / "i").write_bytes(b"i")
        vm = qemu.Vm(spec)
        with pytest.raises(qemu.PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            vm.start()
    assert vm.proc is None and vm.work is None
    assert not (tmp_path / "c.log").exists()


def test_no_qemu_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = qemu.VmSpec(name="t", console_log=tmp_path / "c.log", kernel=tmp_path / "k", initrd=tmp_path / "i")
    with pytest.raises(ToolMissing, match=r"qemu-system-x86_64: not found on PATH \(hint: install"):
        qemu.Vm(spec).start()
    assert sorted(tmp_path.iterdir()) == []


def test_a_qemu_that_fails_to_start_leaves_no_process_and_no_files(tmp_path: Path) -> None:
    if shutil.which(qemu.QEMU) is None:
        pytest.skip("QEMU is not installed")
    spec = qemu.VmSpec(
        name="t",
        console_log=tmp_path / "c.log",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        forwards={80: 0},
    )
    (tmp_path / "k").write_bytes(b"not a kernel")
    (tmp_path / "i").write_bytes(b"i")
    vm = qemu.Vm(spec)
    vm.start()
    with pytest.raises(PipelineError, match="VM t exited before /health answered"):
        vm.wait_healthy(80, timeout=60)
    work = vm.work
    assert work is not None and work.exists()
    vm.stop(grace=0)
    assert not work.exists() and not vm.running()


def test_pe_timestamp_fix_keeps_objcopys_checksum_algorithm(tmp_path: Path) -> None:
    """objcopy stamps the current time into a PE file; the fix sets a fixed one with a valid checksum."""
    if not beam.EFI_STUB.is_file():
        pytest.skip("systemd-boot-efi is not installed")
    (tmp_path / "payload").write_bytes(b"x" * 100_001)
    out = tmp_path / "a.efi"
    subprocess.run(
        ["objcopy", "--add-section", f".linux={tmp_path / 'payload'}", "--change-section-vma",
         ".linux=0x2000000", str(beam.EFI_STUB), str(out)],
        check=True,
    )  # fmt: skip
    original = out.read_bytes()
    pe = int.from_bytes(original[0x3C:0x40], "little")
    beam.fix_pe_timestamp(out, int.from_bytes(original[pe + 8 : pe + 12], "little"))
    assert out.read_bytes() == original  # same stamp: objcopy's own checksum is reproduced exactly
    beam.fix_pe_timestamp(out, 946684800)
    header = subprocess.run(["objdump", "-p", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Sat Jan  1 00:00:00 2000" in header


def test_files_of_a_killed_run_are_removed_and_those_of_live_processes_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"{dead.pid}-vm-web-abc").mkdir()
    (tmp_path / f"{os.getpid()}-vm-web-def").mkdir()
    (tmp_path / f"scratch-{dead.pid}.img").write_bytes(b"")
    (tmp_path / "unrelated").mkdir()
    qemu.remove_abandoned(tmp_path.iterdir(), r"(?P<pid>\d+)-vm-")
    qemu.remove_abandoned(tmp_path.iterdir(), r"scratch-(?P<pid>\d+)\.img$")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}-vm-web-def", "unrelated"]
