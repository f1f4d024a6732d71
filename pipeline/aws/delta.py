"""What to upload for a disk image: all of its non-zero blocks, or only what changed since a parent.

When an earlier snapshot of the same app, environment, target and virtualization exists (tags
``Upload=complete``), the new snapshot names it as its parent and carries only the blocks whose digest
differs from the parent image's block map, plus zeros over blocks that held data in the parent and are
empty now. The parent's block map comes from its build directory on this machine
(``.pipeline/builds/<BuildId>/``, found through the parent snapshot's ``BuildId`` tag and checked
against its ``ImageSha256`` tag), so nothing is downloaded. When that build is not on this machine (or
the parent is larger, or encrypted with another key), the upload is a full one without a parent, and
the plan's note says why: correctness never depends on local files.

Also here: the checksums the EBS direct API wants (base64 SHA-256 per block; the LINEAR aggregate).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.aws import tags as T
from pipeline.blocks import BLOCK_SIZE, GIB, BlockMap
from pipeline.errors import ImageError
from pipeline.manifest import MANIFEST, read_manifest

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import SnapshotTypeDef

log = logging.getLogger(__name__)

ZERO_DIGEST = hashlib.sha256(bytes(BLOCK_SIZE)).digest()


def block_checksum(data: bytes) -> str:
    """PutSnapshotBlock's Checksum: the base64 (not hex) SHA-256 of the block."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def aggregate_checksum(digests: Sequence[bytes]) -> str:
    """CompleteSnapshot's LINEAR checksum: SHA-256 over the blocks' raw digests in index order, base64."""
    return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode("ascii")


# -- what to upload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    snapshot_id: str
    build_id: str
    blocks: BlockMap


