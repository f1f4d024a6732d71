"""What a build starts from: the app's rebar3 project with its dependencies, or a release made elsewhere.

:func:`source_of` reads it (files and local git only; nothing is compiled) and lists everything it is
made of as build inputs: every file of the project (``pipeline/project.py``), each dependency's
identity (``pipeline/deps.py``), the project's git position when a version comes from git, or every
file of a given release. :func:`build_release` makes the beam target's OTP release from a project
(``pipeline/rebar.py``); a given release is used as it is.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline import deps, erlang, project, rebar
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.images import runtime


@dataclass(frozen=True)
class Source:
    """The app as the build takes it."""

    kind: Literal["project", "release"]
    directory: Path
    name: str  # app.name: the release's name
    version: str  # the release's version ("git": computed from git when rebar3 builds it)
    main_app: str  # where [app.config] goes without the app's own sys.config.j2 ("" = none)
    resolved: deps.Resolved | None  # the project and its dependencies (None for a given release)
    inputs: dict[str, Any]  # what it is made of, as build inputs

    def dependency_records(self) -> list[dict[str, str]]:
        return deps.identities(self.resolved.dependencies) if self.resolved else []


def source_of(settings: Settings) -> Source:
    """Read what ``app.path`` / ``app.release`` point at (see the module docstring)."""
    if settings.release_dir is not None:
        return _given_release(settings, settings.release_dir)
    directory = settings.app_dir
    identity = project.identify_project(directory)  # one line for no rebar.config, no app, ...
    resolved = deps.resolve(directory, settings.app.profile)
    name = settings.app.name
    if resolved.relx_release is not None:
        version = resolved.relx_release[1]
        main = (
            name if name in resolved.apps else (next(iter(resolved.apps)) if len(resolved.apps) == 1 else "")
        )
    else:
        if name not in resolved.apps:
            raise ConfigError(
                f"pipeline.toml: app.name: {name} is not an application of {settings.app.path} "
                f"({', '.join(sorted(resolved.apps)) or 'none'})",
                hint="remove app.name (it is read from the project)",
            )
        version, main = resolved.apps[name].vsn, name
    unsupported = [a for a in resolved.apps.values() if a.vsn.startswith("{")]
    if unsupported:
        a = unsupported[0]
        raise ConfigError(
            f"{a.src}: vsn {a.vsn} is not supported",
            hint='write the version as a string ("1.2.0") or git',
        )
    inputs: dict[str, Any] = {
        "files": project.tree_digest(directory),
        "dependencies": deps.identities(resolved.dependencies),
        "profile": settings.app.profile,
    }
    if resolved.git_vsn:
        inputs["git"] = _git_position(directory)
    del identity
    return Source("project", directory, name, version, main, resolved, inputs)


def _given_release(settings: Settings, directory: Path) -> Source:
    identity, version = project.identify_release(directory)
    if settings.image.extra_apps:
        raise ConfigError(
            "pipeline.toml: image.extra_apps: a release made elsewhere already says what it ships",
            hint="add the applications to the release itself, or leave image.extra_apps empty",
        )
    apps = {p.name.rsplit("-", 1)[0] for p in (directory / "lib").iterdir() if p.is_dir()}
    main = identity.name if identity.name in apps else ""
    return Source(
        "release",
        directory,
        identity.name,
        version,
        main,
        None,
        {"files": _release_digest(directory)},
    )


def build_release(settings: Settings, source: Source, work: Path) -> erlang.Artifact:
    """The beam target's release: made by rebar3 from the project under ``work``, or the given one."""
    if source.kind == "release":
        return _artifact(source.directory, source, source.version)
    assert source.resolved is not None  # a project source always has its resolution
    own = source.resolved.relx_release is not None
    if own and settings.image.extra_apps:
        raise ConfigError(
            "pipeline.toml: image.extra_apps: the project's own relx release says what it ships",
            hint="add the applications to the release in rebar.config, or leave image.extra_apps empty",
        )
    from pipeline.images import recipe

    otp_apps = recipe.load(settings.assets_dir).otp_applications
    wanted = {a: f"{recipe.RECIPE}: otp.applications" for a in otp_apps}
    wanted.update({a: "pipeline.toml: image.extra_apps" for a in settings.image.extra_apps})
    tc = erlang.host_toolchain()
    for app, where in wanted.items():
        if deps.installed_lib(tc, app) is None and app not in source.resolved.apps:
            raise ConfigError(
                f"{where}: OTP application {app} is not installed in {tc.root}",
                hint=f"install the Debian package erlang-{app.replace('_', '-')} "
                "or remove the name from the list",
            )
    spec = rebar.ReleaseSpec(
        name=source.name,
        version=source.version,
        apps=tuple(sorted(source.resolved.apps, key=lambda a: (a != source.main_app, a))),
        load_only=tuple(dict.fromkeys((*otp_apps, *settings.image.extra_apps))),
        own_relx=own,
    )
    directory = rebar.build_release(
        source.resolved,
        spec,
        settings.app.profile,
        work,
        settings.work_dir / "logs" / "rebar3.log",
        settings.app.path,
    )
    versions = sorted(p.parent.name for p in (directory / "releases").glob(f"*/{source.name}.rel"))
    if len(versions) != 1:
        raise ConfigError(f"rebar3 made {len(versions)} versions of release {source.name}: {versions}")
    return _artifact(directory, source, versions[0])


def _artifact(directory: Path, source: Source, version: str) -> erlang.Artifact:
    tc = erlang.host_toolchain()
    facts = runtime.inspect(tc, directory, source.name, version)
    rel = Path("releases") / version
    return erlang.Artifact(
        name=source.name,
        version=version,
        directory=directory,
        main_app=source.main_app,
        applications=facts.applications,
        sys_config=(rel / "sys.config").as_posix() if (directory / rel / "sys.config").is_file() else "",
        vm_args=(rel / "vm.args").as_posix() if (directory / rel / "vm.args").is_file() else "",
        details={"erts": facts.erts, "own_erts": facts.erts in facts.shipped_erts},
    )


def _release_digest(directory: Path) -> dict[str, str]:
    """Every file of a given release except its start scripts (``bin/``), which the image leaves out."""
    return {k: v for k, v in project.tree_digest(directory).items() if not k.startswith("bin/")}


def _git_position(directory: Path) -> dict[str, str]:
    """What rebar3 and relx read when a version comes from git: the commit and the tags reaching it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, check=False)
        return proc.stdout.decode(errors="replace").strip()

    return {"head": git("rev-parse", "HEAD"), "describe": git("describe", "--tags", "--long", "--always")}
