"""Synthetic build directories for the AMI stage's tests.

They stand in for builds of the image targets (until a real one exists here) and follow their
documented format: a ``manifest.json`` whose ``image.disks`` are DiskRecords written by
``pipeline.blocks.describe``, and sparse raw disk images of a whole number of GiB whose data sits in a
few regions: a partition table at the start, a kernel, an initramfs and a small configuration area.
A config-only change rewrites only the configuration area, as a rebuild with another sys.config does.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import blocks
from pipeline.blocks import BLOCK_SIZE, GIB
from pipeline.manifest import write_json

MIB = 1 << 20


@dataclass
class Layout:
    """Where a synthetic disk holds data (offsets in bytes) and how much."""

    size: int = GIB
    kernel_at: int = 1 * MIB
    kernel_bytes: int = 6 * MIB
    initramfs_at: int = 16 * MIB
    initramfs_bytes: int = 8 * MIB
    config_at: int = 40 * MIB
    config_bytes: int = 3 * BLOCK_SIZE
    extra: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes


@dataclass
class SyntheticBuild:
    build_id: str
    directory: Path
    manifest: dict[str, Any]

    def disk(self, name: str) -> dict[str, Any]:
        return next(d for d in self.manifest["image"]["disks"] if d["name"] == name)

    def image(self, name: str) -> Path:
        return self.directory / self.disk(name)["file"]

    def nonzero(self, name: str) -> dict[int, bytes]:
        """Block index -> block bytes for every non-zero block of a disk."""
        out = {}
        with self.image(name).open("rb") as f:
            for index in blocks.scan(self.image(name)).digests:
                f.seek(index * BLOCK_SIZE)
                out[index] = f.read(BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
        return out


def make_build(
    builds_dir: Path,
    *,
    seed: str = "base",
    config: str = "greeting=hello",
    env: str = "dev",
    app: str = "erlang_web",
    version: str = "0.1.0",
    target: str = "beam",
    disks: tuple[str, ...] = ("hvm-uefi",),
    layout: Layout | None = None,
) -> SyntheticBuild:
    """Write a build of ``seed`` (the code: kernel, initramfs) and ``config`` under ``builds_dir``.

    Like real builds, they are content-addressed: the same arguments give the same build, and a
    finished one is reused (hashing a 1 GiB disk takes seconds).
    """
    layout = layout or Layout()
    key = f"{seed}|{config}|{env}|{app}|{version}|{target}|{disks}|{layout}"
    build_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = builds_dir / build_id
    if (directory / "manifest.json").is_file():
        return SyntheticBuild(build_id, directory, json.loads((directory / "manifest.json").read_text()))
    (directory / "disks").mkdir(parents=True, exist_ok=True)
    records = []
    for name in disks:
        virtualization = "hvm" if name.startswith("hvm") else "pv"
        boot_mode = "uefi" if virtualization == "hvm" else "pv-grub"
        path = directory / "disks" / f"{name}.raw"
        _write_disk(path, f"{seed}|{name}", config, layout)
        records.append(dict(blocks.describe(directory, path, name, virtualization, boot_mode)))  # type: ignore[arg-type]
    manifest: dict[str, Any] = {
        "schema": 1,
        "build_id": build_id,
        "pipeline_version": "0.1.0",
        "env": env,
        "target": target,
        "app": {
            "name": app,
            "version": version,
            "modules": ["erlang_web_app"],
            "applications": ["kernel", "stdlib"],
            "otp_release": "25",
        },
        "config_digest": hashlib.sha256(config.encode()).hexdigest(),
        "config": {"app": {"greeting": config}},
        "inputs": {"tools": {"otp": "25.3.2.8", "kernel": "6.1.0-28-cloud-amd64"}},
        "outputs": [],
        "image": {"disks": records},
    }
    write_json(directory / "manifest.json", manifest)
    return SyntheticBuild(build_id, directory, manifest)


def _write_disk(path: Path, code_seed: str, config: str, layout: Layout) -> None:
    rng = random.Random(code_seed)
    with path.open("wb") as f:
        f.truncate(layout.size)
        f.seek(0)
        f.write(b"\x55\xaa" + rng.randbytes(4094))  # partition table / boot sector
        f.seek(layout.kernel_at)
        f.write(rng.randbytes(layout.kernel_bytes))
        f.seek(layout.initramfs_at)
        f.write(rng.randbytes(layout.initramfs_bytes))
        f.seek(layout.config_at)
        crng = random.Random(config)
        f.write((config.encode() + b"\n" + crng.randbytes(layout.config_bytes))[: layout.config_bytes])
        for offset, data in layout.extra.items():
            f.seek(offset)
            f.write(data)
