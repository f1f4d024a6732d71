"""Build the app's OTP release with rebar3 (Debian's), offline and reproducibly.

The project is copied into a staging directory (the user's tree is never written: no ``_build``,
no ``rebar.lock`` appears there), its resolved dependencies are put in the staging copy's
``_checkouts/`` (git commits exported, hex packages unpacked; ``pipeline/deps.py``), and
``rebar3 as PROFILE release`` assembles the release:

- the project's own ``{relx, ...}`` release when it has one, else one the pipeline describes: the
  project's applications (and what their ``.app`` files need), named ``app.name``, at the main
  application's version, with ``image.extra_apps`` loaded but not started;
- ``dev_mode`` and ``include_erts`` off: the release holds copies, and the image supplies its own
  trimmed runtime (``pipeline/images/runtime.py``);
- compiled with ``deterministic`` (``ERL_COMPILER_OPTIONS``): no paths or times in the beams, so the
  same inputs give the same bytes wherever the staging directory is;
- with ``REBAR_OFFLINE=1``, an empty global config and a private cache, so nothing is fetched and
  nothing from the user's rebar3 setup changes the result. Dependencies resolved to libraries
  installed on this machine are dropped from the staged ``rebar.config``: relx takes them from the
  code path like OTP's own applications.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline import deps, erlang, erlterm, hexpkg, project
from pipeline.errors import CompileError, ToolMissing
from pipeline.proc import run, which

log = logging.getLogger(__name__)

# A compiler diagnostic as rebar3 prints it: path:line[:col]: message
_DIAGNOSTIC = re.compile(r"^\S+:\d+(:\d+)?: ")
PROGRESS = ("===> Verifying", "===> Analyzing", "===> Compiling", "===> Assembling", "===> Building")
MAX_SHOWN = 3  # compiler lines shown in the one-line error; the rest is in the log


@dataclass(frozen=True)
class ReleaseSpec:
    """The release the pipeline asks rebar3 for."""

    name: str
    version: str
    apps: tuple[str, ...]  # started, in this order (relx adds what their .app files need)
    load_only: tuple[str, ...]  # shipped and on the code path, not started
    own_relx: bool  # the project has its own relx release (name is its name; the rest unused)


def stage(resolved: deps.Resolved, directory: Path) -> None:
    """Copy the project and its resolved dependencies (as ``_checkouts/``) into ``directory``."""
    for rel, path in project.project_files(resolved.directory).items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for dep in resolved.dependencies:
        dest = directory / "_checkouts" / dep.name
        if dep.source == "git":
            deps.materialize_git(dep, resolved.directory, dest)
        elif dep.source == "hex":
            hexpkg.materialize(Path(dep.location), dest)


def build_release(
    resolved: deps.Resolved, spec: ReleaseSpec, profile: str, work: Path, log_file: Path, shown_as: str
) -> Path:
    """Run ``rebar3 release`` for ``spec`` on a staged copy under ``work``; return the release root.

    Raises :class:`CompileError` with rebar3's first errors (and the log's path) when it fails; the
    files it names are shown under ``shown_as`` (the project's path in the settings).
    """
    rebar3 = which("rebar3")
    tc = erlang.host_toolchain()
    staged = work / "project"
    stage(resolved, staged)
    drop = [d.name for d in resolved.by_source("installed")]
    spec_file = work / "stage.spec"
    lines = [f"{{drop, [{', '.join(erlterm.atom(n) for n in drop)}]}}.\n"]
    if not spec.own_relx:
        apps = [erlterm.atom(a) for a in spec.apps]
        apps += [f"{{{erlterm.atom(a)}, load}}" for a in spec.load_only]
        # a version from git is relx's `git` (it asks git, as rebar3 does for the app's {vsn, git})
        vsn = "git" if spec.version == "git" else erlterm.charlist(spec.version)
        lines.append(f"{{release, {erlterm.atom(spec.name)}, {vsn}, [{', '.join(apps)}]}}.\n")
    spec_file.write_text("".join(lines))
    configs = [staged / "rebar.config"]
    if drop:
        configs += sorted(staged.glob("_checkouts/*/rebar.config")) + sorted(staged.glob("*/*/rebar.config"))
    for config in configs:
        erlang_run(tc, ["stage_config", config, config, spec_file])
        config.with_name("rebar.config.script").unlink(missing_ok=True)
    env = {
        "REBAR_OFFLINE": "1",
        "ERL_COMPILER_OPTIONS": "[deterministic]",
        "REBAR_SKIP_PROJECT_PLUGINS": "true",
        "REBAR_CACHE_DIR": str(work / "rebar-cache"),
        "REBAR_GLOBAL_CONFIG_DIR": str(work / "rebar-global"),
        "REBAR_COLOR": "none",
        "TERM": "dumb",
    }
    git_dir = _git_dir(resolved.directory) if resolved.git_vsn else None
    if git_dir is not None:
        env["GIT_DIR"] = str(git_dir)  # {vsn, git}: the project's history, as rebar3 would see it
    argv = [rebar3, "as", profile, "release", "-n", spec.name, "-d", "false", "-i", "false"]
    log.info("rebar3 %s", " ".join(argv[1:]))
    proc = subprocess.run(argv, cwd=staged, env={**_base_env(), **env}, capture_output=True, check=False)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(output)
    if proc.returncode != 0:
        raise CompileError(failure(output, staged, shown_as), hint=f"rebar3's whole output is in {log_file}")
    release = staged / "_build" / profile / "rel" / spec.name
    if not (release / "releases").is_dir():
        raise CompileError(f"rebar3 release made no release {spec.name} in {release}", hint=f"see {log_file}")
    return release


def failure(output: str, staged: Path, shown_as: str) -> str:
    """rebar3's failure in one line: its error lines and the first compiler diagnostics, trimmed,
    with the staged copy's paths shown as the project's (``shown_as/src/x.erl``)."""
    errors: list[str] = []
    diagnostics: list[str] = []
    prefix = shown_as.rstrip("/") + "/"
    for raw in output.splitlines():
        line = raw.strip().replace(f"{staged}/", prefix)
        if _DIAGNOSTIC.match(line) and not line.startswith(("/", prefix)):
            # rebar3 names the project's files relative to it, and a deterministic compile only by
            # their base name: show the project's path of the one file of that name
            name = line.split(":", 1)[0]
            found = [p for p in staged.rglob(Path(name).name) if "_build" not in p.parts]
            rel = found[0].relative_to(staged).as_posix() if len(found) == 1 else name
            line = prefix + rel + line[len(name) :]
        if line.startswith("===> ") and (line.endswith("failed") or not line.startswith(PROGRESS)):
            errors.append(line.removeprefix("===> "))
        elif _DIAGNOSTIC.match(line) and "Warning:" not in line:
            diagnostics.append(line)
    shown = diagnostics[:MAX_SHOWN]
    if len(diagnostics) > MAX_SHOWN:
        shown.append(f"... {len(diagnostics) - MAX_SHOWN} more")
    head = errors[0] if errors else (output.strip().splitlines() or ["no output"])[-1]
    text = "rebar3 release failed: " + head
    if shown:
        text += ": " + " | ".join(s[:300] for s in shown)
    return text


def erlang_run(tc: erlang.Toolchain, args: list[str | Path]) -> None:
    run([tc.escript, deps.PROJECT_SCRIPT, *args], what="project.escript")


def rebar3_version() -> str:
    """Debian's rebar3 package version (a build input: it shapes the release)."""
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "rebar3"], capture_output=True, check=False
        )
    except FileNotFoundError as err:
        raise ToolMissing("dpkg-query: not found", hint="the pipeline runs on Debian or Ubuntu") from err
    if proc.returncode != 0:
        raise ToolMissing("rebar3: the Debian package is not installed", hint="run ./setup.sh as root")
    return proc.stdout.decode().strip()


def _git_dir(directory: Path) -> Path | None:
    proc = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--absolute-git-dir"], capture_output=True, check=False
    )
    return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("REBAR_", "ERL_", "GIT_"))}
