"""Garbage collection of the pipeline's AMIs and snapshots.

In the home region and every region of ``ami.regions``, for this app and environment, it keeps:

- the newest ``ami.keep`` images per target and virtualization;
- the images of the last ``ami.keep`` releases that went live on each stack (its release history,
  :mod:`pipeline.aws.history`): what ``invoke rollback --to BUILD`` can return to;
- every image a CloudFormation stack still references (any stack parameter whose value is the image
  id: the deploy stage's ``BlueImageId``/``GreenImageId``) or that the latest or default version of a
  launch template names;
- snapshots behind a kept image, incomplete uploads younger than the grace period (or still running on
  this machine), and complete snapshots younger than the grace period (an ``invoke ami`` may be about to
  register them).

Everything else that carries the pipeline's tags goes: images are deregistered, then their snapshots
and the leftover snapshots are deleted. Selection is by tag, and each resource's tags are read again
right before it is deleted. ``plan`` only reads; ``apply`` acts on a plan.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import ClientError

from pipeline.aws import history
from pipeline.aws import tags as T
from pipeline.aws.calls import error_code, error_text, one_line_errors
from pipeline.aws.delta import describe_snapshots
from pipeline.aws.images import ImageRecord, describe_images
from pipeline.aws.session import Clients
from pipeline.aws.snapshot import upload_running
from pipeline.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

GRACE = timedelta(hours=2)  # longer than any upload of our images takes; AWS cancels idle ones after 1 h


@dataclass(frozen=True)
class Removal:
    region: str
    kind: Literal["image", "snapshot"]
    resource_id: str
    build_id: str
    created: str
    reason: str


@dataclass
class GcPlan:
    regions: list[str]
    removals: list[Removal] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (region, id, why)

    def record(self, applied: bool) -> dict[str, object]:
        """The result printed on stdout."""
        key = "removed" if applied else "would_remove"
        return {
            key: [
                {
                    "region": r.region,
                    "kind": r.kind,
                    "id": r.resource_id,
                    "build": r.build_id,
                    "reason": r.reason,
                }
                for r in self.removals
            ],
            "kept": [{"region": region, "id": rid, "reason": why} for region, rid, why in self.kept],
        }

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        return [
            (r.region, r.kind, r.resource_id, r.build_id or "-", r.created, r.reason) for r in self.removals
        ]


@one_line_errors()
def plan(
    clients: Clients,
    settings: Settings,
    *,
    keep: int | None = None,
    grace: timedelta = GRACE,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> GcPlan:
    """What gc would remove, and why (reads only)."""
    keep = settings.ami.keep if keep is None else keep
    regions = list(dict.fromkeys((settings.aws.region, *settings.ami.regions)))
    out = GcPlan(regions)
    scope = T.scope(settings.app.name, settings.env)
    lock_dir = settings.work_dir / "uploads"
    # Stacks live in the home region; the releases their histories keep are kept in every region.
    home = references(clients, settings.aws.region, keep)
    kept_builds = {k.removeprefix("build:"): why for k, why in home.items() if k.startswith("build:")}
    for region in regions:
        used = home if region == settings.aws.region else references(clients, region, keep)
        _plan_region(clients.ec2(region), used, region, scope, keep, grace, now(), lock_dir, out, kept_builds)
    return out


def _plan_region(
    ec2: EC2Client,
    used: Mapping[str, str],
    region: str,
    scope: Mapping[str, str],
    keep: int,
    grace: timedelta,
    now: datetime,
    lock_dir: Path,
    out: GcPlan,
    kept_builds: Mapping[str, str],
) -> None:
    images = describe_images(ec2, region, scope, usable=False)
    groups: dict[tuple[str, str], list[ImageRecord]] = defaultdict(list)
    for image in images:
        groups[(image.tags.get(T.TARGET, ""), image.virtualization)].append(image)
    doomed: list[ImageRecord] = []
    for (target, virt), members in sorted(groups.items()):
        members.sort(key=lambda i: (i.created, i.image_id), reverse=True)
        for rank, image in enumerate(members):
            if rank < keep:
                out.kept.append((region, image.image_id, f"one of the newest {keep} {target}/{virt} images"))
            elif image.image_id in used:
                out.kept.append((region, image.image_id, used[image.image_id]))
            elif image.build_id in kept_builds:
                out.kept.append((region, image.image_id, kept_builds[image.build_id]))
            else:
                doomed.append(image)
                out.removals.append(
                    Removal(
                        region,
                        "image",
                        image.image_id,
                        image.build_id,
                        image.created,
                        f"older than the newest {keep} {target}/{virt} images, used by no stack, "
                        f"not one of the last {keep} live releases",
                    )
                )
    kept_snapshots = {s for i in images if i not in doomed for s in i.snapshot_ids}
    doomed_snapshots = {s: i for i in doomed for s in i.snapshot_ids}
    for s in describe_snapshots(ec2, scope):
        sid = s["SnapshotId"]
        stags = T.from_aws(s.get("Tags"))
        started = s.get("StartTime")
        created = started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if started else ""
        age = now - started if started else timedelta(0)
        build = stags.get(T.BUILD_ID, "")
        if sid in kept_snapshots:
            continue
        if sid in doomed_snapshots:
            reason = f"snapshot of {doomed_snapshots[sid].image_id}, which goes"
        elif stags.get(T.UPLOAD) != T.UPLOAD_COMPLETE:
            if upload_running(lock_dir, stags.get(T.IMAGE_SHA256, "")):
                out.kept.append((region, sid, "upload running on this machine"))
                continue
            if age < grace:
                out.kept.append((region, sid, f"incomplete upload younger than {_span(grace)}"))
                continue
            reason = f"incomplete upload, started {_span(age)} ago"
        else:
            if age < grace:
                out.kept.append((region, sid, f"not registered yet, younger than {_span(grace)}"))
                continue
            reason = "used by no image"
        out.removals.append(Removal(region, "snapshot", sid, build, created, reason))


def references(clients: Clients, region: str, keep: int) -> dict[str, str]:
    """Image ids that stacks and launch templates in ``region`` still use -> who uses them (a stack's
    release history: the images of its last ``keep`` live releases)."""
    used: dict[str, str] = {}
    cfn = clients.cloudformation(region)
    for page in cfn.get_paginator("describe_stacks").paginate():
        for stack in page.get("Stacks", []):
            if stack.get("StackStatus") == "DELETE_COMPLETE":
                continue
            name = stack["StackName"]
            for param in stack.get("Parameters", []):
                key, value = param.get("ParameterKey", ""), param.get("ParameterValue", "")
                if key == history.PARAMETER:
                    try:
                        live = history.live_entries(history.decode(value))[:keep] if value else []
                    except ValueError:
                        pass  # not the pipeline's history: its image ids count as any parameter's
                    else:
                        for rank, e in enumerate(live, start=1):
                            why = f"stack {name}: live release {rank} of the last {keep}"
                            used.setdefault(e.release.image_id, why)
                            used.setdefault(f"build:{e.release.build_id}", why)
                        continue
                for image_id in _image_ids(value):
                    used.setdefault(image_id, f"stack {name} ({key})")
    ec2 = clients.ec2(region)
    for lt_page in ec2.get_paginator("describe_launch_templates").paginate():
        for lt in lt_page.get("LaunchTemplates", []):
            resp = ec2.describe_launch_template_versions(
                LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Latest", "$Default"]
            )
            for version in resp.get("LaunchTemplateVersions", []):
                image_id = version.get("LaunchTemplateData", {}).get("ImageId", "")
                if image_id:
                    used.setdefault(image_id, f"launch template {lt.get('LaunchTemplateName')}")
    return used


def _image_ids(value: str) -> Iterable[str]:
    for part in value.replace(",", " ").split():
        if part.startswith("ami-"):
            yield part


@one_line_errors()
def apply(clients: Clients, settings: Settings, gc_plan: GcPlan) -> list[tuple[Removal, str]]:
    """Carry out ``gc_plan``: images first, then snapshots. Returns the removals that failed, with why."""
    scope = T.scope(settings.app.name, settings.env)
    failures: list[tuple[Removal, str]] = []
    ordered = sorted(gc_plan.removals, key=lambda r: r.kind != "image")
    for removal in ordered:
        ec2 = clients.ec2(removal.region)
        try:
            state = _check(ec2, removal, scope)
            if state == "gone":
                continue
            if state == "changed":
                failures.append((removal, "its tags no longer say it is the pipeline's; left alone"))
                continue
            _remove(ec2, removal)
            log.info("gc: removed %s %s in %s", removal.kind, removal.resource_id, removal.region)
        except ClientError as err:
            failures.append((removal, error_text(err)))
    return failures


# What EC2 answers when what is to be removed is gone already: a retried DeregisterImage or
# DeleteSnapshot whose first attempt was applied but whose answer was lost, or another gc run.
ALREADY_GONE = {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound"}


def _remove(ec2: EC2Client, removal: Removal) -> None:
    """Deregister the image or delete the snapshot; one that is gone already counts as removed."""
    try:
        if removal.kind == "image":
            ec2.deregister_image(ImageId=removal.resource_id)
        else:
            ec2.delete_snapshot(SnapshotId=removal.resource_id)
    except ClientError as err:
        if error_code(err) not in ALREADY_GONE:
            raise
        log.info("gc: %s %s in %s was gone already", removal.kind, removal.resource_id, removal.region)


def _check(ec2: EC2Client, removal: Removal, scope: Mapping[str, str]) -> Literal["ours", "gone", "changed"]:
    """Read the resource's tags again: delete only what still carries the pipeline's tags."""
    try:
        if removal.kind == "image":
            found = ec2.describe_images(ImageIds=[removal.resource_id]).get("Images", [])
        else:
            found = ec2.describe_snapshots(SnapshotIds=[removal.resource_id]).get("Snapshots", [])  # type: ignore[assignment]
    except ClientError as err:
        if "NotFound" in error_code(err):
            return "gone"
        raise
    if not found:
        return "gone"
    have = T.from_aws(found[0].get("Tags"))
    return "changed" if T.missing(scope, have) else "ours"


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h"
