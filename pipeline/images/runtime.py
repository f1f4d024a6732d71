"""The trimmed Erlang runtime of the beam image, made from the app's OTP release.

The image boots the release's own boot script, so which applications start, in which order and at
which versions is the release's. What goes into the image under :data:`ROOT`:

- erts: the programs the recipe names (``erlexec``, ``beam.smp``, ...) and nothing else of it (no
  compilers, shells or tools). They come from the release's own ``erts-VSN`` when it ships one (a
  release built with ``include_erts``: it runs on the erts it was made with), else from this
  machine's Erlang/OTP, which must then be the erts the release names (``{erts, VSN}`` in its
  ``.rel``): a release for another erts is refused, naming both versions;
- every application of the release's ``.rel``: its ``ebin``, ``priv`` and any other directory the
  boot script puts on the code path (Elixir's ``consolidated``), from the release's ``lib/``, or, for
  an application a release made without the system libraries does not hold, from this machine's
  OTP at exactly the version the ``.rel`` names; every beam stripped to the chunks the loader needs;
- the shared libraries those programs, NIFs and port programs load, as ``ldd`` resolves them here;
- ``releases/VSN/`` with the boot script (as ``start.boot``) and the ``.rel``, ``start_erl.data`` and
  ``RELEASES`` written for the image's paths, and whatever else the release holds at its top
  (relx overlays such as ``etc/``), but not its start scripts (``bin/``): the image's init runs the
  VM itself. The baked ``sys.config`` and ``vm.args`` go into ``releases/VSN/`` too, from the
  caller, in an archive of their own (:func:`release_dir`): they change with the configuration.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.erlang import Toolchain
from pipeline.errors import ImageError, ToolFailed
from pipeline.images.initramfs import Tree
from pipeline.proc import run

RUNTIME_SCRIPT = Path(__file__).parent.parent / "erl" / "runtime.escript"
ROOT = "/opt/erlang"  # ROOTDIR inside the image
CONFIG_FILES = ("sys.config", "vm.args")
SKIPPED_SUFFIXES = (".script", ".src", ".eex", ".sh", ".bat", ".ps1")


@dataclass(frozen=True)
class Runtime:
    root: str  # ROOTDIR inside the image
    erts_version: str
    own_erts: bool  # the release's own erts (True) or this machine's (False)
    release_name: str
    release_version: str
    applications: dict[str, str]  # name -> version, in start order
    libraries: tuple[str, ...]  # shared libraries, as image paths
    size: int  # bytes of the trimmed runtime (erts, libraries, applications, boot files)


@dataclass(frozen=True)
class ReleaseFacts:
    """What a release directory holds (``runtime.escript inspect``)."""

    name: str
    version: str
    erts: str  # the erts version its .rel names
    applications: tuple[tuple[str, str], ...]  # (name, version) in start order
    boot: Path  # its boot script
    code_paths: tuple[str, ...]  # the directories the boot script puts on the code path
    shipped_erts: tuple[str, ...]  # versions of the erts-VSN directories it ships


def inspect(toolchain: Toolchain, directory: Path, name: str, version: str) -> ReleaseFacts:
    """Read the release ``name``-``version`` in ``directory``; :class:`ImageError` if it cannot boot."""
    try:
        out = run(
            [toolchain.escript, RUNTIME_SCRIPT, "inspect", directory, name, version],
            what="runtime.escript inspect",
        ).stdout.decode()
    except ToolFailed as err:
        raise ImageError(
            f"release {name} {version}: {_error_line(err.stdout) or err.message}",
            hint="give a release made by rebar3 release or mix release (releases/VSN/ with the .rel "
            "and the boot script)",
        ) from err
    facts: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        facts.setdefault(key, []).append(rest.split(" "))
    ((rel_name, rel_vsn, erts),) = facts["release"]
    return ReleaseFacts(
        name=rel_name,
        version=rel_vsn,
        erts=erts,
        applications=tuple((a, v) for a, v in facts.get("app", [])),
        boot=Path(facts["boot"][0][0]),
        code_paths=tuple(p[0] for p in facts.get("path", [])),
        shipped_erts=tuple(e[0] for e in facts.get("erts", [])),
    )


def assemble(
    tree: Tree,
    toolchain: Toolchain,
    release: Path,
    name: str,
    version: str,
    programs: tuple[str, ...],
    work: Path,
) -> Runtime:
    """Put the trimmed runtime of the release in ``release`` into ``tree`` (under :data:`ROOT`).

    ``work`` is a scratch directory. Raises :class:`ImageError` for a release the image cannot boot.
    """
    facts = inspect(toolchain, release, name, version)
    stage = work / "runtime"
    shutil.rmtree(stage, ignore_errors=True)
    erts_dir, own = _erts(toolchain, release, facts)
    erts_bin = stage / f"erts-{facts.erts}" / "bin"
    erts_bin.mkdir(parents=True)
    for prog in programs:
        src = erts_dir / "bin" / prog
        if not src.is_file():
            where = f"the release's erts-{facts.erts}" if own else str(src.parent)
            raise ImageError(f"ami/beam.toml: otp.programs: {prog} is not in {where}")
        shutil.copy2(src, erts_bin / prog)
    extra_dirs = _extra_code_dirs(facts.code_paths)
    for app, vsn in facts.applications:
        source = _app_dir(toolchain, release, facts, app, vsn, own)
        dest = stage / "lib" / f"{app}-{vsn}"
        for part in sorted({"ebin", "priv", *extra_dirs.get(f"{app}-{vsn}", set())}):
            if (source / part).is_dir():
                shutil.copytree(source / part, dest / part, symlinks=False)
    _release_files(release, facts, stage)
    run(
        [toolchain.escript, RUNTIME_SCRIPT, "finish", stage, facts.name, facts.version, facts.erts],
        what="runtime.escript finish",
    )
    libraries = shared_libraries([p for p in stage.rglob("*") if p.is_file() and _is_elf(p)])
    tree.add_tree(ROOT, stage)
    for image_path, host_path in libraries.items():
        tree.add_file(image_path, host_path)
    size = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    size += sum(p.stat().st_size for p in libraries.values())
    return Runtime(
        root=ROOT,
        erts_version=facts.erts,
        own_erts=own,
        release_name=facts.name,
        release_version=facts.version,
        applications=dict(facts.applications),
        libraries=tuple(sorted(libraries)),
        size=size,
    )


def _erts(toolchain: Toolchain, release: Path, facts: ReleaseFacts) -> tuple[Path, bool]:
    """Which erts the image runs the release on: its own (shipped) or this machine's (same version)."""
    if facts.erts in facts.shipped_erts:
        return release / f"erts-{facts.erts}", True
    if facts.shipped_erts:
        raise ImageError(
            f"release {facts.name} {facts.version} names erts {facts.erts} but ships erts "
            f"{', '.join(facts.shipped_erts)}",
            hint="rebuild the release",
        )
    if facts.erts != toolchain.erts_version:
        raise ImageError(
            f"release {facts.name} {facts.version} was made for erts {facts.erts}, but the image's runtime "
            f"is erts {toolchain.erts_version} (Erlang/OTP {toolchain.otp_version} on this machine)",
            hint="build the release with this machine's Erlang/OTP, or with its own erts "
            "(relx include_erts, mix's default) so the image runs it on that",
        )
    return toolchain.root / f"erts-{toolchain.erts_version}", False


