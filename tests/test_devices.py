"""EC2 device names and the Xen disk numbers a PV guest sees for them (pipeline/images/devices.py),
tested as data against the evidence the module cites: AWS's table of device names ("Device names for
volumes on Amazon EC2 instances"), Xen's vbd numbering (xen-vbd-interface(7)), the numbers public EC2
PV console logs show, PV-GRUB's hd order (lowest vbd first) and LING's one disk (vbd 51712)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from pipeline.aws import stack
from pipeline.errors import ConfigError
from pipeline.images import devices
from pipeline.images.devices import Device
from tests.test_stack import BASE

# AWS's table, paravirtual row (names EC2 accepts; the documented ones)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PV_AVAILABLE = [f"/dev/{k}{c}{p}" for k in ("sd", "hd") for c in LETTERS for p in ["", *range(1, 16)]]
PV_INSTANCE_STORE = [f"/dev/sd{c}" for c in "bcde"]
EBS_RECOMMENDED = [f"/dev/sd{c}" for c in "fghijklmnop"]


@pytest.mark.parametrize(
    ("device", "vbd"),
    [
        ("/dev/sda", 2048),  # "vbd 2048 is hd0" (turnkeylinux/buildtasks#25, coreos/bugs#1690)
        ("/dev/sda1", 2049),  # device/vbd/2049, a /dev/sda1 root (medic/cht-core#3173)
        ("/dev/sda3", 2051),  # "vbd 2051 is hd1" (turnkeylinux/buildtasks#25)
        ("/dev/sdb", 2064),  # "vbd 2064 is hd2" (same log)
        ("/dev/xvdb", 51728),  # device/vbd/51728 on a PV instance (coreos/bugs#1235)
        ("/dev/xvdc", 51744),
        ("/dev/xvda", 51712),  # LING's device/vbd/51712
        ("/dev/sdf", 2128),
        ("/dev/hda", 768),  # 3 << 8
        ("/dev/hdb1", 833),  # 3 << 8 | 1 << 6 | 1
        ("/dev/hdc", 5632),  # 22 << 8
    ],
)
def test_vbd_numbers_are_xens_for_the_name_as_ec2_gives_it(device: str, vbd: int) -> None:
    assert devices.xen_vbd(device) == vbd


@pytest.mark.parametrize("device", ["/dev/nvme1n1", "/dev/sdq", "/dev/sda16", "/dev/hde", "/dev/sda01", "sd"])
def test_names_outside_xens_numbering_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match=device):
        devices.xen_vbd(device)


# (target, virtualization, app.storage) -> (root, scratch or None)
LAYOUTS = {
    ("beam", "hvm", "auto"): ("/dev/xvda", "/dev/sdf"),
    ("beam", "pv", "auto"): ("/dev/sda1", "/dev/sdf"),
    ("beam", "pv", "ram"): ("/dev/sda1", "/dev/sdf"),  # the beam init script decides; the volume is there
    ("ling", "pv", "auto"): ("/dev/sda1", "/dev/xvda"),
    ("ling", "pv", "disc"): ("/dev/sda1", "/dev/xvda"),
    # no scratch volume: nothing would read it, and vbd 51712 stops a LING without its disk driver
    ("ling", "pv", "ram"): ("/dev/sda1", None),
}


@pytest.mark.parametrize(("key", "expected"), LAYOUTS.items(), ids=["-".join(k) for k in LAYOUTS])
def test_the_layout_of_each_target(key: tuple[str, str, str], expected: tuple[str, str | None]) -> None:
    target, virtualization, storage = key
    root, scratch = expected
    assert devices.root_device(target, virtualization) == root  # type: ignore[arg-type]
    assert devices.scratch_device(target, virtualization, storage) == scratch  # type: ignore[arg-type]
    layout = devices.mapping(target, virtualization, storage)  # type: ignore[arg-type]
    assert [d.name for d in layout] == [root] + ([scratch] if scratch else [])
    if virtualization == "pv":
        assert root in PV_AVAILABLE and root == "/dev/sda1"  # AWS: reserved for the PV root volume
        # PV-GRUB's hd0 is the lowest vbd: the root volume, where menu.lst is
        assert min(layout, key=lambda d: d.vbd).role == "root"
    if scratch is not None and target == "beam":
        assert scratch in EBS_RECOMMENDED and scratch not in PV_INSTANCE_STORE
    if scratch is not None and target == "ling":
        assert devices.xen_vbd(scratch) == devices.LING_VBD == 51712  # the one disk LING opens
        assert devices.ling_goofs(storage)
    if target == "ling" and scratch is None:
        assert not devices.ling_goofs(storage)


def test_no_pv_name_in_awss_table_reaches_lings_disk() -> None:
    """Why the ling scratch volume is /dev/xvda, a name AWS's PV table does not list."""
    reachable = []
    for name in PV_AVAILABLE:
        try:
            reachable.append(devices.xen_vbd(name))
        except ValueError:
            continue  # beyond Xen's numbering (sd[q-z], hd[e-z]): not LING's either
    assert devices.LING_VBD not in reachable
    assert devices.xen_vbd("/dev/sda") == 2048 and devices.xen_vbd("/dev/hda") == 768


def test_a_volume_numbered_below_the_root_is_refused_in_one_line() -> None:
    """The layout used before: scratch /dev/sda (2048) would be PV-GRUB's hd0, ahead of the root (2049)."""
    with pytest.raises(ConfigError) as err:
        devices.check_order([Device("/dev/sda1", "root"), Device("/dev/sda", "scratch")])
    line = str(err.value)
    assert line.startswith("/dev/sda (vbd 2048) would be PV-GRUB's hd0 instead of the root volume /dev/sda1")
    assert "\n" not in line and "(hint:" in line
    devices.check_order([Device("/dev/sda1", "root"), Device("/dev/sdf", "scratch")])
    assert [d.vdev for d in devices.mapping("ling", "pv")] == ["sda1", "xvda"]


@pytest.mark.parametrize(("target", "storage"), list(itertools.product(["beam", "ling"], ["auto", "ram"])))
def test_the_stack_attaches_the_scratch_volume_devices_names(target: str, storage: str) -> None:
    p = dataclasses.replace(BASE, target=target, storage=storage)
    t = json.loads(stack.render(p))
    for color in ("Blue", "Green"):
        data = t["Resources"][f"{color}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
        expected = devices.scratch_device(target, "pv", storage)
        if expected is None:
            assert "BlockDeviceMappings" not in data
        else:
            (bdm,) = data["BlockDeviceMappings"]
            assert bdm["DeviceName"] == expected == devices.scratch_device(target, "hvm", storage)
