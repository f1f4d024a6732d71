"""The beam image target end to end: real builds (pinned Debian kernel and busybox, the host's erts),
real disk images read back with e2fsprogs and binutils, and real QEMU boots (software emulation).

One project copy is built once per environment for the whole module; the boots are few and each one
checks several things, so the module stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
import lzma
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import build, config
from pipeline.blocks import BLOCK_SIZE, GIB, scan
from pipeline.build import BuildResult
from pipeline.config import Settings
from pipeline.errors import PipelineError, ToolMissing
from pipeline.images import disk, initramfs, recipe
from pipeline.local import boot, qemu
from pipeline.manifest import sha256_file
from pipeline.xen import pvkernel
from tests.project import copy_project

pytestmark = pytest.mark.slow


@dataclass
class Built:
    settings: Settings
    result: BuildResult

    @property
    def image(self) -> dict[str, Any]:
        image: dict[str, Any] = self.result.manifest["image"]
        return image

    def disk(self, name: str) -> Path:
        return self.result.directory / next(d["file"] for d in self.image["disks"] if d["name"] == name)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def dev(project: Path) -> Built:
    s = config.load(project, env="dev")
    return Built(s, build.build(s))


@pytest.fixture(scope="module")
def prod(project: Path) -> Built:
    s = config.load(project, env="prod", overrides=["app.config.greeting=Greetings from the prod image"])
    return Built(s, build.build(s))


def _no_qemu_left() -> None:
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True
    )
    assert qemu.QEMU not in out.stdout


# -- the build record and the files -------------------------------------------------------------------


def test_build_records_versions_initramfs_cmdline_and_each_disk(dev: Built) -> None:
    r = recipe.load(dev.settings.root)
    image = dev.image
    assert image["kernel"]["package"] == r.kernel.package and image["kernel"]["version"] == r.kernel.version
    assert image["busybox"]["version"] == r.busybox.version
    initrd = dev.result.directory / image["initramfs"]["file"]
    assert image["initramfs"]["size"] == initrd.stat().st_size < 8_000_000
    assert image["cmdline"]["hvm-uefi"].startswith("console=ttyS0 ")
    assert image["cmdline"]["pv"].startswith("console=hvc0 ")
    assert (dev.result.directory / "boot" / "cmdline").read_text().strip() == image["cmdline"]["direct"]
    assert [d["name"] for d in image["disks"]] == ["hvm-uefi", "pv"]
    for record in image["disks"]:
        path = dev.result.directory / record["file"]
        blocks = scan(path)
        assert record["size"] == path.stat().st_size == GIB
        assert record["nonzero_blocks"] == len(blocks.digests) > 0
        assert record["nonzero_blocks"] * BLOCK_SIZE < 64 << 20  # mostly zero, and sparse on disk
        assert path.stat().st_blocks * 512 < 64 << 20
        stored = json.loads((dev.result.directory / record["blocks_file"]).read_text())
        assert {int(k): v for k, v in stored["blocks"].items()} == blocks.digests


def test_runtime_is_trimmed_to_the_apps_the_app_needs(dev: Built) -> None:
    runtime = dev.image["runtime"]
    assert set(runtime["applications"]) == {"kernel", "stdlib", "mnesia", "erlang_web"}
    raw = _unpacked_initramfs(dev)
    names = _cpio_names(raw)
    assert "init" in names and "dev/console" in names
    lib = [n for n in names if n.startswith("opt/erlang/lib/")]
    assert {n.split("/")[4] for n in lib if n.count("/") >= 4} == {"ebin"}  # no src, include, doc
    erts = [n.rsplit("/", 1)[-1] for n in names if "/erts-" in n and n.count("/") == 4]
    # epmd only for a release whose vm.args names the node; erlang_web's does not
    assert sorted(erts) == sorted(p for p in recipe.load(dev.settings.root).otp_programs if p != "epmd")
    # every beam is stripped: no debug info, docs or abstract code chunks
    beams = [n for n in names if n.endswith(".beam")]
    assert len(beams) > 100
    for module in ("lists", "mnesia", "erlang_web_app"):
        path = next(b for b in beams if b.endswith(f"/{module}.beam"))
        assert _beam_chunks(_member(raw, path)) & {"Dbgi", "Docs", "Abst", "CInf"} == set()


def test_same_inputs_give_byte_identical_disks(project: Path, dev: Built) -> None:
    before = {d["name"]: d["sha256"] for d in dev.image["disks"]}
    initrd_before = dev.image["initramfs"]["size"]
    again = build.build(dev.settings, force=True)
    assert again.build_id == dev.result.build_id and not again.reused
    assert {d["name"]: d["sha256"] for d in again.manifest["image"]["disks"]} == before
    assert again.manifest["image"]["initramfs"]["size"] == initrd_before


def test_a_config_only_rebuild_keeps_the_runtime_archive_and_changes_few_disk_blocks(
    project: Path, dev: Built
) -> None:
    s = config.load(project, env="dev", overrides=["app.config.greeting=a config-only change"])
    other = Built(s, build.build(s))
    assert other.result.build_id != dev.result.build_id
    parts = [p["name"] for p in dev.image["initramfs"]["parts"]]
    assert parts == ["runtime", "config"]
    runtime_size = dev.image["initramfs"]["parts"][0]["size"]
    assert other.image["initramfs"]["parts"][0] == dev.image["initramfs"]["parts"][0]
    before = (dev.result.directory / dev.image["initramfs"]["file"]).read_bytes()
    after = (other.result.directory / other.image["initramfs"]["file"]).read_bytes()
    assert before[:runtime_size] == after[:runtime_size] and before != after
    # the configuration the kernel ends up with is the new one (the later archive)
    sys_config = f"opt/erlang/releases/{other.result.manifest['app']['version']}/sys.config"
    assert b"a config-only change" in _member(_unpacked_initramfs(other), sys_config)
    for name in ("hvm-uefi", "pv"):
        old, new = scan(dev.disk(name)), scan(other.disk(name))
        changed = new.changed_since(old)
        assert 0 < len(changed) < len(new.digests) / 10, (name, changed, len(new.digests))


def test_changing_the_recipe_or_a_pin_changes_the_build_id(tmp_path: Path, dev: Built) -> None:
    other = copy_project(tmp_path / "p")
    same = build.plan(config.load(other, env="dev")).build_id
    assert same == dev.result.build_id
    path = other / recipe.RECIPE
    pin = recipe.load(other).kernel.version
    path.write_text(path.read_text().replace(f'"{pin}"', f'"{pin}9"'))
    assert build.plan(config.load(other, env="dev")).build_id != same


def test_pv_disk_is_ext2_with_a_menu_lst_whose_files_exist(dev: Built) -> None:
    image = dev.disk("pv")
    with image.open("rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"  # ext2 superblock at offset 0: no partition table
    menu = _debugfs(image, "cat /boot/grub/menu.lst").decode()
    lines = dict(line.split(None, 1) for line in menu.splitlines() if line.strip())
    assert set(lines) == {"default", "timeout", "title", "root", "kernel", "initrd"}
    assert lines["root"] == "(hd0)"
    kernel_path, cmdline = lines["kernel"].split(None, 1)
    assert cmdline == dev.image["cmdline"]["pv"]
    # The kernel in the form PV-GRUB reads (the cloud kernel's LZ4 bzImage becomes its ELF, gzipped).
    vmlinuz = (dev.result.directory / "boot" / "vmlinuz").read_bytes()
    assert _debugfs(image, f"cat {kernel_path}") == pvkernel.for_pv_grub(vmlinuz)
    assert pvkernel.inspect(_debugfs(image, f"cat {kernel_path}")).packing == "gzip elf"
    initrd = dev.result.directory / dev.image["initramfs"]["file"]
    assert _debugfs(image, f"cat {lines['initrd']}") == initrd.read_bytes()


def test_uefi_disk_holds_a_unified_kernel_image_with_the_baked_cmdline(dev: Built, tmp_path: Path) -> None:
    image = dev.disk("hvm-uefi")
    table = subprocess.run(
        ["sfdisk", "--dump", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "label: gpt" in table and f"type={disk.ESP_TYPE}" in table
    uki = tmp_path / "BOOTX64.EFI"
    subprocess.run(
        ["mcopy", "-i", f"{image}@@{disk.ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", str(uki)],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
    )
    out = tmp_path / "cmdline"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.cmdline", str(uki), str(out)], check=True)
    assert out.read_bytes().rstrip(b"\0").decode() == dev.image["cmdline"]["hvm-uefi"]
    linux = tmp_path / "linux"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.linux", str(uki), str(linux)], check=True)
    assert linux.read_bytes() == (dev.result.directory / "boot" / "vmlinuz").read_bytes()


# -- bad input ----------------------------------------------------------------------------------------------


def _builds_left(settings: Settings) -> list[str]:
    root = build.builds_dir(settings)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_kernel_command_line_over_the_limit_is_refused_before_building(tmp_path: Path) -> None:
    p = copy_project(tmp_path / "p")
    path = p / recipe.RECIPE
    path.write_text(path.read_text().replace('cmdline = "quiet', f'cmdline = "{"x" * 1100} quiet'))
    s = config.load(p, env="dev")
    with pytest.raises(PipelineError) as err:
        build.build(s)
    assert str(err.value).startswith("ami/beam.toml: kernel.cmdline: the disks.pv command line is ")
    assert "over its limit of 1024" in str(err.value) and "\n" not in str(err.value)
    assert _builds_left(s) == []


def test_a_kernel_version_apt_does_not_have_fails_cleanly(tmp_path: Path) -> None:
    p = copy_project(tmp_path / "p")
    path = p / recipe.RECIPE
    pin = recipe.load(p).kernel
    path.write_text(path.read_text().replace(f'version = "{pin.version}"', f'version = "{pin.version}99"'))
    s = config.load(p, env="dev")
    with pytest.raises(PipelineError) as err:
        build.build(s)
    assert str(err.value).startswith(
        f"ami/beam.toml: kernel: Debian package {pin.package} version {pin.version}99 is not available"
    )
    assert "(hint: run apt-get update" in str(err.value) and "\n" not in str(err.value)
    assert _builds_left(s) == []


def test_an_otp_application_that_is_not_installed_fails_cleanly(tmp_path: Path) -> None:
    p = copy_project(tmp_path / "p")
    path = p / recipe.RECIPE
    path.write_text(path.read_text().replace("applications = []", 'applications = ["no_such_app"]'))
    s = config.load(p, env="dev")
    with pytest.raises(PipelineError) as err:
        build.build(s)
    assert str(err.value).startswith(
        "ami/beam.toml: otp.applications: OTP application no_such_app is not installed in "
    )
    assert _builds_left(s) == []


def test_run_without_qemu_says_so_and_makes_nothing(
    dev: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match=r"qemu-system-x86_64: not found on PATH \(hint: install"):
        boot.boot(dev.settings, check=True)
    assert not (dev.settings.work_dir / "run").exists()


def test_run_on_a_port_in_use_says_so_and_leaves_nothing(dev: Built) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(qemu.PortInUse, match=f"port {port} on 127.0.0.1 is already in use"):
            boot.boot(dev.settings, port=port, check=True)
    run_dir = dev.settings.work_dir / "run" / dev.result.build_id
    assert not list(run_dir.glob("scratch-*.img"))
    _no_qemu_left()


# -- boots ---------------------------------------------------------------------------------------------------


@contextmanager
def _boot(built: Built, scratch_file: Path | None, disk_boot: bool = False) -> Iterator[qemu.Vm]:
    s = built.settings
    log = built.settings.work_dir / "test-console.log"
    spec = boot.spec_for(
        s, built.result.manifest, built.result.directory, disk=disk_boot, scratch=scratch_file, port=0,
        name="test", console_log=log,
    )  # fmt: skip
    with qemu.Vm(spec) as vm:
        vm.wait_healthy(s.app.port, timeout=300)
        yield vm
    _no_qemu_left()


def _get(vm: qemu.Vm, port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    status, body = qemu.http_get(vm.ports[port], path, method=method)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_direct_boot_serves_the_baked_config_and_the_counter_survives_a_reboot(
    dev: Built, tmp_path: Path
) -> None:
    scratch = qemu.make_scratch(tmp_path / "scratch.img", 1)
    port = dev.settings.app.port
    with _boot(dev, scratch) as vm:
        status, body = _get(vm, port, "/")
        assert status == 200 and body.strip() == dev.settings.app.config["greeting"] == "Hello from dev"
        status, version = _get(vm, port, "/version")
        assert status == 200 and version["build_id"] == dev.result.build_id and version["env"] == "dev"
        assert _get(vm, port, "/health") == (200, {"status": "ok", "storage": "disc"})
        assert _get(vm, port, "/counter", "POST") == (200, {"counter": 1})
        assert _get(vm, port, "/counter", "POST") == (200, {"counter": 2})
        console = vm.spec.console_log.read_text(errors="replace")
        _check_console(console)
        # The app's log reaches the console, and it has the descriptors its max_connections needs
        # (it warns at start otherwise): the init script raised PID 1's limit of 1024 for the VM.
        assert "erlang_web: counter storage ready" in console
        assert "open-files limit" not in console
    # the same VM again (powered off cleanly above), with the same scratch file
    with _boot(dev, scratch) as vm:
        assert _get(vm, port, "/counter") == (200, {"counter": 2})


def test_another_environment_answers_with_its_own_baked_config_and_a_fresh_counter(
    prod: Built, dev: Built
) -> None:
    assert prod.result.build_id != dev.result.build_id
    port = prod.settings.app.port
    with _boot(prod, None) as vm:  # no scratch disk: the app keeps the counter in RAM
        status, body = _get(vm, port, "/")
        assert status == 200 and body.strip() == "Greetings from the prod image"
        assert _get(vm, port, "/version")[1]["build_id"] == prod.result.build_id
        assert _get(vm, port, "/health") == (200, {"status": "ok", "storage": "ram"})
        assert _get(vm, port, "/counter") == (200, {"counter": 0})


def test_the_uefi_disk_boots_through_ovmf_and_starts_a_fresh_scratch_disk_at_0(
    dev: Built, tmp_path: Path
) -> None:
    fresh = qemu.make_scratch(tmp_path / "fresh.img", 1)
    disk_sha = dev.image["disks"][0]["sha256"]
    port = dev.settings.app.port
    with _boot(dev, fresh, disk_boot=True) as vm:
        assert _get(vm, port, "/version")[1]["build_id"] == dev.result.build_id
        assert _get(vm, port, "/health") == (200, {"status": "ok", "storage": "disc"})
        assert _get(vm, port, "/counter") == (200, {"counter": 0})
        console = vm.spec.console_log.read_text(errors="replace")
        # NVMe disks as on Nitro: the boot disk (partitioned) is nvme0n1, the blank scratch disk nvme1n1
        assert "init: scratch: making a file system on /dev/nvme1n1" in console
    assert sha256_file(dev.disk("hvm-uefi")) == disk_sha  # booted through an overlay: never written


# -- helpers -------------------------------------------------------------------------------------------------


def _check_console(console: str) -> None:
    """What ``invoke logs`` shows of a boot: the init script's phases with their uptime, the wall clock
    once, then the Erlang VM's logger, one line per event with its UTC time, and no kernel chatter."""
    import re

    lines = console.replace("\r", "").splitlines()
    mark = next(n for n, line in enumerate(lines) if "init: console: kernel messages below errors" in line)
    assert re.search(r"clock \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", lines[mark])
    assert any(re.match(r"\[\d+\.\d+\] init: network: ", line) for line in lines[:mark])
    erlang = [line for line in lines[mark:] if re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ", line)]
    assert any(" notice: erlang_web: started (build " in line for line in erlang), lines[mark:]
    kernel = [line for line in lines[mark:] if re.match(r"\[ *\d+\.\d{6}\] ", line)]
    assert kernel == []


def _unpacked_initramfs(built: Built) -> bytes:
    data = (built.result.directory / built.image["initramfs"]["file"]).read_bytes()
    method = built.image["initramfs"]["compression"]
    if method == "xz":
        return lzma.decompress(data)
    tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dcq"], "none": ["cat"]}[method]
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def _cpio_names(raw: bytes) -> list[str]:
    """Names in every archive of the initramfs (cpio stops at an archive's trailer: one at a time)."""
    names = []
    for part in initramfs.split(raw):
        out = subprocess.run(["cpio", "-it", "--quiet"], input=part, capture_output=True, check=True)
        names += out.stdout.decode().split()
    return names


def _member(raw: bytes, name: str) -> bytes:
    """The file ``name`` as the kernel leaves it: from the last archive that holds it."""
    found = b""
    for part in initramfs.split(raw):
        if (
            name
            in subprocess.run(["cpio", "-it", "--quiet"], input=part, capture_output=True)
            .stdout.decode()
            .split()
        ):
            found = subprocess.run(
                ["cpio", "-i", "--quiet", "--to-stdout", name], input=part, capture_output=True, check=True
            ).stdout
    return found


def _beam_chunks(data: bytes) -> set[str]:
    """Chunk ids of a .beam file (an IFF container: 'FOR1' size 'BEAM' then id/size/data chunks)."""
    if data[:4] != b"FOR1":  # a compressed beam: gzip
        import gzip

        data = gzip.decompress(data)
    assert data[8:12] == b"BEAM"
    chunks, pos = set(), 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4].decode(), int.from_bytes(data[pos + 4 : pos + 8], "big")
        chunks.add(cid)
        pos += 8 + (size + 3) // 4 * 4
    return chunks


def _debugfs(image: Path, request: str) -> bytes:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, check=True).stdout
