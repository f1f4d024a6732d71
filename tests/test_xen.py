"""Xen under QEMU: PV disks booted through the PV-GRUB-compatible loader (slow; marked ``xen``).

One Xen machine is booted for the module with several disks attached, and the tests start one guest
each on it, in turn: a small Linux guest that answers HTTP, three broken disks, the ling target's PV
disk with the volumes a ling instance gets, and two guests with a scratch volume besides the root one
(where EC2 names it, and where a name numbered below the root's would take PV-GRUB's hd0). Another
test runs the whole ``check`` on a broken disk to show it fails in bounded time and leaves no QEMU
behind. The app's own PV disk (the beam target) is booted by ``test_xen_check.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.errors import ImageError
from pipeline.images import devices
from pipeline.xen import check, pvdisk, recipe
from pipeline.xen import host as xenhost
from pipeline.xen.machine import Guest, GuestDisk, XenCheckFailed, XenMachine
from tests.project import copy_project
from tests.railing_standin import make_toolchain, railing_dir
from tests.railing_standin.projects import ling_project, ling_settings
from tests.xen_disks import ext2_disk, guest_initrd, guest_kernel, menu_lst

pytestmark = pytest.mark.xen

FIXTURE_VERSION = "fixture-guest-1"


@dataclass
class Env:
    settings: config.Settings
    recipe: recipe.XenRecipe
    host: xenhost.PreparedHost
    disks: dict[str, Path]  # guest name (a, b, ...) -> its boot disk
    guests: dict[str, Path | Guest]  # guest name -> its boot disk (the root volume) or all its volumes
    ling: build.BuildResult


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = copy_project(tmp_path_factory.mktemp("xen-project"))
    settings = config.load(root)
    r = recipe.load(root)
    test_host = xenhost.prepare(root, r)
    work = tmp_path_factory.mktemp("xen-disks")
    kernel = guest_kernel(r)
    initrd = guest_initrd(r, work, FIXTURE_VERSION, settings.app.port)
    disks = {
        "a": ext2_disk(
            work / "guest.img",
            {
                "/boot/vmlinuz": kernel,
                "/boot/initrd.gz": initrd,
                "/boot/grub/menu.lst": menu_lst("/boot/vmlinuz", "/boot/initrd.gz"),
            },
        ),
        "b": ext2_disk(work / "no-menu-lst.img", {"/boot/vmlinuz": kernel}),
        "c": ext2_disk(
            work / "missing-kernel.img",
            {"/boot/grub/menu.lst": menu_lst("/boot/vmlinuz-6.1.0-missing", "/boot/initrd.gz")},
        ),
        # An ordinary x86-64 ELF program (busybox) named as the kernel: no Xen notes, not a PV kernel.
        "d": ext2_disk(
            work / "not-pv.img",
            {"/boot/vmlinuz": Path("/bin/busybox"), "/boot/grub/menu.lst": menu_lst("/boot/vmlinuz")},
        ),
    }
    ling = _ling_build(tmp_path_factory.mktemp("ling"))
    disks["e"] = ling.directory / "disks" / "pv.img"
    guests: dict[str, Path | Guest] = dict(disks)
    guests["e"] = _instance(disks["e"], "ling", work / "ling-scratch.img")
    disks["f"] = disks["g"] = disks["a"]
    guests["f"] = _instance(disks["a"], "beam", work / "scratch-f.img")
    # the layout used before: a scratch volume at /dev/sda, vbd 2048, below the root's 2049
    guests["g"] = Guest((GuestDisk(disks["a"], "sda1"), _blank(work / "scratch-g.img", "sda")))
    return Env(settings, r, test_host, disks, guests, ling)


def _instance(disk: Path, target: str, scratch: Path) -> Guest:
    """The volumes an instance of ``target`` gets, as devices.mapping names them."""
    volumes = []
    for device in devices.mapping(target, "pv"):
        volumes.append(
            GuestDisk(disk, device.vdev) if device.role == "root" else _blank(scratch, device.vdev)
        )
    return Guest(tuple(volumes))


def _blank(path: Path, vdev: str) -> GuestDisk:
    with path.open("wb") as f:
        f.truncate(64 << 20)
    return GuestDisk(path, vdev, writable=True)


def _ling_build(tmp: Path) -> build.BuildResult:
    """The ling target's build of a tiny app, made with the railing stand-in (tests/railing_standin)."""
    project = ling_project(tmp / "project")
    otp17 = make_toolchain(tmp / "otp17")
    railing = railing_dir(tmp / "railing-bin") / "railing"
    return build.build(config.load(project, overrides=ling_settings(otp17, railing=railing)))


