"""What ``app.path`` and ``app.release`` point at, read without running Erlang.

- a **rebar3 project**: ``rebar.config`` plus one application (``src/NAME.app.src``) or an umbrella
  (``apps/*/src/NAME.app.src``, ``lib/*/...``, rebar3's default ``project_app_dirs``);
- a **release made elsewhere** (``app.release``): a directory made by ``rebar3 release`` or
  ``mix release``, with ``releases/VSN/NAME.rel`` and ``lib/``.

Its name is read from it: the first ``{release, {Name, Vsn}, ...}`` of the project's relx section,
else its one application, else the release's ``.rel``. The precise facts (versions, dependencies,
what relx will do) come from Erlang at build time (``pipeline/erl/project.escript``); this module
reads only what the settings need before any build: the name, and which files are the project.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.manifest import sha256_file
from pipeline.rules import show

PATH_SHOWN = 400  # characters of a path in an error (its end says which directory it is)

# Directories that are never part of a project's sources: build output, version control data, the
# pipeline's own work area and tool caches. Everything else under the project is a build input (the
# sources in any subdirectory, _checkouts/, rebar.lock, relx overlays, the app's config templates).
EXCLUDED_DIRS = frozenset(
    {"_build", ".git", ".hg", ".svn", ".pipeline", ".venv", "__pycache__", ".rebar3", "_rel",
     ".elixir_ls", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}
)  # fmt: skip
APP_DIRS = ("apps", "lib")  # rebar3's default project_app_dirs besides "."
_RELX_RELEASE = re.compile(r"\{\s*release\s*,\s*\{\s*'?([A-Za-z][A-Za-z0-9_@]*)'?\s*,")
_APP_SRC_NAME = re.compile(r"\{\s*application\s*,\s*'?([A-Za-z][A-Za-z0-9_@]*)'?\s*,")


@dataclass(frozen=True)
class Identity:
    """The name a project gives itself, and the file that says so (for messages)."""

    name: str
    source: Path
    apps: tuple[str, ...]  # the project's own applications (empty for a release)


def identify_project(directory: Path, where: str = "pipeline.toml: app.path") -> Identity:
    """The name of the rebar3 project in ``directory``; :class:`ConfigError` if it is not one.
    ``where`` names the setting that pointed here (and where its value came from)."""
    config = directory / "rebar.config"
    if not config.is_file():
        raise ConfigError(
            f"{where}: {show(str(directory), PATH_SHOWN)} has no rebar.config, so it is not a rebar3 project",
            hint="point app.path at the directory holding rebar.config, or set app.release to a release "
            "directory made by rebar3 release or mix release",
        )
    apps = project_apps(directory)
    release = _RELX_RELEASE.search(_strip_comments(config.read_text(errors="replace")))
    if release:
        return Identity(release.group(1), config, tuple(sorted(apps)))
    if not apps:
        raise ConfigError(
            f"{where}: {show(str(directory), PATH_SHOWN)} holds no OTP application (src/NAME.app.src, "
            "or apps/*/src/NAME.app.src for an umbrella)",
            hint="point app.path at the rebar3 project",
        )
    if len(apps) == 1:
        ((name, source),) = apps.items()
        return Identity(name, source, (name,))
    return Identity("", config, tuple(sorted(apps)))


def project_apps(directory: Path) -> dict[str, Path]:
    """``{name: its .app.src}`` of the project's own applications (top level or umbrella)."""
    candidates = sorted(directory.glob("src/*.app.src"))
    for parent in APP_DIRS:
        candidates += sorted(directory.glob(f"{parent}/*/src/*.app.src"))
    found: dict[str, Path] = {}
    for src in candidates:
        name = src.name.removesuffix(".app.src")
        declared = _APP_SRC_NAME.search(_strip_comments(src.read_text(errors="replace")))
        if declared and declared.group(1) != name:
            raise ConfigError(
                f"{src}: declares application {declared.group(1)} but the file is named {src.name}",
                hint=f"rename the file to {declared.group(1)}.app.src (rebar3 requires the match)",
            )
        found.setdefault(name, src)
    return found


def identify_release(directory: Path, where: str = "pipeline.toml: app.release") -> tuple[Identity, str]:
    """The name and version of the release in ``directory`` (``releases/VSN/NAME.rel``)."""
    releases = directory / "releases"
    if not releases.is_dir() or not (directory / "lib").is_dir():
        raise ConfigError(
            f"{where}: {show(str(directory), PATH_SHOWN)} is not a release directory (no releases/ and lib/)",
            hint="point app.release at what rebar3 release or mix release made, e.g. _build/prod/rel/NAME",
        )
    start = releases / "start_erl.data"
    versions = sorted(p.parent.name for p in releases.glob("*/*.rel"))
    if start.is_file():
        words = start.read_text().split()
        if len(words) == 2:
            versions = [words[1]]
    rels = sorted((releases / versions[0]).glob("*.rel")) if len(versions) == 1 else []
    if len(rels) != 1:
        raise ConfigError(
            f"{where}: {show(str(directory / 'releases'), PATH_SHOWN)} holds "
            f"{'no' if not versions else 'more than one'} release to boot",
            hint="give a release directory with one releases/VSN/NAME.rel (or releases/start_erl.data)",
        )
    return Identity(rels[0].stem, rels[0], ()), versions[0]


def project_files(directory: Path) -> dict[str, Path]:
    """``{path relative to directory: file}`` of every file of the project (see :data:`EXCLUDED_DIRS`).

    Symbolic links are followed (``_checkouts/dep -> ../../dep`` is common), each real directory once.
    """
    out: dict[str, Path] = {}
    seen: set[Path] = set()
    for top, dirs, files in os.walk(directory, followlinks=True):
        real = Path(top).resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        for name in files:
            path = Path(top) / name
            if path.is_file():
                out[path.relative_to(directory).as_posix()] = path
    return dict(sorted(out.items()))


def tree_digest(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of :func:`project_files`."""
    return {rel: sha256_file(path) for rel, path in project_files(directory).items()}


def _strip_comments(text: str) -> str:
    """Erlang source without ``%`` comments (strings and quoted atoms are kept intact)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c == "$" and i + 1 < len(text):
            out.append(text[i : i + 2])  # a character literal such as $% or $"
            i += 1
        elif c == "%":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)
