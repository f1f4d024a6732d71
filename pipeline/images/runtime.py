"""The trimmed Erlang runtime of the beam image.

Only what the app runs with goes in:
- erts: the programs the recipe names (``erlexec``, ``beam.smp``, ...), not the compilers, shells
  and tools of a full installation;
- the shared libraries those programs (and the NIFs and port programs of the shipped applications)
  load, as ``ldd`` resolves them on the build host, which is where the erts comes from;
- the OTP applications the app's ``.app`` file names, followed through each application's own
  ``.app`` file, plus the recipe's ``otp.applications`` and the setting ``image.extra_apps``: their
  ``ebin`` and ``priv`` only (no docs, sources or include files), every beam stripped to the chunks
  the loader needs (``beam_lib:strip_release``);
- a boot script for those applications (``systools:make_script``). The baked ``sys.config`` and
  ``vm.args`` go into ``releases/<version>/`` too, but from the caller, in an archive of their own
  (:func:`release_dir`): they change with the configuration, the runtime does not.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.erlang import CompiledApp, Toolchain
from pipeline.errors import ConfigError, ImageError, ToolFailed
from pipeline.images.initramfs import Tree
from pipeline.proc import run

RUNTIME_SCRIPT = Path(__file__).parent.parent / "erl" / "runtime.escript"
ROOT = "/opt/erlang"  # ROOTDIR inside the image


@dataclass(frozen=True)
class Runtime:
    root: str  # ROOTDIR inside the image
    erts_version: str
    release_version: str
    applications: dict[str, str]  # name -> version, in start order
    libraries: tuple[str, ...]  # shared libraries, as image paths
    size: int  # bytes of the trimmed runtime (erts, libraries, applications, boot files)


def closure(toolchain: Toolchain, app: CompiledApp, wanted: dict[str, str]) -> dict[str, tuple[str, Path]]:
    """``{name: (version, lib dir)}`` of the app, ``wanted`` and every application they need, in start order.

    ``wanted`` maps extra application names to where they were asked for (for the error message).
    """
    names = [app.name, *wanted]
    try:
        out = run([toolchain.escript, RUNTIME_SCRIPT, "closure", app.ebin, *names], what="runtime.escript")
    except ToolFailed as err:
        for line in err.stdout.splitlines():
            words = line.split()
            if words[:1] == ["missing"]:
                missing, needed_by = words[1], words[2]
                where = wanted.get(missing) if needed_by == "cli" else f"the .app file of {needed_by}"
                raise ConfigError(
                    f"{where}: OTP application {missing} is not installed in {toolchain.root}",
                    hint=f"install the Debian package erlang-{missing.replace('_', '-')} "
                    "or remove the name from the list",
                ) from err
        raise
    found: dict[str, tuple[str, Path]] = {}
    for line in out.stdout.decode().splitlines():
        tag, name, vsn, directory = line.split(" ", 3)
        if tag == "app":
            found[name] = (vsn, Path(directory))
    # kernel and stdlib first, as every boot script starts them; then dependencies before dependants.
    order = ["kernel", "stdlib", *[n for n in reversed(found) if n not in ("kernel", "stdlib")]]
    return {n: found[n] for n in order if n in found}


def assemble(
    tree: Tree,
    toolchain: Toolchain,
    app: CompiledApp,
    wanted: dict[str, str],
    programs: tuple[str, ...],
    work: Path,
) -> Runtime:
    """Put the trimmed runtime into ``tree`` (under :data:`ROOT`); ``work`` is a scratch directory."""
    apps = closure(toolchain, app, wanted)
    stage = work / "runtime"
    shutil.rmtree(stage, ignore_errors=True)
    erts_bin = stage / f"erts-{toolchain.erts_version}" / "bin"
    erts_bin.mkdir(parents=True)
    for prog in programs:
        src = toolchain.root / f"erts-{toolchain.erts_version}" / "bin" / prog
        if not src.is_file():
            raise ConfigError(f"ami/beam.toml: otp.programs: {prog} is not in {src.parent}")
        shutil.copy2(src, erts_bin / prog)
    versions: dict[str, str] = {}
    for name, (vsn, directory) in apps.items():
        versions[name] = vsn
        dest = stage / "lib" / f"{name}-{vsn}"
        for part in ("ebin", "priv"):
            if (directory / part).is_dir():
                shutil.copytree(directory / part, dest / part, symlinks=False)
    release_version = app.version
    run(
        [toolchain.escript, RUNTIME_SCRIPT, "release", stage, release_version, *apps],
        what="runtime.escript release",
    )
    libraries = shared_libraries([p for p in stage.rglob("*") if p.is_file() and _is_elf(p)])
    tree.add_tree(ROOT, stage)
    for image_path, host_path in libraries.items():
        tree.add_file(image_path, host_path)
    size = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    size += sum(p.stat().st_size for p in libraries.values())
    return Runtime(
        root=ROOT,
        erts_version=toolchain.erts_version,
        release_version=release_version,
        applications=versions,
        libraries=tuple(sorted(libraries)),
        size=size,
    )


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