@pytest.fixture(scope="module")
def machine(env: Env) -> Iterator[XenMachine]:
    timer = check.Timer(print)
    with check.running(env.settings, env.recipe, env.host, list(env.guests.values()), timer) as m:
        yield m
    assert not _alive(m.pid), "QEMU still running after the machine was closed"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _guest_text(m: XenMachine, name: str) -> str:
    return "\n".join(ln.text for ln in m.lines if ln.source == f"g{name}")


def test_guest_booted_through_the_loader_answers_http_and_shuts_down(env: Env, machine: XenMachine) -> None:
    timer = check.Timer(print)
    guest = check.boot_guest(machine, "a", env.disks["a"], timer)
    assert guest.loader == "pvgrub: found (hd0)/boot/grub/menu.lst"
    responses = check.probe(machine, "a", env.recipe.timeouts.boot, timer)
    assert [(r.path, r.status) for r in responses] == [("/health", 200), ("/version", 200)]
    assert responses[1].body.strip() == FIXTURE_VERSION
    text = _guest_text(machine, "a")
    assert "fixture: init, guest type PV" in text  # a PV guest, not HVM
    assert "fixture: address 10.0.2.15" in text  # DHCP through netfront, netback and dom0's bridge
    assert "fixture: devices vbd-2049 vif-0" in text  # the root volume as EC2 numbers /dev/sda1
    assert check.stop_guest(machine, "a", timer) == "stopped"  # the guest honoured xl shutdown


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("b", "pvgrub: FAIL no menu.lst where PV-GRUB looks"),  # the loader's own report, then it halts
        ("c", "error: couldn't load file /boot/vmlinuz-6.1.0-missing."),  # GRUB's error
        ("d", "error: couldn't load file /boot/vmlinuz."),  # GRUB found no Xen kernel in the ELF
    ],
    ids=["no-menu-lst", "missing-kernel", "not-a-pv-kernel"],
)
def test_broken_disk_fails_loudly_and_fast(env: Env, machine: XenMachine, name: str, expected: str) -> None:
    started = time.monotonic()
    with pytest.raises(XenCheckFailed) as err:
        timer = check.Timer(print)
        check.boot_guest(machine, name, env.disks[name], timer)
        check.probe(machine, name, env.recipe.timeouts.boot, timer)
    assert f"g{name}: {expected}" in err.value.excerpt  # the console lines that show why
    assert any("pvgrub: found" in line for line in err.value.excerpt) == (name != "b")
    assert expected in str(err.value) and "\n" not in str(err.value)  # and the one-line error says it
    assert time.monotonic() - started < 90  # the loader reports in seconds, not at a timeout
    check.wait_gone(machine, name, 60)  # halted by the loader, or destroyed by the harness


