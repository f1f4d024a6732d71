"""An AMI's disk put back together from its snapshot through the EBS direct APIs of the local AWS, and the
boot files taken out of a disk's unified kernel image."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from localaws import LocalAws, Recorder
from synthetic import make_build

from pipeline import blocks
from pipeline.aws import ami, provenance
from pipeline.errors import ImageError
from pipeline.images import disk
from pipeline.local import disks
from pipeline.proc import run

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")
EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def publish(aws: LocalAws, build) -> ami.Publication:  # type: ignore[no-untyped-def]
    return ami.publish(aws.settings(), aws.clients(), build, progress=False, git=GIT)


def same_bytes(a: Path, b: Path) -> bool:
    """Equal sizes and equal digests of every non-zero block (holes are zero in both): equal bytes."""
    return a.stat().st_size == b.stat().st_size and blocks.scan(a).digests == blocks.scan(b).digests


def test_a_delta_child_stands_on_its_own_and_survives_its_parents_deletion(
    aws: LocalAws, tmp_path: Path
) -> None:
    """As on EBS, a delta's ListSnapshotBlocks lists the blocks it inherited, and deleting the parent
    (gc removes an old image's snapshot) leaves the child whole. (EBS user guide, "Use EBS direct APIs
    to access the contents of an EBS snapshot": a snapshot started with ParentSnapshotId is incremental
    for the upload; reading it returns the whole volume's blocks.)"""
    first = make_build(aws.builds, config="greeting=one")
    second = make_build(aws.builds, config="greeting=two")  # a config-only change: a delta upload
    one, two = publish(aws, first), publish(aws, second)
    assert one.snapshot is not None and two.snapshot is not None
    assert two.snapshot.parent_id == one.snapshot.snapshot_id
    assert two.snapshot.blocks_sent < first.disk("hvm-uefi")["nonzero_blocks"]  # sent as a delta
    clients = aws.clients()
    ebs, ec2 = clients.ebs(), clients.ec2()
    listed = ebs.list_snapshot_blocks(SnapshotId=two.snapshot.snapshot_id)["Blocks"]
    assert len(listed) >= second.disk("hvm-uefi")["nonzero_blocks"]  # inherited blocks included

    ec2.deregister_image(ImageId=one.images["us-east-1"].image_id)
    ec2.delete_snapshot(SnapshotId=one.snapshot.snapshot_id)
    with pytest.raises(ImageError) as gone:
        disks.assemble(ebs, one.snapshot.snapshot_id, tmp_path / "parent.img")
    assert f"snapshot {one.snapshot.snapshot_id} cannot be read" in str(gone.value)
    out = tmp_path / f"{second.build_id}.img"
    disks.assemble(ebs, two.snapshot.snapshot_id, out, second.disk("hvm-uefi")["sha256"])
    assert same_bytes(out, second.image("hvm-uefi"))
    assert out.stat().st_blocks * 512 < 64 << 20  # sparse: only the blocks that hold data


def test_a_disk_that_does_not_match_the_image_digest_is_refused_and_not_kept(
    aws: LocalAws, tmp_path: Path
) -> None:
    build = make_build(aws.builds, config="greeting=three")
    result = publish(aws, build)
    assert result.snapshot is not None
    clients = aws.clients()
    out = tmp_path / "disk.img"
    with pytest.raises(ImageError) as err:
        disks.assemble(clients.ebs(), result.snapshot.snapshot_id, out, "0" * 64)
    assert "the image was 0000000000000000" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_the_cache_reads_a_snapshot_once_however_many_instances_start_from_it(
    aws: LocalAws, tmp_path: Path
) -> None:
    build = make_build(aws.builds, config="greeting=four")
    result = publish(aws, build)
    assert result.snapshot is not None
    rec = Recorder()
    clients = aws.clients(recorder=rec)
    cache = disks.DiskCache(tmp_path / "disks")
    sha = build.disk("hvm-uefi")["sha256"]
    first = cache.get(clients.ebs(), result.snapshot.snapshot_id, sha)
    reads = len(rec.named("GetSnapshotBlock"))
    assert reads == build.disk("hvm-uefi")["nonzero_blocks"]
    again = cache.get(clients.ebs(), result.snapshot.snapshot_id, sha)
    assert again == first and len(rec.named("GetSnapshotBlock")) == reads and cache.assembled == 1
    assert cache.prune({"snap-other"}) == [result.snapshot.snapshot_id] and not first.exists()


@pytest.fixture
def uki_disk(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A GPT disk whose EFI system partition holds a unified kernel image made as the build makes it
    (systemd's EFI stub with .linux, .initrd and .cmdline sections), with stand-in kernel and initramfs
    contents (their bytes are all that matters here)."""
    if not EFI_STUB.is_file():
        pytest.skip(f"{EFI_STUB} missing (Debian package systemd-boot-efi)")
    rng = random.Random(5)
    parts = {
        ".linux": rng.randbytes(300_001),
        ".initrd": rng.randbytes(123_457),
        ".cmdline": b"console=ttyS0 quiet\0",
    }
    for name, data in parts.items():
        (tmp_path / name.strip(".")).write_bytes(data)
    uki = tmp_path / "linux.efi"
    run(
        ["objcopy",
         "--add-section", f".cmdline={tmp_path / 'cmdline'}", "--change-section-vma", ".cmdline=0x30000",
         "--add-section", f".linux={tmp_path / 'linux'}", "--change-section-vma", ".linux=0x2000000",
         "--add-section", f".initrd={tmp_path / 'initrd'}", "--change-section-vma", ".initrd=0x3000000",
         str(EFI_STUB), str(uki)],
        what="objcopy",
    )  # fmt: skip
    image = disk.uefi_disk(tmp_path / "disk.img", {"/EFI/BOOT/BOOTX64.EFI": uki})
    return image, parts


def test_boot_files_are_the_sections_of_the_unified_kernel_image(
    uki_disk: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    image, parts = uki_disk
    boot = disks.extract_boot(image, tmp_path / "boot")
    assert boot.kernel.read_bytes() == parts[".linux"]
    assert boot.initrd.read_bytes() == parts[".initrd"]
    assert boot.cmdline == "console=ttyS0 quiet"
    assert sorted(os.listdir(tmp_path / "boot")) == ["cmdline", "initrd.img", "vmlinuz"]
    assert disks.extract_boot(image, tmp_path / "boot") == boot  # the second time reuses it


def test_a_disk_without_an_efi_system_partition_has_no_boot_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.img"
    with plain.open("wb") as f:
        f.truncate(1 << 20)
    with pytest.raises(ImageError):
        disks.extract_boot(plain, tmp_path / "boot")
    assert not (tmp_path / "boot").exists()
    with pytest.raises(ImageError, match="not a PE image"):
        disks.pe_sections(b"\0" * 128)
