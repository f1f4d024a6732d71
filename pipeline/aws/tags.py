"""The tags and names the pipeline puts on what it creates, defined once.

Everything the pipeline creates carries ``ManagedBy``; garbage collection and rollback select by these
tags (never by a name prefix alone) and check them again before deleting anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

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

Color = Literal["blue", "green"]


def image_name(app: str, env: str, target: str, virtualization: str, build_id: str) -> str:
    """The AMI name: unique per build and disk, and valid for EC2 (3-128 chars of [A-Za-z0-9()./_-])."""
    return f"{app}-{env}-{target}-{virtualization}-{build_id}"


def stack_name(app: str, env: str) -> str:
    """One CloudFormation stack per app and environment (stack names allow [A-Za-z0-9-])."""
    return f"{app}-{env}".replace("_", "-")


def to_aws(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``{"K": "V"}`` -> ``[{"Key": "K", "Value": "V"}]``, sorted by key."""
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def from_aws(tags: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    """``[{"Key": "K", "Value": "V"}]`` -> ``{"K": "V"}``."""
    return {t["Key"]: t["Value"] for t in tags or ()}


def managed(tags: Mapping[str, str]) -> bool:
    return tags.get(MANAGED) == MANAGED_BY
