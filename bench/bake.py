"""AMI bake: the pipeline's EBS direct upload against a naive one, and a config-only rebuild as a delta.

    .venv/bin/python bench/bake.py [--env dev] [--synthetic]

In a fresh copy of the project, two builds are made: the current settings and the same with another
greeting (a config-only change). If the image target makes no disk images yet, or with --synthetic,
two synthetic builds of the same shape stand in (tests/synthetic.py: a 1 GiB sparse disk holding a
kernel, an initramfs and a small configuration area). A local AWS (moto, on a free port) receives:

1. the naive upload of the first disk, as NanoVMs ops does it minus its concurrency: every 512 KiB
   block in order, zero blocks included, one at a time;
2. the pipeline's upload of the same disk (zero blocks skipped, parallel workers);
3. the pipeline's upload of the config-only rebuild, as a delta on 2.

It prints blocks and bytes sent and wall time for 1 and 2 and their ratio, the pipeline's bytes against
the disk's non-zero bytes (target: within 5%), and the blocks the delta sent out of a full upload's
(target: under 10%). Wall times are those of a moto server on this machine, not of AWS.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project and its tests' helpers, instead of bench/ itself (bench/http.py would shadow the stdlib).
sys.path[0:1] = [str(ROOT), str(ROOT / "tests")]

from pipeline import blocks, build, config  # noqa: E402
from pipeline.aws import ami, provenance  # noqa: E402
from pipeline.aws.delta import aggregate_checksum, block_checksum  # noqa: E402
from pipeline.aws.session import Clients  # noqa: E402
from pipeline.blocks import BLOCK_SIZE  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.local import server  # noqa: E402

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def real_builds(project: Path, env: str) -> tuple[Any, Any] | None:
    from tests.project import copy_project

    copy_project(project)
    first = build.build(config.load(project, env=env))
    if not first.manifest.get("image", {}).get("disks"):
        return None
    second = build.build(
        config.load(project, env=env, overrides=["app.config.greeting=bench: another greeting"])
    )
    return first, second


def synthetic_builds(project: Path, env: str) -> tuple[Any, Any]:
    from synthetic import Layout, make_build

    project.mkdir(parents=True, exist_ok=True)
    (project / "pipeline.toml").write_text(f'default_env = "{env}"\n[env.{env}]\n')
    builds = project / ".pipeline" / "builds"
    layout = Layout(kernel_bytes=8 * MIB, initramfs_bytes=24 * MIB, config_bytes=BLOCK_SIZE)
    first = make_build(builds, config="greeting=hello", env=env, layout=layout)
    second = make_build(builds, config="greeting=bench: another greeting", env=env, layout=layout)
    return first, second


def naive_upload(clients: Clients, image: Path) -> tuple[int, int, float]:
    """Every block, in order, one at a time, zero blocks included."""
    ebs = clients.ebs()
    size = image.stat().st_size
    count = -(-size // BLOCK_SIZE)
    started = time.perf_counter()
    snapshot_id = ebs.start_snapshot(VolumeSize=max(1, size >> 30), Description="naive")["SnapshotId"]
    digests = []
    with image.open("rb") as f:
        for index in range(count):
            data = f.read(BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
            digests.append(hashlib.sha256(data).digest())
            ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK_SIZE,
                Checksum=block_checksum(data),
                ChecksumAlgorithm="SHA256",
            )
    ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=count,
        Checksum=aggregate_checksum(digests),
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )
    return count, count * BLOCK_SIZE, time.perf_counter() - started


def nonzero_bytes(image: Path) -> int:
    total = 0
    with image.open("rb") as f:
        for index in blocks.scan(image).digests:
            f.seek(index * BLOCK_SIZE)
            data = f.read(BLOCK_SIZE)
            total += len(data) - data.count(0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dev")
    parser.add_argument(
        "--synthetic", action="store_true", help="use synthetic builds even if real ones work"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        pair = None if args.synthetic else real_builds(project, args.env)
        kind = "real builds"
        if pair is None:
            kind = "synthetic builds" + (
                "" if args.synthetic else " (the image target makes no disk images yet)"
            )
            project = Path(tmp) / "synthetic"
            pair = synthetic_builds(project, args.env)
        first, second = pair
        port = free_port()
        settings = config.load(project, env=args.env, overrides=[f"local.port={port}"])
        url = server.ensure_running(settings)
        try:
            run(settings, Clients(settings.aws.region, endpoint_url=url), first, second, kind)
        finally:
            server.stop(settings)


def run(settings: config.Settings, clients: Clients, first: Any, second: Any, kind: str) -> None:
    disk = ami.select_disk(first, settings.virtualization)
    image = first.directory / disk["file"]
    data_bytes = nonzero_bytes(image)
    git = provenance.GitState("unknown", "unknown")

    n_blocks, n_bytes, n_time = naive_upload(clients, image)
    full = ami.publish(settings, clients, first, progress=False, git=git)
    assert full.snapshot is not None
    p = full.snapshot
    changed = ami.publish(settings, clients, second, progress=False, git=git)
    assert changed.snapshot is not None
    d = changed.snapshot
    if d.parent_id != p.snapshot_id:
        raise PipelineError(f"the rebuild was not uploaded as a delta on {p.snapshot_id}: {d.note}")

    print(f"AMI bake bench: {kind}, env {settings.env}, disk {disk['name']}")
    print(
        f"disk: {disk['size'] // MIB} MiB, {disk['size'] // BLOCK_SIZE} blocks of 512 KiB, "
        f"{disk['nonzero_blocks']} non-zero ({disk['nonzero_blocks'] * BLOCK_SIZE / MIB:.1f} MiB), "
        f"{data_bytes / MIB:.2f} MiB of non-zero bytes"
    )
    print(f"{'':<28}{'blocks':>8}{'MiB sent':>11}{'seconds':>10}{'MiB/s':>9}")
    rows = [
        ("naive (every block, serial)", n_blocks, n_bytes, n_time),
        (f"pipeline ({settings.ami.upload_workers} workers)", p.blocks_sent, p.bytes_sent, p.seconds),
    ]
    for label, b, nbytes, secs in rows:
        print(f"{label:<28}{b:>8}{nbytes / MIB:>11.1f}{secs:>10.2f}{nbytes / MIB / secs:>9.1f}")
    print(
        f"{'naive / pipeline':<28}{n_blocks / p.blocks_sent:>7.1f}x{n_bytes / p.bytes_sent:>10.1f}x"
        f"{n_time / p.seconds:>9.1f}x"
    )
    overhead = p.bytes_sent / data_bytes - 1
    ok = "met" if overhead <= 0.05 else "MISSED"
    print(f"pipeline bytes vs the disk's non-zero bytes: {overhead:+.1%} (target: within 5%: {ok})")
    # No EBS direct upload can send less than the disk's non-zero 512 KiB blocks (the API's fixed
    # block size); the rest of the overhead is data that shares a block with zeros.
    floor = "exactly" if p.blocks_sent == disk["nonzero_blocks"] else "NOT"
    print(
        f"the floor for any EBS direct upload is the disk's {disk['nonzero_blocks']} non-zero blocks: "
        f"the pipeline sent {floor} those"
    )
    share = d.blocks_sent / d.nonzero_blocks
    ok = "met" if share < 0.10 else "MISSED"
    print(
        f"config-only rebuild as a delta on {p.snapshot_id}: {d.blocks_sent} of {d.nonzero_blocks} blocks "
        f"({share:.1%}; target: under 10%: {ok}) in {d.seconds:.2f}s"
    )


if __name__ == "__main__":
    main()
