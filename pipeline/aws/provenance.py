"""What an image records about where it came from: the tags that go on AMIs and their snapshots.

Besides the versions and digests, where the settings came from: ``GitCommit``/``GitDirty`` name the
checkout, and ``ConfigSource`` says whether the build's settings are what that checkout's
pipeline.toml gives (``pipeline.toml``) or were changed with ``--set`` (``overrides``; then
``ConfigOverrides`` names the keys, and the build's manifest holds the values). A clean commit alone
does not reproduce an image built with overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import proc
from pipeline.aws import tags as T
from pipeline.errors import PipelineError
from pipeline.manifest import digest_of

UNKNOWN = "unknown"
CONFIG_FILE = "pipeline.toml"
CONFIG_OVERRIDES = "overrides"


@dataclass(frozen=True)
class GitState:
    commit: str  # 40 hex digits or "unknown"
    dirty: str  # "true", "false" or "unknown"


def git_state(root: Path) -> GitState:
    """The checkout's commit and whether it has uncommitted changes ("unknown" outside git)."""
    try:
        head = proc.run(["git", "-C", str(root), "rev-parse", "--verify", "HEAD"], what="git rev-parse")
        status = proc.run(["git", "-C", str(root), "status", "--porcelain"], what="git status")
    except PipelineError:
        return GitState(UNKNOWN, UNKNOWN)
    commit = head.stdout.decode().strip()
    return GitState(commit, "true" if status.stdout.strip() else "false")


def identity(app: str, env: str, target: str, virtualization: str) -> dict[str, str]:
    """The tags that make images and snapshots comparable: same app, environment, target, disk kind."""
    return T.scope(app, env, {T.TARGET: target, T.VIRTUALIZATION: virtualization})


def image_tags(manifest: Mapping[str, Any], disk: Mapping[str, Any], git: GitState) -> dict[str, str]:
    """Identity and provenance of one disk of a build, from its manifest."""
    app = manifest.get("app", {})
    tools = manifest.get("inputs", {}).get("tools", {}) or {}
    overrides = [str(o).split("=", 1)[0] for o in manifest.get("overrides", []) or []]
    out = identity(
        str(app.get("name")), str(manifest.get("env")), str(manifest.get("target")), disk["virtualization"]
    )
    out.update(
        {
            T.BUILD_ID: str(manifest["build_id"]),
            T.VERSION: str(app.get("version", UNKNOWN)),
            T.CONFIG_DIGEST: str(manifest.get("config_digest", UNKNOWN)),
            T.PIPELINE_VERSION: str(manifest.get("pipeline_version", UNKNOWN)),
            T.GIT_COMMIT: git.commit,
            T.GIT_DIRTY: git.dirty,
            T.CONFIG_SOURCE: CONFIG_OVERRIDES if overrides else CONFIG_FILE,
            T.OTP_VERSION: _tool(tools, "otp") or str(app.get("otp_release") or UNKNOWN),
            T.IMAGE_SHA256: str(disk["sha256"]),
        }
    )
    if overrides:
        out[T.CONFIG_OVERRIDES] = " ".join(dict.fromkeys(overrides))
    kernel = _tool(tools, "kernel", "linux")
    if kernel:
        out[T.KERNEL_VERSION] = kernel
    ling = _tool(tools, "ling", "railing")
    if ling:
        out[T.LING_VERSION] = ling
    deps = manifest.get("dependencies") or []
    if deps:  # each one's name, version, digest and source are in the manifest the build id names
        out[T.DEPENDENCIES] = (
            f"{len(deps)} in manifest.json of build {manifest['build_id']}, sha256 {digest_of(deps)[:16]}"
        )
    return {k: _value(v) for k, v in out.items()}


def snapshot_tags(image: Mapping[str, str], name: str) -> dict[str, str]:
    """The tags of an image's snapshot: the image's identity and provenance under the same name."""
    return {**image, T.NAME: name}


def _tool(tools: Mapping[str, Any], *names: str) -> str:
    """The version of the first tool whose key contains one of ``names``."""
    for name in names:
        for key in sorted(tools):
            if name in key.lower():
                value = tools[key]
                return str(value.get("version", "")) if isinstance(value, dict) else str(value)
    return ""


def _value(value: str) -> str:
    """A tag value EC2 accepts: at most 256 characters."""
    return value if len(value) <= 256 else value[:253] + "..."
