"""What the ling target hands railing: the project and its dependencies, compiled by OTP 17.

railing packs every ``**/ebin/*.{app,beam}`` under the directory it runs in, plus each ``-i``
directory, and mounts each directory at ``/<project>/<dir>`` in a bucket named after the directory's
last component (``ebin`` skipped: ``lib/cowlib/ebin`` is bucket ``cowlib``); OTP's own applications
come from the toolchain's OTP 17 with ``-l`` (``railing/railing.erl``, cloudozer/ling). So the
pipeline stages:

- the main application as ``ebin/`` and ``priv/`` (where the baked sys.config goes);
- every other application, the umbrella's and the dependencies', as ``lib/NAME/ebin`` and
  ``lib/NAME/priv``, compiled from source by the toolchain's OTP 17 (rebar3 cannot run on OTP 17:
  ``pipeline/erl/build_app.escript`` compiles them, dependencies first);
- ``-l`` for every OTP application the apps need, followed through OTP 17's own ``.app`` files.

Refused, naming the application: native code (a NIF or a port driver: LING runs neither), a
dependency that resolves only to a library installed on this machine (compiled by this machine's
OTP, which LING cannot load; its sources must be in ``_checkouts/``), and two staged directories
that would share a bucket name (LING finds only one of them, ``find_bucket`` in LING's
``embedded_export``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import deps, erlang, hexpkg
from pipeline.config import Settings
from pipeline.erlang import BUILD_APP_SCRIPT, Artifact, CompiledApp
from pipeline.errors import CompileError, ImageError, ToolFailed
from pipeline.images import beamfile
from pipeline.images.runtime import RUNTIME_SCRIPT
from pipeline.manifest import sha256_file
from pipeline.release import Source
from pipeline.remote import Host, open_host, workdir

ALWAYS_EMBEDDED = ("kernel", "stdlib")  # railing embeds these whatever -l says
SOURCE_PARTS = ("src", "include", "priv", "rebar.config")
NATIVE_HINT = (
    'LING runs neither NIFs nor port drivers: drop the dependency, or build with image.target = "beam"'
)


@dataclass(frozen=True)
class ToCompile:
    name: str
    directory: Path  # its sources, staged locally
    origin: str  # what to call it in messages: "the app", "dependency jiffy"


def compile_project(settings: Settings, source: Source, tc: Any, work: Path, base: Path) -> Artifact:
    """Compile the project's applications and dependencies with the toolchain ``tc`` (OTP 17) on its
    host and stage them for railing under ``work``; return the staged project as an Artifact."""
    resolved = source.resolved
    if resolved is None:
        raise CompileError(
            "pipeline.toml: app.release: the ling target compiles the project with OTP 17 itself",
            hint="set app.path to the rebar3 project and leave app.release empty for ling",
        )
    apps = _sources(settings, source, resolved, work / "src")
    with tempfile.TemporaryDirectory(dir=base, prefix="ling-src.") as tmp:
        upload = Path(tmp)
        for app in apps:
            shutil.copytree(app.directory, upload / "src" / app.name)
        shutil.copy2(BUILD_APP_SCRIPT, upload / BUILD_APP_SCRIPT.name)
        shutil.copy2(RUNTIME_SCRIPT, upload / RUNTIME_SCRIPT.name)
        with open_host(settings.ling, base) as host, workdir(host, "ling-compile") as wd:
            host.upload(upload, wd)
            compiled = _compile(host, tc, wd, apps, settings.app.path, work / "out")
            names = {c.name for c in compiled}
            wanted = [n for c in compiled for n in c.applications if n not in names]
            wanted += [a for a in settings.image.extra_apps if a not in names]
            libs = _otp_closure(host, tc, wd, compiled, list(dict.fromkeys(wanted)))
    origin = {a.name: a.origin for a in apps}
    for c in compiled:
        refuse_native(c, origin[c.name])
    main = next(c for c in compiled if c.name == source.main_app)
    stage = work / "stage"
    _stage(main, [c for c in compiled if c is not main], stage)
    check_buckets(stage, libs)
    return Artifact(
        name=source.name,
        version=main.version,
        directory=stage,
        main_app=main.name,
        applications=tuple((c.name, c.version) for c in compiled),
        details={
            "modules": list(main.modules),
            "needs": list(main.applications),
            "otp_release": main.otp_release,
            "libs": libs,
            "files": {
                p.relative_to(stage).as_posix(): sha256_file(p)
                for p in sorted(stage.rglob("*"))
                if p.is_file()
            },
        },
    )


def _sources(settings: Settings, source: Source, resolved: deps.Resolved, dest: Path) -> list[ToCompile]:
    """The applications to compile, each after the dependencies it needs, the main app last."""
    out: list[ToCompile] = []
    for dep in resolved.build_order():
        where = dest / dep.name
        if dep.source == "installed":
            native = sorted(p.name for p in Path(dep.location).glob("priv/**/*.so"))
            if native:
                raise CompileError(
                    f"ling: dependency {dep.name} has native code ({dep.location}/priv/{native[0]})",
                    hint=NATIVE_HINT,
                )
            raise CompileError(
                f"ling: dependency {dep.name} is the library installed in {dep.location}, compiled by this "
                "machine's Erlang/OTP; LING loads only code compiled by OTP 17",
                hint=f"put its sources in {settings.app.path}/_checkouts/{dep.name} so the ling target "
                "compiles them",
            )
        if dep.source == "git":
            deps.materialize_git(dep, source.directory, where)
        elif dep.source == "hex":
            hexpkg.materialize(Path(dep.location), where)
        else:
            shutil.copytree(source.directory / "_checkouts" / dep.name, where)
        _keep_sources(where)
        if (where / "c_src").is_dir() or any(where.glob("priv/**/*.so")):
            raise CompileError(
                f"ling: dependency {dep.name} has native code (c_src/ or priv/*.so)", hint=NATIVE_HINT
            )
        out.append(ToCompile(dep.name, where, f"dependency {dep.name}"))
    own = sorted(resolved.apps, key=lambda a: (a == source.main_app, a))
    for name in own:
        where = dest / name
        shutil.copytree(
            resolved.apps[name].src.parent.parent,
            where,
            ignore=shutil.ignore_patterns("_build", "_checkouts"),
        )
        _keep_sources(where)
        out.append(ToCompile(name, where, "the app" if name == source.main_app else f"application {name}"))
    return out


def _keep_sources(directory: Path) -> None:
    for entry in list(directory.iterdir()):
        if entry.name not in SOURCE_PARTS and entry.name != "c_src":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _compile(
    host: Host, tc: Any, wd: str, apps: list[ToCompile], shown_as: str, out: Path
) -> list[CompiledApp]:
    argv = [tc.tool("escript"), BUILD_APP_SCRIPT.name, "multi", "out", *[f"src/{a.name}" for a in apps]]
    try:
        summary = host.run(argv, cwd=wd, path=tc.otp_bin, what="erlc")
    except ToolFailed as err:
        line = erlang.compile_failure(err)
        main = apps[-1].name
        line = line.replace(f"src/{main}/", f"{shown_as}/", 1)
        raise CompileError(line, hint="fix the Erlang source and run the build again") from err
    compiled = parse_summaries(summary, out)
    for c in compiled:
        host.download_tree(f"{wd}/out/{c.directory.name}/ebin", c.ebin)
        # OTP 17 stamps each beam with the time and the build host's path; railing keeps both.
        beamfile.normalise_dir(c.ebin)
        local = next(a for a in apps if a.name == c.name).directory
        if (local / "priv").is_dir():
            shutil.copytree(local / "priv", c.directory / "priv", dirs_exist_ok=True)
    return compiled


def parse_summaries(text: str, out: Path) -> list[CompiledApp]:
    """Each application ``build_app.escript multi`` compiled, from its summary."""
    blocks: list[list[str]] = []
    otp = [ln for ln in text.splitlines() if ln.startswith("otp ")]
    for line in text.splitlines():
        if line.startswith("app "):
            blocks.append([])
        if blocks and not line.startswith("otp "):
            blocks[-1].append(line)
    return [erlang.parse_summary("\n".join([*b, *otp[:1]]), out) for b in blocks]


def _otp_closure(host: Host, tc: Any, wd: str, compiled: list[CompiledApp], wanted: list[str]) -> list[str]:
    """OTP applications railing must embed with ``-l``: ``wanted`` and what they need, per OTP 17."""
    if not wanted:
        return []
    ebins = ":".join(f"out/{c.directory.name}/ebin" for c in compiled)
    argv = [tc.tool("escript"), RUNTIME_SCRIPT.name, "closure", ebins, *wanted]
    try:
        out = host.run(argv, cwd=wd, path=tc.otp_bin, what="runtime.escript closure", quiet=True)
    except ToolFailed as err:
        missing = next((ln.split() for ln in err.stdout.splitlines() if ln.startswith("missing ")), None)
        if missing:
            who = "image.extra_apps" if missing[2] == "cli" else missing[2]
            raise CompileError(
                f"ling: OTP application {missing[1]}, which {who} needs, is not in the toolchain's "
                "Erlang/OTP 17",
                hint="install it there, or remove it from the .app applications",
            ) from err
        raise
    names = {c.name for c in compiled}
    libs = [ln.split()[1] for ln in out.splitlines() if ln.startswith("app ")]
    return sorted(n for n in libs if n not in names and n not in ALWAYS_EMBEDDED)


def refuse_native(app: CompiledApp, origin: str) -> None:
    if app.nif_modules:
        many = len(app.nif_modules) > 1
        raise CompileError(
            f"ling: {origin} ({app.name}) loads native code: module{'s' if many else ''} "
            f"{', '.join(app.nif_modules)} call{'' if many else 's'} erlang:load_nif/2 or erl_ddll, and LING "
            "has no NIF or driver support",
            hint=NATIVE_HINT,
        )


def _stage(main: CompiledApp, others: list[CompiledApp], stage: Path) -> None:
    """The layout railing packs (see the module docstring); beams and .app files only in ebin."""
    stage_main(main, stage)
    for app in others:
        _copy_app(app, stage / "lib" / app.name / "ebin", stage / "lib" / app.name / "priv")


def stage_main(app: CompiledApp, stage: Path) -> None:
    """The main application as railing packs it: ``ebin/`` and ``priv/`` (where the baked sys.config
    goes) at the top of the project."""
    _copy_app(app, stage / "ebin", stage / "priv")
    (stage / "priv").mkdir(parents=True, exist_ok=True)


def _copy_app(app: CompiledApp, ebin: Path, priv: Path) -> None:
    ebin.mkdir(parents=True)
    for f in sorted(app.ebin.iterdir()):
        if f.suffix in (".app", ".beam"):
            shutil.copy2(f, ebin / f.name)
    if (app.directory / "priv").is_dir():
        shutil.copytree(app.directory / "priv", priv)


def bucket_of(directory: str) -> str:
    """railing's bucket name for a project directory (``avoid_ebin_stem`` in railing.erl)."""
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    while parts and parts[-1] == "ebin":
        parts.pop()
    return parts[-1] if parts else "top"


def check_buckets(stage: Path, libs: list[str]) -> None:
    """Refuse a layout in which two directories would share a railing bucket (the baked sys.config
    will be in ``priv/``, so that bucket is always taken)."""
    dirs = {p.parent.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()} | {"priv"}
    taken: dict[str, str] = {b: f"railing's own {b}" for b in ("boot", *ALWAYS_EMBEDDED, *libs)}
    for d in sorted(dirs):
        bucket = bucket_of(d)
        if bucket in taken:
            raise ImageError(
                f"ling: {d}/ and {taken[bucket]}/ would share railing's bucket {bucket} (railing names a "
                "directory's bucket after its last component), and LING finds files in only one of them",
                hint="rename the directory, or move its files into one with a name of its own",
            )
        taken[bucket] = d
