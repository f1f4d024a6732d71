"""Disk images as EBS sees them: 512 KiB blocks, of which only the non-zero ones are stored.

The build records, for every disk image, the SHA-256 of each non-zero block (the *block map*). The
AMI stage uploads only those blocks, and for a new build of the same app only the blocks whose digest
differs from the parent image's map, so it never has to download anything to compute a delta.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from pipeline.manifest import write_json

BLOCK_SIZE = 512 * 1024  # the EBS direct API's fixed block size
GIB = 1 << 30
_ZERO = bytes(BLOCK_SIZE)


class DiskRecord(TypedDict):
    """One disk image in the build manifest (``image.disks``)."""

    name: str  # "hvm-uefi" or "pv"
    file: str  # raw image, relative to the build directory
    virtualization: Literal["hvm", "pv"]
    boot_mode: Literal["uefi", "pv-grub"]
    size: int  # bytes; a whole number of GiB (EBS volumes are sized in GiB)
    nonzero_blocks: int
    sha256: str  # of the whole raw image
    blocks_file: str  # the block map (JSON), relative to the build directory


@dataclass(frozen=True)
class BlockMap:
    """The non-zero 512 KiB blocks of a raw image: index -> hex SHA-256."""

    size: int
    digests: dict[int, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "block_size": BLOCK_SIZE,
            "size": self.size,
            "blocks": {str(i): d for i, d in sorted(self.digests.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockMap:
        if data.get("block_size") != BLOCK_SIZE:
            raise ValueError(f"block map with block size {data.get('block_size')}, expected {BLOCK_SIZE}")
        return cls(int(data["size"]), {int(i): str(d) for i, d in data["blocks"].items()})

    def changed_since(self, parent: BlockMap | None) -> list[int]:
        """Blocks to upload on top of ``parent``: non-zero here and different from (or absent in) it.

        Blocks that are non-zero in the parent but zero here are *also* listed: on a snapshot with a
        parent they must be overwritten with zeros (``zeroed_since``) or they would show through.
        """
        if parent is None:
            return sorted(self.digests)
        return sorted(i for i, d in self.digests.items() if parent.digests.get(i) != d)

    def zeroed_since(self, parent: BlockMap | None) -> list[int]:
        """Blocks that hold data in ``parent`` but are all zero here."""
        if parent is None:
            return []
        return sorted(i for i in parent.digests if i not in self.digests)


def scan(path: Path) -> BlockMap:
    """Digest every non-zero 512 KiB block of a raw image, skipping file-system holes without reading them."""
    return _scan(path)[0]


def _scan(path: Path) -> tuple[BlockMap, str]:
    """The block map and the SHA-256 of the whole image, in one pass.

    Holes are hashed from a zero buffer in memory instead of being read, so a sparse 1 GiB image with
    a few MiB of data costs a few MiB of reads.
    """
    size = path.stat().st_size
    digests: dict[int, str] = {}
    whole = hashlib.sha256()
    done = 0  # bytes of the image fed to `whole` so far
    with path.open("rb") as f:
        for index, data in _data_blocks(f.fileno(), size):
            start = index * BLOCK_SIZE
            _hash_zeros(whole, start - done)
            whole.update(data)
            done = start + len(data)
            if data != _ZERO[: len(data)]:
                digests[index] = hashlib.sha256(data.ljust(BLOCK_SIZE, b"\0")).hexdigest()
    _hash_zeros(whole, size - done)
    return BlockMap(size, digests), whole.hexdigest()


def _hash_zeros(h: Any, count: int) -> None:
    view = memoryview(_ZERO)
    while count > 0:
        step = min(count, BLOCK_SIZE)
        h.update(view[:step])
        count -= step


def read_block(path: Path, index: int) -> bytes:
    """Block ``index`` of a raw image, zero-padded to the full block size."""
    with path.open("rb") as f:
        f.seek(index * BLOCK_SIZE)
        return f.read(BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")


def describe(
    build_dir: Path,
    image: Path,
    name: str,
    virtualization: Literal["hvm", "pv"],
    boot_mode: Literal["uefi", "pv-grub"],
) -> DiskRecord:
    """Scan ``image`` (inside ``build_dir``), write its block map beside it and return its record."""
    blocks, whole = _scan(image)
    blocks_file = image.with_suffix(".blocks.json")
    write_json(blocks_file, blocks.to_json())
    return DiskRecord(
        name=name,
        file=image.relative_to(build_dir).as_posix(),
        virtualization=virtualization,
        boot_mode=boot_mode,
        size=blocks.size,
        nonzero_blocks=len(blocks.digests),
        sha256=whole,
        blocks_file=blocks_file.relative_to(build_dir).as_posix(),
    )


def whole_gib(nbytes: int) -> int:
    """The smallest whole number of GiB (at least 1, the EBS minimum) that holds ``nbytes``."""
    return max(1, -(-nbytes // GIB)) * GIB


def _data_blocks(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, bytes)`` for blocks that overlap data regions of a (possibly sparse) file."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data after offset: the rest is a hole
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        index = start // BLOCK_SIZE
        while index * BLOCK_SIZE < end:
            os.lseek(fd, index * BLOCK_SIZE, os.SEEK_SET)
            yield index, os.read(fd, BLOCK_SIZE)
            index += 1
        offset = index * BLOCK_SIZE
