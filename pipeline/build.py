"""The build stage: source + settings + templates -> a build directory keyed by a digest of all inputs.

``build(settings)`` is idempotent: the build id is computed from the inputs before anything is
compiled, and a finished build with that id is reused. A build is made in a temporary directory next
to its final place and renamed into place only when complete, so a failed or killed build never leaves
a directory that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pipeline
from pipeline import appconfig, proc
from pipeline.config import Settings
from pipeline.erlang import Artifact
from pipeline.errors import PipelineError
from pipeline.images import BuildContext, ImageTarget, target_for
from pipeline.manifest import (
    BUILD_ID_LEN,
    MANIFEST,
    SCHEMA,
    digest_of,
    file_entries,
    read_manifest,
    sha256_file,
    tree_digests,
    write_json,
)
from pipeline.release import Source, source_of

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(pipeline.__file__).parent
# The pipeline's own code that shapes build outputs: changing it must change the build id.
BUILDER_PATTERNS = (
    "build.py", "erlang.py", "render.py", "manifest.py", "erl/*", "images/*.py", "xen/pvkernel.py",
    "appconfig.py", "erlterm.py", "deps.py", "rebar.py", "release.py", "project.py",
)  # fmt: skip
# The pipeline's code that shapes the compiled release (not the configuration baked into it).
COMPILER_PATTERNS = ("erl/", "erlang.py", "deps.py", "rebar.py", "release.py", "project.py")
# Outputs listed by their target with their own digests (large disk images are not hashed twice).
SELF_DESCRIBED_DIRS = ("disks/",)


@dataclass(frozen=True)
class BuildResult:
    build_id: str
    directory: Path
    reused: bool
    manifest: dict[str, Any]
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """The build record printed by ``invoke build --json``."""
        return {
            "build_id": self.build_id,
            "directory": str(self.directory),
            "reused": self.reused,
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class BuildPlan:
    build_id: str
    config_digest: str
    inputs: dict[str, Any]
    target: ImageTarget
    source: Source


def builds_dir(settings: Settings) -> Path:
    return settings.work_dir / "builds"


def baked_config(settings: Settings) -> dict[str, Any]:
    """The configuration baked into the app (its sys.config), as data; its digest is the config digest."""
    return {"app": asdict(settings.app), "env": settings.env, "target": settings.image.target}


def plan(settings: Settings) -> BuildPlan:
    """Collect every input of a build and derive the build id (reads files; compiles nothing).

    The inputs: every file of the app's project (or of the given release), each dependency's identity,
    the app's and the shared templates, the pipeline's own build code, the image recipe, the settings
    of the environment and the versions of the tools.
    """
    target = target_for(settings)
    source = source_of(settings)
    config_digest = digest_of(baked_config(settings))
    templates = settings.assets_dir / "templates"
    inputs = {
        "schema": SCHEMA,
        "source": {"kind": source.kind, "name": source.name, "version": source.version},
        "sources": source.inputs["files"],
        "dependencies": source.inputs.get("dependencies", []),
        "git": source.inputs.get("git", {}),
        "app_templates": {name: sha256_file(path) for name, path in appconfig.templates_of(settings).items()},
        # Only the templates baked into images; templates/xen/ belongs to the local Xen test host.
        "templates": tree_digests(templates, settings.assets_dir, ("*.j2",)),
        "builder": tree_digests(PACKAGE_DIR, PACKAGE_DIR, BUILDER_PATTERNS),
        "recipe": target.input_files(settings),
        "settings": {"env": settings.env, "app": asdict(settings.app), "image": asdict(settings.image)},
        "tools": target.tool_versions(settings),
    }
    return BuildPlan(digest_of(inputs)[:BUILD_ID_LEN], config_digest, inputs, target, source)


def find(settings: Settings) -> BuildResult:
    """The finished build of the current inputs, for the stages after build; raise if there is none."""
    p = plan(settings)
    directory = builds_dir(settings) / p.build_id
    if not (directory / MANIFEST).is_file():
        raise PipelineError(
            f"no build of the current sources and settings (build id {p.build_id}) for env {settings.env}",
            hint=f"run: invoke build --env {settings.env}",
        )
    return BuildResult(p.build_id, directory, True, read_manifest(directory))


def build(settings: Settings, force: bool = False) -> BuildResult:
    """Build the app for ``settings`` or reuse the finished build of the same inputs.

    Returns the build; raises :class:`PipelineError` (and removes the partial directory) on failure.
    """
    started = time.monotonic()
    p = plan(settings)
    root = builds_dir(settings)
    final = root / p.build_id
    if (final / MANIFEST).is_file() and not force:
        log.info("build %s is up to date", p.build_id)
        return BuildResult(p.build_id, final, True, read_manifest(final), time.monotonic() - started)

    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = root / f".tmp-{p.build_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _make(settings, p, tmp)
        if force:
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # Another build of the same inputs finished first; its result is byte-identical to ours.
            if not (final / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildResult(p.build_id, final, False, manifest, time.monotonic() - started)


def _make(settings: Settings, p: BuildPlan, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True)
    app = _compile_cached(settings, p)
    context = template_context(settings, p.build_id, p.config_digest, app.version)
    config_dir = out / "config"
    baked = appconfig.bake(settings, app, context, config_dir)
    ctx = BuildContext(settings, p.build_id, out, app, config_dir, context)
    image = p.target.build_image(ctx)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "build_id": p.build_id,
        "pipeline_version": pipeline.__version__,
        "env": settings.env,
        "target": settings.image.target,
        "app": {
            "name": app.name,
            "version": app.version,
            "source": p.source.kind,
            "main_app": app.main_app,
            "applications": [{"name": n, "version": v} for n, v in app.applications],
            **app.details,
        },
        "dependencies": p.source.dependency_records(),
        "config_digest": p.config_digest,
        "config": {**baked_config(settings), "baked": baked},
        # The --set overrides among this build's inputs (provenance: not what pipeline.toml says).
        "overrides": [o for o in settings.overrides if o.split(".", 1)[0] in p.inputs["settings"]],
        "inputs": p.inputs,
        "outputs": file_entries(out, skip_dirs=SELF_DESCRIBED_DIRS),
        "image": image,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def compiled(settings: Settings) -> Artifact:
    """The compiled app (the release, for beam) of the current inputs: from the compile cache when
    it was made before, else made now."""
    return _compile_cached(settings, plan(settings))


def _compile_cached(settings: Settings, p: BuildPlan) -> Artifact:
    """The target's compiled app: from the cache when the same sources were compiled by the same
    tools and code before, else compiled now and cached.

    Compiled code depends only on the sources, the dependencies, the tools, the pipeline's compile
    step and the settings that shape the release (its name, profile, extra applications), so a
    configuration-only change reuses it. A cache entry is made atomically like a build directory;
    it is read, never changed, by the builds that use it. A release given as it is (``app.release``)
    is used in place.
    """
    if p.source.kind == "release":
        return p.target.compile(settings, p.source, settings.work_dir / "tmp")
    key = digest_of(
        {
            "target": p.target.name,
            "sources": p.inputs["sources"],
            "dependencies": p.inputs["dependencies"],
            "git": p.inputs["git"],
            "tools": p.inputs["tools"],
            "compiler": {k: v for k, v in p.inputs["builder"].items() if k.startswith(COMPILER_PATTERNS)},
            "release": {
                "name": settings.app.name,
                "profile": settings.app.profile,
                "extra_apps": list(settings.image.extra_apps),
                "recipe": p.inputs["recipe"],
            },
        }
    )[:BUILD_ID_LEN]
    cache = settings.work_dir / "cache" / p.target.name / key
    record = cache / "compiled.json"
    if record.is_file():
        data = json.loads(record.read_text())
        app = _artifact_from(data, cache)
        log.info("reused compiled %s %s from cache %s", app.name, app.version, key)
        return app
    cache.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache.parent)
    tmp = cache.with_name(f".tmp-{key}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        made = p.target.compile(settings, p.source, tmp / "work")
        made.directory.rename(tmp / "out")
        shutil.rmtree(tmp / "work", ignore_errors=True)
        data = {**asdict(made), "directory": "out"}
        write_json(tmp / "compiled.json", data)
        try:
            tmp.rename(cache)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another build cached the same compile first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _artifact_from(json.loads(record.read_text()), cache)


def _artifact_from(data: dict[str, Any], cache: Path) -> Artifact:
    return Artifact(
        name=data["name"],
        version=data["version"],
        directory=cache / data["directory"],
        main_app=data["main_app"],
        applications=tuple((n, v) for n, v in data["applications"]),
        sys_config=data["sys_config"],
        vm_args=data["vm_args"],
        details=data["details"],
    )


def template_context(settings: Settings, build_id: str, config_digest: str, version: str) -> dict[str, Any]:
    """The variables every template in templates/ is rendered with."""
    return {
        "app": settings.app,
        "image": settings.image,
        "build": {
            "id": build_id,
            "env": settings.env,
            "target": settings.image.target,
            "config_digest": config_digest,
            "version": version,
        },
    }


def _remove_abandoned(root: Path) -> None:
    """Delete temporary build directories whose builder process is gone (a killed build)."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not proc.alive(int(pid)):
            log.info("removing abandoned %s", tmp.name)
            shutil.rmtree(tmp, ignore_errors=True)