@dataclass(frozen=True)
class UploadPlan:
    """One disk image to put into one snapshot: which blocks, on top of which parent, tagged how."""

    region: str
    image: Path
    image_sha256: str
    blocks: BlockMap
    volume_gib: int
    tags: dict[str, str]  # identity + provenance; Upload is added by the uploader
    description: str
    parent: Parent | None = None
    note: str = ""  # how the parent was chosen, or why there is none
    kms_key_id: str = ""
    write: tuple[int, ...] = ()  # blocks to send with their data
    zero: tuple[int, ...] = ()  # blocks to overwrite with zeros (data in the parent, empty now)

    @property
    def changed(self) -> int:
        return len(self.write) + len(self.zero)

    @property
    def parent_id(self) -> str:
        return self.parent.snapshot_id if self.parent else T.NO_PARENT

    def digests(self) -> list[bytes]:
        """Raw SHA-256 of every block written, in index order (what the aggregate checksum covers)."""
        zero = set(self.zero)
        return [
            ZERO_DIGEST if i in zero else bytes.fromhex(self.blocks.digests[i])
            for i in sorted((*self.write, *self.zero))
        ]

    def checksum(self) -> str:
        return aggregate_checksum(self.digests())

    def client_token(self, salt: str = "") -> str:
        """The StartSnapshot idempotency token: same image, parent, key and size give the same token."""
        parts = (
            "start-snapshot",
            self.image_sha256,
            self.parent_id,
            self.kms_key_id,
            str(self.volume_gib),
            salt,
        )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def plan(
    ec2: EC2Client,
    *,
    region: str,
    image: Path,
    image_sha256: str,
    blocks: BlockMap,
    identity: Mapping[str, str],
    tags: Mapping[str, str],
    description: str,
    builds_dir: Path,
    disk_name: str,
    kms_key_id: str = "",
) -> UploadPlan:
    """Decide what to upload for ``image``: its non-zero blocks, or a delta on the newest earlier snapshot.

    ``identity`` are the tags that make snapshots comparable (app, env, target, virtualization,
    ManagedBy). Reads only.
    """
    gib = max(1, -(-blocks.size // GIB))
    base = UploadPlan(
        region=region,
        image=image,
        image_sha256=image_sha256,
        blocks=blocks,
        volume_gib=gib,
        tags=dict(tags),
        description=description,
        kms_key_id=kms_key_id,
    )
    previous = _newest_complete(ec2, identity, exclude_sha256=image_sha256)
    if previous is None:
        return _full(base, "no earlier snapshot of this app/env/target: full upload")
    pid = previous["SnapshotId"]
    ptags = T.from_aws(previous.get("Tags"))
    build_id = ptags.get(T.BUILD_ID, "")
    if previous.get("VolumeSize", 0) > gib:
        return _full(
            base, f"earlier snapshot {pid} is larger ({previous.get('VolumeSize')} GiB): full upload"
        )
    if not _same_key(previous, kms_key_id):
        return _full(base, f"earlier snapshot {pid} has another encryption key: full upload")
    parent_map = _local_block_map(builds_dir, build_id, disk_name, ptags.get(T.IMAGE_SHA256, ""))
    if parent_map is None:
        return _full(
            base,
            f"earlier snapshot {pid} (build {build_id or '?'}) is not built on this machine: full upload",
        )
    parent = Parent(pid, build_id, parent_map)
    write = tuple(blocks.changed_since(parent_map))
    zero = tuple(blocks.zeroed_since(parent_map))
    note = f"delta on {pid} (build {build_id}): {len(write) + len(zero)} of {len(blocks.digests)} blocks"
    return _replace(base, parent=parent, write=write, zero=zero, note=note)


def _full(base: UploadPlan, note: str) -> UploadPlan:
    return _replace(base, write=tuple(sorted(base.blocks.digests)), note=note)


def _replace(p: UploadPlan, **changes: Any) -> UploadPlan:
    return replace(p, **changes)


def _newest_complete(
    ec2: EC2Client, identity: Mapping[str, str], exclude_sha256: str
) -> SnapshotTypeDef | None:
    found = [
        s
        for s in describe_snapshots(ec2, {**identity, T.UPLOAD: T.UPLOAD_COMPLETE})
        if T.from_aws(s.get("Tags")).get(T.IMAGE_SHA256) != exclude_sha256 and s.get("State") == "completed"
    ]
    if not found:
        return None
    return max(found, key=lambda s: (s.get("StartTime") or datetime.min, s["SnapshotId"]))


def _same_key(snapshot: SnapshotTypeDef, kms_key_id: str) -> bool:
    if not kms_key_id:
        return not snapshot.get("Encrypted", False)
    key = snapshot.get("KmsKeyId", "")
    return bool(snapshot.get("Encrypted")) and (key == kms_key_id or key.endswith(f"/{kms_key_id}"))


def _local_block_map(builds_dir: Path, build_id: str, disk_name: str, sha256: str) -> BlockMap | None:
    """The block map of disk ``disk_name`` of a local build, if present and of the image ``sha256``."""
    directory = builds_dir / build_id
    if not build_id or not (directory / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(directory)
        for disk in manifest.get("image", {}).get("disks", []):
            if disk.get("name") == disk_name and disk.get("sha256") == sha256:
                return read_block_map(directory / disk["blocks_file"])
    except (OSError, ValueError, KeyError, ImageError) as err:
        log.warning("block map of build %s unreadable (%s); uploading in full", build_id, err)
    return None


def read_block_map(path: Path) -> BlockMap:
    """A block map file written by the build (``<image>.blocks.json``)."""
    try:
        return BlockMap.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as err:
        raise ImageError(
            f"{path}: not a readable block map ({err})", hint="rebuild: invoke build --force"
        ) from err


def describe_snapshots(ec2: EC2Client, tags: Mapping[str, str]) -> list[SnapshotTypeDef]:
    """Our snapshots carrying all of ``tags`` (selected by tag: moto ignores OwnerIds)."""
    pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=T.filters(tags))
    return [s for page in pages for s in page.get("Snapshots", []) if T.managed(T.from_aws(s.get("Tags")))]
