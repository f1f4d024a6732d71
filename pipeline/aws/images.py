"""AMIs as the pipeline sees them: records, lookups by tag and name, waiting, tagging."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from pipeline.aws import tags as T
from pipeline.aws.calls import error_code
from pipeline.aws.wait import poll
from pipeline.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import ImageTypeDef

IMAGE_TIMEOUT = 3600.0  # seconds for a registered or copied image to become available


@dataclass(frozen=True)
class ImageRecord:
    """One AMI as the pipeline sees it."""

    image_id: str
    region: str
    name: str
    state: str
    created: str  # CreationDate, ISO 8601 UTC
    tags: dict[str, str]
    block_snapshots: tuple[str, ...] = ()  # snapshot ids of its block device mappings
    public: bool = False
    deprecation: str = ""  # DeprecationTime, if any

    @classmethod
    def from_aws(cls, region: str, image: ImageTypeDef) -> ImageRecord:
        return cls(
            image_id=image["ImageId"],
            region=region,
            name=image.get("Name", ""),
            state=image.get("State", "unknown"),
            created=image.get("CreationDate", ""),
            tags=T.from_aws(image.get("Tags")),
            block_snapshots=tuple(
                b["Ebs"]["SnapshotId"]
                for b in image.get("BlockDeviceMappings", [])
                if b.get("Ebs", {}).get("SnapshotId")
            ),
            public=bool(image.get("Public")),
            deprecation=image.get("DeprecationTime", ""),
        )

    @property
    def build_id(self) -> str:
        return self.tags.get(T.BUILD_ID, "")

    @property
    def virtualization(self) -> str:
        return self.tags.get(T.VIRTUALIZATION, "")

    @property
    def snapshot_ids(self) -> tuple[str, ...]:
        """The snapshots behind the image: its block devices and the one the pipeline uploaded."""
        ids = list(self.block_snapshots)
        tagged = self.tags.get(T.SNAPSHOT)
        if tagged and tagged not in ids:
            ids.append(tagged)
        return tuple(ids)

    def created_at(self) -> datetime:
        return parse_time(self.created)


USABLE = ("available", "pending")
GONE = ("deregistered", "disabled")


def describe_images(
    ec2: EC2Client, region: str, tags: Mapping[str, str], usable: bool = True
) -> list[ImageRecord]:
    """The pipeline's images in ``region`` carrying every one of ``tags``: those that are or will be
    usable (``usable``), or all that still exist (failed ones included, for gc)."""
    resp = ec2.describe_images(Owners=["self"], Filters=T.filters(tags))
    records = [ImageRecord.from_aws(region, i) for i in resp.get("Images", [])]
    return [
        r for r in records if (r.state in USABLE if usable else r.state not in GONE) and T.managed(r.tags)
    ]


def newest(records: Sequence[ImageRecord]) -> ImageRecord | None:
    return max(records, key=lambda r: (r.created, r.image_id)) if records else None


def find_by_name(ec2: EC2Client, region: str, name: str, want: Mapping[str, str]) -> ImageRecord | None:
    """An image of ours with ``name`` whose tags are missing (moto drops RegisterImage's tags)."""
    resp = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    for image in resp.get("Images", []):
        record = ImageRecord.from_aws(region, image)
        if record.state not in USABLE:
            continue
        clash = {k: v for k, v in record.tags.items() if k in want and want[k] != v}
        if clash:
            raise AwsError(
                f"image {record.image_id} in {region} is named {name} but is tagged {clash}",
                hint="an image of that name was made by something else; deregister or rename it",
            )
        return record
    return None


def wait_available(
    ec2: EC2Client, region: str, image_id: str, sleep: Callable[[float], None], clock: Callable[[], float]
) -> ImageRecord:
    def check() -> ImageRecord | None:
        try:
            images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
        except ClientError as err:
            if error_code(err) == "InvalidAMIID.NotFound":  # a new image may not be visible at once
                return None
            raise
        if not images:
            return None
        record = ImageRecord.from_aws(region, images[0])
        if record.state in ("failed", "error", "invalid"):
            reason = images[0].get("StateReason", {}).get("Message", "no reason given")
            raise AwsError(f"image {image_id} in {region} ended in state {record.state}: {reason}")
        return record if record.state == "available" else None

    return poll(check, what=f"image {image_id} in {region}", timeout=IMAGE_TIMEOUT, sleep=sleep, clock=clock)


def ensure_tags(ec2: EC2Client, image: ImageRecord, want: Mapping[str, str]) -> ImageRecord:
    lacking = T.missing(want, image.tags)
    if not lacking:
        return image
    ec2.create_tags(Resources=[image.image_id], Tags=T.to_aws(lacking))
    return with_tags(image, {**image.tags, **lacking})


def with_tags(image: ImageRecord, tags: dict[str, str]) -> ImageRecord:
    return replace(image, tags=tags)


def parse_time(text: str) -> datetime:
    """An AWS timestamp (``2026-01-02T03:04:05.000Z``) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