def test_ling_pv_disk_is_loaded_and_entered(env: Env, machine: XenMachine) -> None:
    """The ling target's PV disk, up to the jump into the kernel.

    The image is made by the railing stand-in: a real ELF with LING's ``__xen_guest`` section whose
    entry point is a ``hlt``, not LING itself. So this shows that the loader finds the disk's
    menu.lst, accepts and loads the ELF and starts it at its entry point (where Xen stops the guest,
    as a PV guest may not halt the CPU). A real LING boot needs a real LING image from a real railing.
    """
    inspected = pvdisk.inspect(env.disks["e"])
    assert inspected.kernel.xen == "__xen_guest"
    guest = check.boot_to_kernel_entry(machine, "e", env.disks["e"], inspected, check.Timer(print))
    # the root volume (sda1, vbd 2049) is hd0 although LING's scratch volume (xvda, 51712) is attached
    assert [d.vdev for d in env.guests["e"].disks] == ["sda1", "xvda"]  # type: ignore[union-attr]
    assert guest.loader == "pvgrub: found (hd0)/boot/grub/menu.lst"
    assert guest.outcome == "crashed"
    assert guest.crash_rip == inspected.kernel.entry
    assert "error:" not in _guest_text(machine, "e")


def test_a_scratch_volume_at_its_ec2_name_comes_after_the_root(env: Env, machine: XenMachine) -> None:
    timer = check.Timer(print)
    guest = check.boot_guest(machine, "f", env.disks["f"], timer)
    assert guest.loader == "pvgrub: found (hd0)/boot/grub/menu.lst"
    # /dev/sda1 and /dev/sdf, numbered as EC2 numbers them (devices.py); the loader named them so
    machine.wait_for(r"^fixture: devices", env.recipe.timeouts.boot, "guest f did not start", source="gf")
    assert "fixture: devices vbd-2049 vbd-2128 vif-0" in _guest_text(machine, "f")
    assert "(memdisk) (xen/sda1) (xen/sdf)" in _guest_text(machine, "f")
    check.stop_guest(machine, "f", timer)


def test_a_volume_numbered_below_the_root_takes_hd0_and_the_guest_does_not_boot(
    env: Env, machine: XenMachine
) -> None:
    """Why devices.check_order refuses such a mapping: the loader reads hd0, the lowest vbd number."""
    with pytest.raises(XenCheckFailed, match=r"pvgrub: FAIL no menu\.lst where PV-GRUB looks"):
        check.boot_guest(machine, "g", env.disks["g"], check.Timer(print))
    check.wait_gone(machine, "g", 60)


def test_check_of_a_broken_disk_fails_within_its_deadline_and_leaves_no_qemu(
    env: Env, tmp_path: Path
) -> None:
    root = copy_project(tmp_path / "project")
    settings = config.load(root)
    with pytest.raises(ImageError, match=r"no menu.lst in any place PV-GRUB looks"):
        check.check(settings, env.disks["b"])  # refused before anything boots
    assert not list((root / ".pipeline").glob("xen/run-*"))

    started = time.monotonic()
    with pytest.raises(XenCheckFailed) as err:
        check.check(settings, env.disks["b"], validate=False)
    assert "pvgrub: FAIL no menu.lst where PV-GRUB looks" in str(err.value)
    assert time.monotonic() - started < env.recipe.timeouts.toolstack + env.recipe.timeouts.loader
    assert _qemu_processes_under(root) == []


def _qemu_processes_under(root: Path) -> list[int]:
    """QEMU processes whose command line names a file under ``root`` (this test's run directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(root) in cmdline:
            found.append(int(proc.name))
    return found


def test_a_qemu_that_cannot_start_fails_at_once_with_its_reason(env: Env, tmp_path: Path) -> None:
    broken = dataclasses.replace(env.recipe, qemu=dataclasses.replace(env.recipe.qemu, cpu="NoSuchCpu"))
    started = time.monotonic()
    with (
        pytest.raises(XenCheckFailed) as err,
        XenMachine(
            env.host, broken, env.settings.root / "templates", [env.disks["a"]], tmp_path / "run", 256, 8080
        ) as m,
    ):
        m.wait_for("Building a PV Dom0", 60, "Xen did not start dom0", source="xen")
    assert "QEMU exited (status 1)" in str(err.value)
    assert "qemu: qemu-system-x86_64: unable to find CPU model 'NoSuchCpu'" in err.value.excerpt
    assert time.monotonic() - started < 30
    assert not _alive(m.pid)
