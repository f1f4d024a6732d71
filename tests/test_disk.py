"""Disk layouts: PV-GRUB ext2 whole disk and GPT + EFI system partition, read back with e2fsprogs,
sfdisk and mtools (never mounted), and byte-identical for equal inputs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.blocks import GIB, BlockMap, scan
from pipeline.errors import ImageError
from pipeline.images import disk

MENU = (
    "default 0\ntimeout 0\ntitle test\nroot (hd0)\n"
    "kernel /boot/vmlinuz console=hvc0\ninitrd /boot/initrd.img\n"
)


def _files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "k").write_bytes(os.urandom(300_000))
    (tmp_path / "i").write_bytes(b"initramfs" * 10_000)
    return {"/boot/vmlinuz": tmp_path / "k", "/boot/initrd.img": tmp_path / "i"}


def _content(image: Path) -> BlockMap:
    """Size and the digest of every non-zero block: equal maps mean byte-identical images."""
    return scan(image)


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def test_pv_disk_is_ext2_at_offset_0_with_menu_lst_and_its_files(tmp_path: Path) -> None:
    files = _files(tmp_path)
    image = disk.pv_disk(tmp_path / "pv.img", files, MENU)
    assert image.stat().st_size == GIB
    assert image.stat().st_blocks * 512 < 16 << 20  # sparse
    with image.open("rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"  # the ext2 superblock magic at offset 0 of the disk
    assert _debugfs(image, "cat /boot/grub/menu.lst") == MENU
    out = subprocess.run(
        ["debugfs", "-R", "cat /boot/vmlinuz", str(image)], capture_output=True, check=True
    ).stdout
    assert out == files["/boot/vmlinuz"].read_bytes()
    features = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert "ext_attr" in features and "extent" not in features  # plain ext2, no ext4 features
    assert f"Filesystem volume name:   {disk.PV_LABEL}" in features


def test_pv_disk_is_byte_identical_for_equal_inputs(tmp_path: Path) -> None:
    files = _files(tmp_path)
    a = _content(disk.pv_disk(tmp_path / "a.img", files, MENU))
    time.sleep(1.1)  # a later build: file times and the clock differ
    for f in files.values():
        os.utime(f)
    b = _content(disk.pv_disk(tmp_path / "b.img", files, MENU))
    assert a == b
    files["/boot/initrd.img"].write_bytes(b"other")
    assert _content(disk.pv_disk(tmp_path / "c.img", files, MENU)) != a


def test_pv_disk_rejects_a_menu_lst_naming_a_missing_file(tmp_path: Path) -> None:
    files = _files(tmp_path)
    with pytest.raises(ImageError, match=r"menu.lst:6: initrd /boot/initrd.gz is not a file of the disk"):
        disk.pv_disk(tmp_path / "pv.img", files, MENU.replace("initrd.img", "initrd.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i", "k"]  # nothing half-written


def test_pv_disk_checks_menu_lst_with_the_pv_grub_rules(tmp_path: Path) -> None:
    files = _files(tmp_path)
    with pytest.raises(ImageError, match=r"menu.lst:4: entry 'test' boots from \(hd0,0\)"):
        disk.pv_disk(tmp_path / "pv.img", files, MENU.replace("root (hd0)", "root (hd0,0)"))
    with pytest.raises(ImageError, match=r"menu.lst:5: 'linux /boot/vmlinuz console=hvc0': 'linux' is not"):
        disk.pv_disk(tmp_path / "pv.img", files, MENU.replace("kernel /boot", "linux /boot"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i", "k"]


def test_pv_file_system_fits_its_content_in_one_block_group(tmp_path: Path) -> None:
    """No backup superblocks or bitmaps spread over the disk: the data is one run at its start."""
    image = disk.pv_disk(tmp_path / "pv.img", _files(tmp_path), MENU)
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    assert int(fields["Block count"]) * int(fields["Block size"]) == disk.SIZE_STEP
    assert int(fields["Block count"]) <= int(fields["Blocks per group"])
    assert image.stat().st_size == GIB
    assert sorted(scan(image).digests) == [0]  # 390 KB of files after the metadata: one 512 KiB block


def test_a_seed_keeps_the_ids_when_the_content_changes(tmp_path: Path) -> None:
    """Image targets pass a seed per app/env/target: a new release keeps the GUIDs and UUIDs."""
    src = tmp_path / "boot.efi"
    ids = []
    for n, content in enumerate((b"one" * 1000, b"two" * 1000)):
        src.write_bytes(content)
        for seed in ("app|dev|beam", None):
            image = disk.uefi_disk(tmp_path / f"u{n}{seed is None}.img", {"/EFI/BOOT/BOOTX64.EFI": src}, seed)
            dump = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True).stdout
            ids.append(
                [
                    line.split(",")[-2] if "uuid=" in line else line
                    for line in dump.splitlines()
                    if "label-id" in line or "uuid=" in line
                ]
            )
    seeded_1, content_1, seeded_2, content_2 = ids
    assert seeded_1 == seeded_2 and content_1 != content_2 and seeded_1 != content_1


def test_uefi_disk_has_gpt_with_an_esp_holding_the_files(tmp_path: Path) -> None:
    (tmp_path / "boot.efi").write_bytes(os.urandom(200_000))
    image = disk.uefi_disk(tmp_path / "u.img", {"/EFI/BOOT/BOOTX64.EFI": tmp_path / "boot.efi"})
    assert image.stat().st_size == GIB
    table = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True).stdout
    assert "label: gpt" in table
    # right after the primary GPT (4 KiB aligned), the smallest FAT32 in 4 MiB steps (36 MiB)
    assert f"start=          40, size=       73728, type={disk.ESP_TYPE}" in table
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    copy = tmp_path / "back.efi"
    subprocess.run(
        ["mcopy", "-i", f"{image}@@{disk.ESP_START}", "::/EFI/BOOT/BOOTX64.EFI", str(copy)],
        env=env,
        check=True,
    )
    assert copy.read_bytes() == (tmp_path / "boot.efi").read_bytes()
    info = subprocess.run(
        ["minfo", "-i", f"{image}@@{disk.ESP_START}", "::"], env=env, capture_output=True, text=True
    ).stdout
    assert "FAT32" in info


def test_uefi_disk_is_byte_identical_for_equal_inputs(tmp_path: Path) -> None:
    src = tmp_path / "boot.efi"
    src.write_bytes(os.urandom(100_000))
    a = _content(disk.uefi_disk(tmp_path / "a.img", {"/EFI/BOOT/BOOTX64.EFI": src}))
    time.sleep(1.1)
    os.utime(src)
    b = _content(disk.uefi_disk(tmp_path / "b.img", {"/EFI/BOOT/BOOTX64.EFI": src}))
    assert a == b


def test_a_failing_tool_leaves_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "boot.efi"
    src.write_bytes(b"x" * 1000)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exception, match="sfdisk"):
        disk.uefi_disk(tmp_path / "u.img", {"/EFI/BOOT/BOOTX64.EFI": src})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.efi"]
