"""Who may use an image, and until when: launch and create-volume permissions, deprecation.

Images are never public: a public launch permission found on one of ours is removed. The accounts
that may launch an image (and create volumes from its snapshots) are exactly ``ami.share_with``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws import tags as T
from pipeline.aws.calls import error_code
from pipeline.aws.images import ImageRecord, parse_time

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# Error codes of an endpoint that lacks an action: the local AWS (moto) answers NotImplemented.
UNSUPPORTED_CODES = ("NotImplemented", "UnsupportedOperation")


def ensure_access(ec2: EC2Client, image: ImageRecord, accounts: Sequence[str]) -> list[str]:
    """Exactly ``accounts`` may launch the image and create volumes from its snapshots; never public."""
    actions = []
    want = set(accounts)
    attr = ec2.describe_image_attribute(ImageId=image.image_id, Attribute="launchPermission")
    perms = attr.get("LaunchPermissions", [])
    have = {p["UserId"] for p in perms if "UserId" in p}
    public = any(p.get("Group") == "all" for p in perms)
    add = [{"UserId": a} for a in sorted(want - have)]
    remove: list[dict[str, Any]] = [{"UserId": a} for a in sorted(have - want)]
    if public:
        remove.append({"Group": "all"})
        ui.warn(f"{image.image_id} in {image.region} was public; making it private")
    if add or remove:
        change: dict[str, Any] = {}
        if add:
            change["Add"] = add
        if remove:
            change["Remove"] = remove
        ec2.modify_image_attribute(ImageId=image.image_id, LaunchPermission=change)  # type: ignore[arg-type]
        actions.append(f"launch permission: +{len(add)} -{len(remove)} accounts")
    for snapshot_id in image.snapshot_ids:
        actions.extend(_ensure_volume_permission(ec2, snapshot_id, want))
    return actions


def _ensure_volume_permission(ec2: EC2Client, snapshot_id: str, want: set[str]) -> list[str]:
    try:
        attr = ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission")
    except ClientError as err:
        if error_code(err) == "InvalidSnapshot.NotFound":
            return []
        raise
    perms = attr.get("CreateVolumePermissions", [])
    have = {p["UserId"] for p in perms if "UserId" in p}
    actions = []
    if want - have:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="add",
            UserIds=sorted(want - have),
        )
        actions.append(f"{snapshot_id}: create-volume permission for {len(want - have)} accounts")
    if have - want:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="remove",
            UserIds=sorted(have - want),
        )
        actions.append(f"{snapshot_id}: create-volume permission removed from {len(have - want)} accounts")
    if any(p.get("Group") == "all" for p in perms):
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="remove",
            GroupNames=["all"],
        )
        actions.append(f"{snapshot_id}: no longer public")
    return actions


def deprecation_time(created: datetime, days: int) -> datetime:
    """When an image created at ``created`` is deprecated: ``days`` later, on the minute (as EC2 keeps it)."""
    return (created + timedelta(days=days)).replace(second=0, microsecond=0)


def ensure_deprecation(ec2: EC2Client, image: ImageRecord, at: datetime) -> list[str]:
    """Deprecate ``image`` at ``at`` unless that is already so.

    Where the endpoint does not implement EnableImageDeprecation (the local AWS), the intended time is
    recorded in the ``DeprecateAt`` tag and a warning is shown, and later runs leave it at that.
    """
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if image.deprecation and parse_time(image.deprecation) == at:
        return []
    if not image.deprecation and image.tags.get(T.DEPRECATE_AT) == stamp:
        return []
    try:
        ec2.enable_image_deprecation(ImageId=image.image_id, DeprecateAt=at)
        action = f"deprecation at {stamp}"
    except ClientError as err:
        if error_code(err) not in UNSUPPORTED_CODES:
            raise
        ui.warn(
            f"{image.region}: this AWS endpoint cannot deprecate images; recorded {T.DEPRECATE_AT}={stamp}"
        )
        action = f"deprecation at {stamp} recorded as a tag only ({error_code(err)})"
    ec2.create_tags(Resources=[image.image_id], Tags=T.to_aws({T.DEPRECATE_AT: stamp}))
    return [action]