def _app_dir(toolchain: Toolchain, release: Path, facts: ReleaseFacts, app: str, vsn: str, own: bool) -> Path:
    """Where application ``app``-``vsn`` of the release is: its lib/, else this machine's OTP."""
    inside = release / "lib" / f"{app}-{vsn}"
    if inside.is_dir():
        return inside
    host = toolchain.root / "lib" / f"{app}-{vsn}"
    if host.is_dir() and not own:
        return host
    others = sorted(p.name.removeprefix(f"{app}-") for p in toolchain.root.glob(f"lib/{app}-*"))
    if others and not own:
        raise ImageError(
            f"release {facts.name} {facts.version} needs {app} {vsn}, which is not in its lib/, and the "
            f"image's runtime (Erlang/OTP {toolchain.otp_version}) has {app} {', '.join(others)}",
            hint="build the release with the system libraries included (relx's default) or with this OTP",
        )
    raise ImageError(
        f"release {facts.name} {facts.version} needs {app} {vsn}, which is not in its lib/",
        hint="build the release with the system libraries included (relx's default)",
    )


def _extra_code_dirs(paths: tuple[str, ...]) -> dict[str, set[str]]:
    """``{"app-vsn": {subdir}}`` for the boot script's code paths other than ``ebin``
    (``$RELEASE_LIB/x-1/consolidated``)."""
    out: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        if len(parts) >= 3 and parts[0].startswith("$") and parts[-1] != "ebin":
            lib_index = 2 if parts[0] == "$ROOT" and parts[1] == "lib" else 1
            if len(parts) > lib_index + 1:
                out.setdefault(parts[lib_index], set()).add("/".join(parts[lib_index + 1 :]))
    return out


