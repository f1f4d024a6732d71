"""The Erlang toolchain: find it, read its versions, compile an application.

The beam target's release is built by rebar3 (``pipeline/rebar.py``). The ling target compiles each
application with ``pipeline/erl/build_app.escript`` run by the toolchain's own ``escript`` (OTP 17,
possibly on a build host), which is what :func:`compile_app` and :func:`parse_summary` serve.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import CompileError, ToolFailed, ToolMissing
from pipeline.proc import SETUP_HINT, run, which

log = logging.getLogger(__name__)

BUILD_APP_SCRIPT = Path(__file__).parent / "erl" / "build_app.escript"

# FILE:LINE: or FILE:LINE:COL: as printed by compile:file/2 with report_errors.
_ERROR_LINE = re.compile(r"^(?P<loc>[^\s:]+:\d+(?::\d+)?): (?P<msg>.*)$")


@dataclass(frozen=True)
class Toolchain:
    """An Erlang/OTP installation: where it is and which release it is."""

    root: Path  # the OTP root (has bin/, erts-*/, lib/, releases/)
    otp_release: str  # major release, e.g. "25"
    otp_version: str  # full version, e.g. "25.2.3"
    erts_version: str  # e.g. "13.1.5"

    @property
    def escript(self) -> Path:
        return self.root / "bin" / "escript"

    @property
    def erl(self) -> Path:
        return self.root / "bin" / "erl"

    def lib_dir(self, app: str) -> Path:
        """The newest ``lib/<app>-<vsn>`` directory of this installation."""
        candidates = sorted(self.root.glob(f"lib/{app}-*"), key=lambda p: _version_key(p.name))
        if not candidates:
            raise ToolMissing(
                f"OTP application {app} is not installed in {self.root}",
                hint=f"install the Debian package erlang-{app.replace('_', '-')} (or run ./setup.sh)",
            )
        return candidates[-1]


@dataclass(frozen=True)
class CompiledApp:
    """An application compiled into ``<out>/<name>-<vsn>/``."""

    name: str
    version: str
    directory: Path  # <out>/<name>-<vsn>
    modules: tuple[str, ...]
    applications: tuple[str, ...]  # the .app file's `applications` (runtime dependencies)
    nif_modules: tuple[str, ...]  # modules that call erlang:load_nif/2
    otp_release: str  # release of the compiler that produced the beams

    @property
    def ebin(self) -> Path:
        return self.directory / "ebin"


@dataclass(frozen=True)
class Artifact:
    """What an image target's compile step made, for the rest of the build.

    beam: the OTP release (``directory`` is its root: ``lib/``, ``releases/VSN/``); ling: the project
    staged the way railing packs it. Both are build products kept in the compile cache, so they hold
    only what equal inputs reproduce byte for byte.
    """

    name: str  # app.name: the release's name
    version: str  # the release's version (ling: the main application's)
    directory: Path
    main_app: str  # the OTP application [app.config] belongs to when the app has no sys.config.j2
    applications: tuple[tuple[str, str], ...]  # (name, version) of every application in it
    sys_config: str = ""  # the release's own sys.config, relative to directory ("" = none)
    vm_args: str = ""  # the release's own vm.args, relative to directory ("" = none)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific facts (ling: modules)


def host_toolchain() -> Toolchain:
    """The Erlang/OTP installation whose ``erl`` is on PATH (no Erlang process is started)."""
    erl = Path(which("erl", hint=SETUP_HINT)).resolve()
    # /usr/bin/erl -> /usr/lib/erlang/bin/erl; the OTP root is two levels up from bin/erl.
    return toolchain_at(erl.parent.parent)


def toolchain_at(root: Path) -> Toolchain:
    """Describe the OTP installation rooted at ``root`` by reading its release files."""
    releases = sorted((root / "releases").glob("*/OTP_VERSION"), key=lambda p: _version_key(p.parent.name))
    erts = sorted(root.glob("erts-*"), key=lambda p: _version_key(p.name))
    if not releases or not erts:
        raise ToolMissing(
            f"{root}: not an Erlang/OTP installation (no releases/*/OTP_VERSION or erts-*)", hint=SETUP_HINT
        )
    otp_version = releases[-1].read_text().strip()
    return Toolchain(
        root=root,
        otp_release=releases[-1].parent.name,
        otp_version=otp_version,
        erts_version=erts[-1].name.removeprefix("erts-"),
    )


def compile_app(
    app_dir: Path, out_dir: Path, toolchain: Toolchain | None = None, cwd: Path | None = None
) -> CompiledApp:
    """Compile the OTP app in ``app_dir`` (rebar3 layout) into ``out_dir/<name>-<vsn>/``.

    Beams are deterministic (same sources, same bytes); ``priv/`` is copied alongside ``ebin/``.
    ``cwd`` is where the compiler runs; give the project root so errors name project-relative files.
    Raises :class:`CompileError` with the first ``file:line: message`` of the compiler on failure.
    """
    tc = toolchain or host_toolchain()
    if not tc.escript.exists():
        raise ToolMissing(f"{tc.escript}: not found", hint=SETUP_HINT)
    work = cwd or Path.cwd()
    src_arg = _relative_to(app_dir, work)
    try:
        proc = run([tc.escript, BUILD_APP_SCRIPT, src_arg, out_dir], cwd=work, what="erlc")
    except ToolFailed as err:
        raise CompileError(
            compile_failure(err), hint="fix the Erlang source and run the build again"
        ) from err
    app = parse_summary(proc.stdout.decode(), out_dir)
    priv = app_dir / "priv"
    if priv.is_dir():
        shutil.copytree(priv, app.directory / "priv", dirs_exist_ok=True)
    log.info("compiled %s %s: %d modules", app.name, app.version, len(app.modules))
    return app


def compile_failure(err: ToolFailed) -> str:
    """Pick the first compiler diagnostic (``file:line: message``) out of a failed compile's output."""
    for line in (err.stdout + "\n" + err.stderr).splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m and not m.group("msg").startswith("Warning:"):
            return f"{m.group('loc')}: {m.group('msg')}"
    return err.message


def parse_summary(text: str, out_dir: Path) -> CompiledApp:
    """The app ``build_app.escript`` compiled into ``out_dir``, from the summary it printed."""
    facts: dict[str, list[str]] = {}
    nifs: list[str] = []
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "nif":
            nifs.append(rest.strip())
        elif key in ("app", "applications", "modules", "otp"):
            facts[key] = rest.split()
    name, version = facts["app"]
    return CompiledApp(
        name=name,
        version=version,
        directory=out_dir / f"{name}-{version}",
        modules=tuple(facts.get("modules", [])),
        applications=tuple(facts.get("applications", [])),
        nif_modules=tuple(nifs),
        otp_release=facts.get("otp", ["?"])[0],
    )


def _relative_to(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:
        return path.resolve()


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))
