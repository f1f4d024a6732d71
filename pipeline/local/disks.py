"""An AMI's root disk, put back together from its EBS snapshot, and the boot files inside it.

:func:`assemble` reads a snapshot's blocks through the EBS direct APIs (ListSnapshotBlocks,
GetSnapshotBlock) and writes them into a sparse raw file; blocks that were never stored are zero. A
snapshot uploaded as a delta is read on its own, as on EBS: ListSnapshotBlocks lists the blocks it
inherited from its parent too, so each snapshot stands alone and deleting a parent (``invoke gc``)
leaves its children whole (the local AWS keeps a child's inherited blocks, ``aws_rules.py``). Every
block's SHA-256 is checked against the checksum the API returns, and the whole disk against the
image digest the AMI carries, so what boots is exactly what was uploaded.

:func:`extract_boot` takes the unified kernel image (``EFI/BOOT/BOOTX64.EFI`` on the EFI system
partition) out of such a disk and splits it into the kernel, initramfs and command line its PE
sections hold, for a direct kernel boot of the very same bytes.

:class:`DiskCache` keeps one assembled disk per snapshot id (and its boot files), so a second
instance of the same AMI reads nothing again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline.aws.calls import error_text
from pipeline.blocks import BLOCK_SIZE, GIB
from pipeline.errors import ImageError, ToolFailed
from pipeline.proc import run

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient

log = logging.getLogger(__name__)

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # GPT partition type of an EFI system partition
UKI_PATH = "EFI/BOOT/BOOTX64.EFI"  # the removable-media path UEFI firmware boots
_ZERO = bytes(BLOCK_SIZE)


@dataclass(frozen=True)
class BootFiles:
    """What a direct kernel boot needs, taken from a unified kernel image."""

    kernel: Path
    initrd: Path
    cmdline: str


# -- snapshot -> disk --------------------------------------------------------------------------------


def _list_blocks(ebs: EBSClient, snapshot_id: str) -> tuple[int, dict[int, str]]:
    """(volume size in bytes, block index -> block token) of one snapshot."""
    blocks: dict[int, str] = {}
    size = 0
    kwargs: dict[str, Any] = {"SnapshotId": snapshot_id, "MaxResults": 10000}
    while True:
        resp = ebs.list_snapshot_blocks(**kwargs)
        size = int(resp.get("VolumeSize", 0)) * GIB or size
        for block in resp.get("Blocks", []):
            blocks[int(block["BlockIndex"])] = str(block["BlockToken"])
        token = resp.get("NextToken")
        if not token:
            return size, blocks
        kwargs["NextToken"] = token


def assemble(
    ebs: EBSClient,
    snapshot_id: str,
    dest: Path,
    expect_sha256: str = "",
    workers: int = 4,
) -> Path:
    """Write the disk of ``snapshot_id`` to ``dest``; check it against ``expect_sha256`` when given.
    Atomic: ``dest`` appears only when complete and checked."""
    try:
        size, blocks = _list_blocks(ebs, snapshot_id)
    except ClientError as err:
        raise ImageError(
            f"snapshot {snapshot_id} cannot be read: {error_text(err)}",
            hint="was it removed (invoke gc)? upload the image again with invoke ami",
        ) from err
    final = {i: (snapshot_id, token) for i, token in blocks.items()}
    if size <= 0:
        raise ImageError(f"snapshot {snapshot_id}: the EBS API reports no volume size")
    beyond = [i for i in final if (i + 1) * BLOCK_SIZE > size]
    if beyond:
        raise ImageError(f"snapshot {snapshot_id}: block {beyond[0]} lies beyond its {size >> 30} GiB volume")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.ftruncate(fd, size)

        def fetch(item: tuple[int, tuple[str, str]]) -> None:
            index, (snap, token) = item
            resp = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockToken=token)
            data = resp["BlockData"].read()
            if len(data) != BLOCK_SIZE:
                raise ImageError(f"snapshot {snap}: block {index} has {len(data)} bytes, not {BLOCK_SIZE}")
            given = resp.get("Checksum")
            actual = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
            if given and resp.get("ChecksumAlgorithm", "SHA256") == "SHA256" and given != actual:
                raise ImageError(f"snapshot {snap}: block {index} does not match its SHA-256 checksum")
            if data != _ZERO:
                os.pwrite(fd, data, index * BLOCK_SIZE)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="get-block") as pool:
            for _ in pool.map(fetch, sorted(final.items())):
                pass
        digest = _sha256(fd, size, final)
        if expect_sha256 and digest != expect_sha256:
            raise ImageError(
                f"snapshot {snapshot_id}: the assembled disk has sha256 {digest[:16]}, "
                f"the image was {expect_sha256[:16]}",
                hint="the snapshot does not hold the uploaded image; upload it again (invoke ami)",
            )
        os.close(fd)
        fd = -1
        tmp.chmod(0o444)  # read-only: VMs boot it through a copy-on-write overlay
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    log.info("assembled %s from %s (%d blocks)", dest.name, snapshot_id, len(final))
    return dest


def _sha256(fd: int, size: int, indexes: Iterable[int]) -> str:
    """SHA-256 of the whole disk: the blocks that were written read back, the rest hashed as zeros."""
    h = hashlib.sha256()
    written = set(indexes)
    for index in range(-(-size // BLOCK_SIZE)):
        length = min(BLOCK_SIZE, size - index * BLOCK_SIZE)
        h.update(os.pread(fd, length, index * BLOCK_SIZE) if index in written else _ZERO[:length])
    return h.hexdigest()


# -- the unified kernel image inside the disk ------------------------------------------------------------


def pe_sections(data: bytes) -> dict[str, bytes]:
    """The sections of a PE/COFF image by name, each cut to its VirtualSize (its real length).

    Offsets from the PE/COFF specification: the PE signature's offset at 0x3C; the COFF header (20
    bytes) after the signature, with the section count at +2 and the optional header's size at +16;
    the section table after the optional header, 40 bytes per section (name, VirtualSize,
    VirtualAddress, SizeOfRawData, PointerToRawData, ...).
    """
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise ImageError("not a PE image (no MZ header)")
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if data[pe : pe + 4] != b"PE\0\0":
        raise ImageError("not a PE image (no PE signature)")
    count = int.from_bytes(data[pe + 6 : pe + 8], "little")
    optional = int.from_bytes(data[pe + 20 : pe + 22], "little")
    table = pe + 24 + optional
    out: dict[str, bytes] = {}
    for i in range(count):
        entry = data[table + 40 * i : table + 40 * (i + 1)]
        if len(entry) < 40:
            raise ImageError("PE section table is cut short")
        name = entry[:8].rstrip(b"\0").decode("ascii", "replace")
        virtual_size = int.from_bytes(entry[8:12], "little")
        raw_size = int.from_bytes(entry[16:20], "little")
        pointer = int.from_bytes(entry[20:24], "little")
        length = min(virtual_size, raw_size) if virtual_size else raw_size
        out[name] = data[pointer : pointer + length]
    return out


def esp_offset(disk: Path) -> int:
    """Byte offset of the EFI system partition of a GPT disk image."""
    try:
        table = json.loads(run(["sfdisk", "--json", str(disk)], what="sfdisk").stdout)["partitiontable"]
    except ToolFailed as err:
        raise ImageError(
            f"{disk.name}: no partition table ({err.message})",
            hint="only hvm-uefi disks boot in the local cloud",
        ) from err
    sector = int(table.get("sectorsize", 512))
    for part in table.get("partitions", []):
        if str(part.get("type", "")).upper() == ESP_TYPE:
            return int(part["start"]) * sector
    raise ImageError(
        f"{disk.name}: no EFI system partition", hint="only hvm-uefi disks boot in the local cloud"
    )


def extract_boot(disk: Path, out_dir: Path) -> BootFiles:
    """Split the unified kernel image of ``disk`` into ``out_dir``/{vmlinuz, initrd.img, cmdline}.

    Atomic: ``out_dir`` appears only when complete; an existing one is reused.
    """
    if (out_dir / "cmdline").is_file():
        return _boot_files(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        uki = work / "BOOTX64.EFI"
        env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}
        image = f"{disk}@@{esp_offset(disk)}"
        run(["mcopy", "-n", "-i", image, f"::/{UKI_PATH}", str(uki)], env=env, what="mcopy")
        sections = pe_sections(uki.read_bytes())
        missing = [s for s in (".linux", ".initrd", ".cmdline") if s not in sections]
        if missing:
            raise ImageError(f"{disk.name}: {UKI_PATH} has no {', '.join(missing)} section")
        (work / "vmlinuz").write_bytes(sections[".linux"])
        (work / "initrd.img").write_bytes(sections[".initrd"])
        cmdline = sections[".cmdline"].split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        (work / "cmdline").write_text(cmdline + "\n")
        uki.unlink()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _boot_files(out_dir)


def _boot_files(directory: Path) -> BootFiles:
    cmdline = (directory / "cmdline").read_text().strip()
    return BootFiles(directory / "vmlinuz", directory / "initrd.img", cmdline)


# -- the cache -----------------------------------------------------------------------------------------------


class DiskCache:
    """Assembled disks by snapshot id under ``directory``; each is assembled once, even when several
    instances of its AMI start at the same time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.assembled = 0  # disks assembled (not found in the cache) since start

    def disk(self, snapshot_id: str) -> Path:
        return self.directory / f"{snapshot_id}.img"

    def get(self, ebs: EBSClient, snapshot_id: str, expect_sha256: str) -> Path:
        with self._lock:
            lock = self._locks.setdefault(snapshot_id, threading.Lock())
        with lock:
            path = self.disk(snapshot_id)
            if not path.is_file():
                assemble(ebs, snapshot_id, path, expect_sha256)
                self.assembled += 1
            return path

    def boot_files(self, snapshot_id: str) -> BootFiles:
        with self._lock:
            lock = self._locks.setdefault(snapshot_id, threading.Lock())
        with lock:
            return extract_boot(self.disk(snapshot_id), self.directory / f"{snapshot_id}.boot")

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Remove the disks of snapshots not in ``keep`` (deleted ones); return their ids."""
        wanted = set(keep)
        gone: list[str] = []
        if not self.directory.is_dir():
            return gone
        for path in self.directory.glob("snap-*.img"):
            snapshot_id = path.name.removesuffix(".img")
            if snapshot_id not in wanted:
                path.unlink(missing_ok=True)
                shutil.rmtree(self.directory / f"{snapshot_id}.boot", ignore_errors=True)
                gone.append(snapshot_id)
        return gone