def _release_files(release: Path, facts: ReleaseFacts, stage: Path) -> None:
    """``releases/`` (boot script as start.boot, .rel, the rest it holds) and the release's top-level
    files (overlays), without its start scripts, its erts and its configuration."""
    for entry in sorted(release.iterdir()):
        if entry.name in ("bin", "lib", "releases") or entry.name.startswith("erts-"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, stage / entry.name, symlinks=False)
        elif entry.is_file():
            shutil.copy2(entry, stage / entry.name)
    rel = stage / "releases" / facts.version
    rel.mkdir(parents=True)
    source = release / "releases" / facts.version
    for f in sorted(source.iterdir()):
        # sys.config and vm.args are the configuration (the caller bakes them); the start scripts'
        # helpers and templates (env.sh, *.src, *.eex, the .script text) are not used by the image.
        # Directories are code (Elixir's consolidated protocols are on the boot script's path).
        if f.is_dir():
            shutil.copytree(f, rel / f.name, symlinks=False)
        elif f.is_file() and f.name not in CONFIG_FILES and not f.name.endswith(SKIPPED_SUFFIXES):
            shutil.copy2(f, rel / f.name)
    shutil.copy2(facts.boot, rel / "start.boot")
    for f in sorted((release / "releases").iterdir()):
        if f.is_file() and f.name not in ("RELEASES", "start_erl.data"):
            shutil.copy2(f, stage / "releases" / f.name)  # mix's COOKIE, for example


def _error_line(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("error "):
            return line.removeprefix("error ")
    return ""


def release_dir(rt: Runtime) -> str:
    """Where the boot script, ``sys.config`` and ``vm.args`` are in the image."""
    return f"{rt.root}/releases/{rt.release_version}"


def shared_libraries(binaries: list[Path]) -> dict[str, Path]:
    """``{path the dynamic loader opens: real host file}`` for everything ``binaries`` load."""
    found: dict[str, Path] = {}
    for binary in sorted(binaries):
        text = run(["ldd", binary], what="ldd").stdout.decode()
        for line in text.splitlines():
            words = line.split()
            if "=>" in words:
                target = words[words.index("=>") + 1]
                if target == "not":  # "libfoo.so => not found"
                    raise ImageError(f"{binary.name}: needs {words[0]}, which is not installed on this host")
            elif words and words[0].startswith("/"):
                target = words[0]  # the dynamic loader itself
            else:
                continue  # linux-vdso.so.1
            if target.startswith("/"):
                found[target] = Path(target).resolve()
    return found


def untrimmed_size(toolchain: Toolchain) -> int:
    """Bytes of the full installation the runtime is cut from (all of erts and every application)."""
    return sum(p.stat().st_size for p in toolchain.root.rglob("*") if p.is_file() and not p.is_symlink())


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"
