"""Provenance of an image's settings: an image whose settings came from ``--set`` overrides says so
(``ConfigSource``/``ConfigOverrides`` on the AMI, the overrides in the build's manifest), so a clean
``GitCommit`` is not mistaken for a reproducible source of its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.aws import provenance
from pipeline.aws import tags as T
from tests.deploy_support import V2, TwoReleases

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")
DISK = {"virtualization": "hvm", "sha256": "0" * 64}


def manifest(overrides: list[str] | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "build_id": "1" * 16,
        "env": "dev",
        "target": "beam",
        "app": {"name": "erlang_web"},
    }
    if overrides is not None:
        out["overrides"] = overrides
    return out


def test_an_image_built_from_pipeline_toml_says_so() -> None:
    for m in (manifest([]), manifest(None)):  # None: a manifest made before overrides were recorded
        tags = provenance.image_tags(m, DISK, GIT)
        assert tags[T.CONFIG_SOURCE] == "pipeline.toml" and T.CONFIG_OVERRIDES not in tags


def test_an_image_built_with_overrides_names_their_keys_not_their_values() -> None:
    tags = provenance.image_tags(
        manifest(['app.config.greeting="secret hello"', "image.memory_mb=512", "app.config.greeting=again"]),
        DISK,
        GIT,
    )
    assert tags[T.CONFIG_SOURCE] == "overrides"
    assert tags[T.CONFIG_OVERRIDES] == "app.config.greeting image.memory_mb"
    assert tags[T.GIT_DIRTY] == "false"  # a clean commit, and still not what its pipeline.toml gives


def test_settings_keep_the_overrides_as_given(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text('default_env = "dev"\n[app]\nname = "web"\n[env.dev]\n')
    s = config.load(tmp_path, overrides=[" app.config.greeting=Hi ", "deploy.capacity=2"])
    assert s.overrides == ("app.config.greeting=Hi", "deploy.capacity=2")
    assert config.load(tmp_path).overrides == ()


@pytest.mark.slow  # two real beam builds (once per session)
def test_the_manifest_records_the_overrides_among_the_builds_inputs(two_releases: TwoReleases) -> None:
    assert two_releases.v1.manifest["overrides"] == []
    assert two_releases.v2.manifest["overrides"] == [V2]
