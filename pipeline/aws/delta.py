"""What to upload for a disk image: all of its non-zero blocks, or only what changed since a parent.

When an earlier snapshot of the same app, environment, target and virtualization exists (tags
``Upload=complete``; the newest one that qualifies), the new snapshot names it as its parent and
carries only the blocks whose digest differs from the parent image's block map, plus zeros over
blocks that held data in the parent and are empty now. The parent's block map comes from its build
directory on this machine (``.pipeline/builds/<BuildId>/``, found through the parent snapshot's
``BuildId`` tag and checked against its ``ImageSha256`` tag), so nothing is downloaded. When no
earlier snapshot qualifies (its build is not on this machine, it is larger, or it is encrypted
otherwise than the new snapshot must be), the upload is a full one without a parent, and the plan's
note says why: correctness never depends on local files.

**Encryption** ("Encryption outcomes for EBS direct APIs", EBS user guide; StartSnapshot in the EBS
API reference): a snapshot started with ``ParentSnapshotId`` takes its parent's encryption and key,
and ``Encrypted`` or ``KmsKeyArn`` in the same request is a ValidationException. So a delta names its
parent only, and a parent qualifies only when its encryption is what ``ami.kms_key_id`` asks for:
encrypted with exactly that key, or (no key set) unencrypted. A key change therefore makes a full
upload encrypted with the new key, and the plan's note says so. ``KmsKeyArn`` must be a key ARN; an
alias or key id in the settings is resolved once (:func:`key_arn`).

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
# StartSnapshot's KmsKeyArn (the pattern of the EBS service model): the ARN of a key, not of an alias.


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
    kms_key_id: str = ""  # the key ARN a snapshot without a parent is encrypted with ("" = EBS defaults)
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

    def encryption(self) -> dict[str, Any]:
        """StartSnapshot's encryption parameters: none for a delta (it takes its parent's key, and EBS
        refuses Encrypted or KmsKeyArn beside ParentSnapshotId), the key for a full upload."""
        if self.parent is not None or not self.kms_key_id:
            return {}
        return {"Encrypted": True, "KmsKeyArn": self.kms_key_id}

    def without_parent(self, note: str) -> UploadPlan:
        """The same image uploaded in full, without a parent."""
        return _full(replace(self, parent=None, zero=()), note)

    def client_token(self, salt: str = "") -> str:
        """The StartSnapshot idempotency token: the same image of the same app, environment, target and
        virtualization, on the same parent, with the same key and size, gives the same token. (EBS
        returns the snapshot of the first request for a token it has seen: two environments whose
        disks happen to be identical must not share one.)"""
        series = "/".join(self.tags.get(k, "") for k in T.SERIES)
        parts = (
            "start-snapshot",
            series,
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
    candidates = _complete_newest_first(ec2, identity, exclude_sha256=image_sha256)
    if not candidates:
        return _full(base, "no earlier snapshot of this app/env/target: full upload")
    reasons: list[str] = []
    for previous in candidates:
        pid = previous["SnapshotId"]
        ptags = T.from_aws(previous.get("Tags"))
        build_id = ptags.get(T.BUILD_ID, "")
        if previous.get("VolumeSize", 0) > gib:
            reasons.append(f"earlier snapshot {pid} is larger ({previous.get('VolumeSize')} GiB)")
            continue
        mismatch = _key_mismatch(previous, kms_key_id)
        if mismatch:
            reasons.append(f"earlier snapshot {pid} {mismatch}")
            continue
        parent_map = _local_block_map(builds_dir, build_id, disk_name, ptags.get(T.IMAGE_SHA256, ""))
        if parent_map is None:
            reasons.append(f"earlier snapshot {pid} (build {build_id or '?'}) is not built on this machine")
            continue
        parent = Parent(pid, build_id, parent_map)
        write = tuple(blocks.changed_since(parent_map))
        zero = tuple(blocks.zeroed_since(parent_map))
        note = f"delta on {pid} (build {build_id}): {len(write) + len(zero)} of {len(blocks.digests)} blocks"
        return _replace(base, parent=parent, write=write, zero=zero, note=note)
    older = f" (nor any of {len(reasons) - 1} older)" if len(reasons) > 1 else ""
    return _full(base, f"{reasons[0]}{older}: full upload")


def _full(base: UploadPlan, note: str) -> UploadPlan:
    return _replace(base, write=tuple(sorted(base.blocks.digests)), note=note)


def _replace(p: UploadPlan, **changes: Any) -> UploadPlan:
    return replace(p, **changes)


def _complete_newest_first(
    ec2: EC2Client, identity: Mapping[str, str], exclude_sha256: str
) -> list[SnapshotTypeDef]:
    """The finished snapshots of this app/env/target/virtualization but of another image, newest first."""
    found = [
        s
        for s in describe_snapshots(ec2, {**identity, T.UPLOAD: T.UPLOAD_COMPLETE})
        if T.from_aws(s.get("Tags")).get(T.IMAGE_SHA256) != exclude_sha256 and s.get("State") == "completed"
    ]
    return sorted(found, key=lambda s: (s.get("StartTime") or datetime.min, s["SnapshotId"]), reverse=True)


def _key_mismatch(snapshot: SnapshotTypeDef, kms_key_arn: str) -> str:
    """Why a delta on ``snapshot`` would not be encrypted as ``kms_key_arn`` asks ("" when it would):
    a delta keeps its parent's encryption."""
    encrypted = bool(snapshot.get("Encrypted", False))
    key = snapshot.get("KmsKeyId", "")
    if not kms_key_arn:
        if encrypted:
            return (
                f"is encrypted (key {key or '?'}) and ami.kms_key_id is empty (set it to that key for deltas)"
            )
        return ""
    if not encrypted:
        return f"is not encrypted; the new one is encrypted with {kms_key_arn}"
    if key != kms_key_arn:
        return f"is encrypted with key {key or '?'}; ami.kms_key_id is now {kms_key_arn}, so a new key"
    return ""


def same_encryption(snapshot: SnapshotTypeDef, kms_key_arn: str) -> bool:
    """Whether ``snapshot`` is encrypted as an upload with ``kms_key_arn`` would be (no key: not at all,
    unless the account encrypts by default, which the pipeline cannot tell apart)."""
    if not kms_key_arn:
        return True
    return bool(snapshot.get("Encrypted")) and snapshot.get("KmsKeyId", "") == kms_key_arn


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
