"""Block maps of raw images: zero blocks and holes skipped, digests per block, deltas against a parent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline import blocks
from pipeline.blocks import BLOCK_SIZE, BlockMap


def sparse_image(path: Path, size: int, writes: dict[int, bytes]) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


def test_scan_finds_exactly_the_nonzero_blocks(tmp_path: Path) -> None:
    img = sparse_image(
        tmp_path / "d.raw",
        8 * BLOCK_SIZE,
        {
            0: b"boot",
            3 * BLOCK_SIZE + 100: b"x" * 10,
            5 * BLOCK_SIZE: bytes(BLOCK_SIZE),
        },  # block 5 written zeros
    )
    m = blocks.scan(img)
    assert m.size == 8 * BLOCK_SIZE
    assert sorted(m.digests) == [0, 3]
    expected = bytearray(BLOCK_SIZE)
    expected[100:110] = b"x" * 10
    assert m.digests[3] == hashlib.sha256(bytes(expected)).hexdigest()
    assert blocks.read_block(img, 3) == bytes(expected)


def test_a_data_region_spanning_blocks_is_read_block_by_block(tmp_path: Path) -> None:
    img = sparse_image(tmp_path / "d.raw", 4 * BLOCK_SIZE, {BLOCK_SIZE - 2: b"abcd"})
    assert sorted(blocks.scan(img).digests) == [0, 1]


def test_delta_against_parent() -> None:
    parent = BlockMap(4 * BLOCK_SIZE, {0: "a", 1: "b", 2: "c"})
    child = BlockMap(4 * BLOCK_SIZE, {0: "a", 1: "B", 3: "d"})
    assert child.changed_since(parent) == [1, 3]
    assert child.zeroed_since(parent) == [2]
    assert child.changed_since(None) == [0, 1, 3]
    assert BlockMap.from_json(child.to_json()) == child


def test_describe_writes_the_block_map_and_whole_digest(tmp_path: Path) -> None:
    (tmp_path / "disks").mkdir()
    img = sparse_image(tmp_path / "disks" / "x.raw", 2 * BLOCK_SIZE, {7: b"z"})
    rec = blocks.describe(tmp_path, img, "pv", "pv", "pv-grub")
    assert rec["file"] == "disks/x.raw"
    assert rec["nonzero_blocks"] == 1
    assert rec["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    data = json.loads((tmp_path / rec["blocks_file"]).read_text())
    assert BlockMap.from_json(data).digests.keys() == {0}


def test_whole_gib() -> None:
    assert blocks.whole_gib(1) == 1 << 30
    assert blocks.whole_gib(1 << 30) == 1 << 30
    assert blocks.whole_gib((1 << 30) + 1) == 2 << 30
