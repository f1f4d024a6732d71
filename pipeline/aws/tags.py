"""The tags and names the pipeline puts on what it creates, defined once.

Everything the pipeline creates carries ``ManagedBy``; garbage collection and rollback select by these
tags (never by a name prefix alone) and check them again before deleting anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import FilterTypeDef, TagTypeDef

MANAGED_BY = "erlang-unikernel-pipeline"

# Tag keys.
MANAGED = "ManagedBy"
APP = "App"
ENV = "Env"
TARGET = "Target"
BUILD_ID = "BuildId"
VERSION = "Version"
CONFIG_DIGEST = "ConfigDigest"
VIRTUALIZATION = "Virtualization"  # "hvm" or "pv"
COLOR = "Color"  # "blue" or "green" on stack resources
UPLOAD = "Upload"  # on snapshots: "incomplete" until CompleteSnapshot succeeded, then "complete"
NAME = "Name"
# Provenance of an image (on AMIs and their snapshots).
PIPELINE_VERSION = "PipelineVersion"
GIT_COMMIT = "GitCommit"  # 40 hex digits, or "unknown" outside a git checkout
GIT_DIRTY = "GitDirty"  # "true" when the checkout had uncommitted changes, "false", or "unknown"
OTP_VERSION = "OtpVersion"
KERNEL_VERSION = "KernelVersion"  # beam: the Linux kernel package version
LING_VERSION = "LingVersion"  # ling: the LING/railing version
CONFIG_SOURCE = "ConfigSource"  # "pipeline.toml", or "overrides" when --set changed the build's settings
CONFIG_OVERRIDES = "ConfigOverrides"  # with overrides: the SECTION.KEY names they set (not the values)
IMAGE_SHA256 = "ImageSha256"  # of the whole raw disk image that was uploaded
DEPENDENCIES = "Dependencies"  # how many the app has and where they are listed (its build's manifest)
SNAPSHOT = "SnapshotId"  # on AMIs: the snapshot the pipeline uploaded (moto reports another one)
SNAPSHOT_CHECKSUM = "SnapshotChecksum"  # the linear aggregate SHA-256 given to CompleteSnapshot
PARENT_SNAPSHOT = "ParentSnapshot"  # the snapshot the upload was a delta against, or "none"
SOURCE_IMAGE = "SourceImage"  # on copies: "region/ami-..." they were copied from
DEPRECATE_AT = "DeprecateAt"  # the deprecation time the pipeline set (ISO 8601, UTC)

# The tags that make images and snapshots one series (delta parents, reuse, gc groups are per series).
SERIES = (MANAGED, APP, ENV, TARGET, VIRTUALIZATION)

UPLOAD_INCOMPLETE = "incomplete"
UPLOAD_COMPLETE = "complete"
NO_PARENT = "none"

Color = Literal["blue", "green"]  # the two sides of a blue/green stack
COLORS: tuple[Color, Color] = ("blue", "green")


def image_name(app: str, env: str, target: str, virtualization: str, build_id: str) -> str:
    """The AMI name: unique per build and disk, and valid for EC2 (3-128 chars of [A-Za-z0-9()./_-])."""
    return f"{app}-{env}-{target}-{virtualization}-{build_id}"


def stack_name(app: str, env: str) -> str:
    """One CloudFormation stack per app and environment (stack names allow [A-Za-z0-9-])."""
    return f"{app}-{env}".replace("_", "-")


def scope(app: str, env: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags of everything the pipeline makes for one app and environment (``ManagedBy``, ``App``,
    ``Env``), and ``extra``: the scope in which images, snapshots and stacks are selected."""
    return {MANAGED: MANAGED_BY, APP: app, ENV: env, **(extra or {})}


def to_aws(tags: Mapping[str, str]) -> list[TagTypeDef]:
    """``{"K": "V"}`` -> ``[{"Key": "K", "Value": "V"}]``, sorted by key (EC2, EBS and CloudFormation)."""
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def from_aws(tags: Sequence[Mapping[str, object]] | None) -> dict[str, str]:
    """``[{"Key": "K", "Value": "V"}]`` -> ``{"K": "V"}``."""
    return {str(t["Key"]): str(t["Value"]) for t in tags or ()}


def managed(tags: Mapping[str, str]) -> bool:
    return tags.get(MANAGED) == MANAGED_BY


def filters(tags: Mapping[str, str]) -> list[FilterTypeDef]:
    """DescribeImages/DescribeSnapshots filters matching every one of ``tags`` exactly."""
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(tags.items())]


def missing(want: Mapping[str, str], have: Mapping[str, str]) -> dict[str, str]:
    """The tags of ``want`` that ``have`` lacks or holds with another value."""
    return {k: v for k, v in want.items() if have.get(k) != v}
