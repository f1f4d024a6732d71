"""The ``ling`` target: a LING unikernel (Erlang on Xen) made by LING's ``railing``.

LING needs a toolchain the user provides: Erlang/OTP 17 (railing translates OTP 17 beams into LING's
code format and embeds OTP 17's kernel and stdlib; later releases' beams use instructions LING's
translator rejects) and LING's ``railing`` escript, on this machine or on a build host reached over
SSH (``pipeline/remote.py``). The pipeline never builds LING itself.

A build:
1. probes the toolchain (``erl`` release, ``railing -v``, ``ld``) and refuses anything but OTP 17
   and a Xen railing, and, when the image mounts its scratch volume, a LING core without the disk
   driver (``vmling.py``);
2. compiles the app and its dependencies with that OTP (``pipeline/erl/build_app.escript``, run
   on the build host), removes what OTP 17 stamps into each beam (``beamfile.py``) and stages them
   as railing expects (``ling_project.py``: ``ebin/`` and ``priv/`` of the app, ``lib/NAME/ebin``
   of the others, ``-l`` for OTP's applications);
3. adds the baked sys.config to ``priv/``, renders the boot line (``templates/ling.bootline.j2``; at most 1023
   characters, Xen's limit) and runs ``railing image -n NAME -m MB -e EXTRA -i priv -l LIB...``;
4. verifies the image (``elfcheck.py``) and railing's domain_config against the boot line;
5. writes the PV disk EC2 boots through PV-GRUB (``disk.pv_disk``, shared with the beam target).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import blocks, render, ui
from pipeline.config import LingSettings, Settings
from pipeline.erlang import Artifact
from pipeline.errors import ImageError, ToolFailed, ToolMissing
from pipeline.images import BuildContext, devices, disk, elfcheck, ling_project, vmling
from pipeline.manifest import sha256_file, write_atomic
from pipeline.remote import Host, open_host, workdir

if TYPE_CHECKING:
    from pipeline.release import Source

log = logging.getLogger(__name__)

OTP_RELEASE = "17"
XEN_CMDLINE_MAX = 1023  # Xen's guest command line buffer is 1024 bytes with the terminating NUL
ALWAYS_EMBEDDED = ("kernel", "stdlib")  # railing embeds these whatever -l says
WHY_OTP17 = (
    "LING runs only OTP 17 code: railing translates OTP 17 beams into LING's code and embeds "
    "OTP 17's kernel and stdlib"
)
OTP_HINT = "set ling.otp_bin to the bin directory of an Erlang/OTP 17 installation (on the build host)"
# What a ling image depends on besides the build's inputs (see beamfile.py), for the manifest.
REPRODUCIBLE = (
    "byte-identical for the same sources, settings and toolchain installation: the compile time and "
    "source path OTP 17 stamps into the app's beams are removed; OTP 17's own libraries and start.boot "
    "are embedded as installed on the build host"
)
RAILING_HINT = "install LING's railing escript where the toolchain runs and set ling.railing to its path"

# Prints "<otp_release> <erts version> <full OTP version or ->"; runs on every release from 17 on.
_PROBE = (
    'io:format("~s ~s ~s~n", [erlang:system_info(otp_release), erlang:system_info(version), '
    'case file:read_file(filename:join([code:root_dir(), "releases", '
    'erlang:system_info(otp_release), "OTP_VERSION"])) of '
    '{ok, V} -> string:strip(binary_to_list(V), right, $\\n); _ -> "-" end]), halt().'
)
_RAILING_VERSION = re.compile(r"LING v(?P<version>\S+) \(railing build for (?P<arch>\w+)\)")


@dataclass(frozen=True)
class LingToolchain:
    """A probed LING toolchain: OTP 17 and railing, where they run and which versions they are."""

    where: str  # "local" or "ssh://user@host:port"
    otp_bin: str
    railing: str
    otp_release: str
    otp_version: str
    erts_version: str
    railing_version: str
    binutils: str

    def versions(self) -> dict[str, str]:
        return {
            "otp": self.otp_version,
            "otp_release": self.otp_release,
            "erts": self.erts_version,
            "railing": self.railing_version,
            "binutils": self.binutils,
        }

    def tool(self, name: str) -> str:
        return f"{self.otp_bin.rstrip('/')}/{name}" if self.otp_bin else name


def probe(host: Host, s: LingSettings, disk: bool = False) -> LingToolchain:
    """Find out what the toolchain on ``host`` is; refuse one that cannot make LING images, or (with
    ``disk``: the image mounts its scratch volume) whose LING core has no disk driver."""
    where = f"ling toolchain ({host.label})"
    erl = f"{s.otp_bin.rstrip('/')}/erl" if s.otp_bin else "erl"
    try:
        out = host.run([erl, "-noshell", "-eval", _PROBE], path=s.otp_bin, what="erl", quiet=True)
    except ToolMissing as err:
        raise ToolMissing(f"{where}: {erl} not found; {WHY_OTP17}", hint=OTP_HINT) from err
    except ToolFailed as err:
        raise ToolFailed(f"{where}: {erl} does not run: {err.message}", hint=OTP_HINT) from err
    fields = (out.strip().splitlines() or [""])[-1].split()
    if len(fields) != 3:
        raise ToolFailed(f"{where}: unexpected answer from {erl}: {out.strip()!r}", hint=OTP_HINT)
    release, erts, version = fields
    if release != OTP_RELEASE:
        raise ToolMissing(
            f"{where}: {erl} is Erlang/OTP {release}, but the ling target needs OTP {OTP_RELEASE}: "
            + WHY_OTP17,
            hint=OTP_HINT,
        )
    try:
        answer = host.run([s.railing, "-v"], path=s.otp_bin, what="railing", quiet=True)
    except ToolMissing as err:
        raise ToolMissing(
            f'{where}: railing not found (ling.railing = "{s.railing}")', hint=RAILING_HINT
        ) from err
    except ToolFailed as err:
        raise ToolFailed(f"{where}: {s.railing} -v failed: {err.message}", hint=RAILING_HINT) from err
    m = _RAILING_VERSION.search(answer)
    if m is None:
        raise ToolFailed(
            f"{where}: {s.railing} -v did not answer like LING's railing: {answer.strip()[:120]!r}",
            hint=RAILING_HINT,
        )
    if m["arch"] != "xen":
        raise ToolMissing(
            f"{where}: {s.railing} is a railing for {m['arch']}, which makes host executables, "
            "not Xen images",
            hint="use a railing built for Xen (LING's default ARCH=xen)",
        )
    if disk:
        vmling.check_railing(host, s.railing, s.otp_bin, where, hint=RAILING_HINT)
    try:
        ld = host.run(["ld", "--version"], path=s.otp_bin, what="ld", quiet=True).strip().splitlines()[0]
    except ToolMissing as err:
        raise ToolMissing(
            f"{where}: ld (GNU binutils) not found; railing links the image with it",
            hint="install binutils on the build host",
        ) from err
    return LingToolchain(
        where=host.label,
        otp_bin=s.otp_bin,
        railing=s.railing,
        otp_release=release,
        otp_version=version if version != "-" else release,
        erts_version=erts,
        railing_version=m["version"],
        binutils=ld,
    )


class LingTarget:
    name = "ling"

    def __init__(self) -> None:
        self._probed: dict[tuple[LingSettings, bool], LingToolchain] = {}

    def toolchain(self, settings: Settings) -> LingToolchain:
        """The probed toolchain for ``settings`` (probed once per target object)."""
        s = settings.ling
        key = (s, devices.ling_goofs(settings.app.storage))
        if key not in self._probed:
            with open_host(s, _local_base(settings)) as host:
                self._probed[key] = probe(host, _local_paths(settings), disk=key[1])
            tc = self._probed[key]
            ui.say(
                f"ling toolchain ({tc.where}): Erlang/OTP {tc.otp_version} (erts {tc.erts_version}), "
                f"railing {tc.railing_version}, {tc.binutils}"
            )
        return self._probed[key]

    def tool_versions(self, settings: Settings) -> dict[str, str]:
        return self.toolchain(settings).versions()

    def input_files(self, settings: Settings) -> dict[str, str]:
        return {}

    def compile(self, settings: Settings, source: Source, work: Path) -> Artifact:
        """Compile the app and its dependencies with the toolchain's OTP 17 and stage them for
        railing (``ling_project.py``)."""
        tc = self.toolchain(settings)
        return ling_project.compile_project(settings, source, tc, work, _local_base(settings, create=True))

    def build_image(self, ctx: BuildContext) -> dict[str, Any]:
        s = ctx.settings
        tc = self.toolchain(s)
        app = ctx.app
        modules = tuple(app.details["modules"])
        project = app.name
        out = ctx.out / "ling"
        image = out / f"{project}.img"
        domain_config = out / "domain_config"
        sys_config = (ctx.config_dir / "sys.config").read_bytes()
        libs = list(app.details["libs"])
        with tempfile.TemporaryDirectory(dir=_local_base(s, create=True), prefix="ling-stage.") as tmp:
            stage = Path(tmp) / project
            shutil.copytree(app.directory, stage)
            write_atomic(stage / "priv" / "sys.config", sys_config)
            context = {**ctx.template_context, "ling": boot_context(s, app.main_app, modules, project, stage)}
            extra = _one_line(
                render.render(s.assets_dir / "templates", "ling.bootline.j2", _part(context, "extra"))
            )
            line = _one_line(
                render.render(s.assets_dir / "templates", "ling.bootline.j2", _part(context, "line"))
            )
            check_boot_line(line)
            args = ["image", "-n", project, "-m", str(s.image.memory_mb), "-e", extra, "-i", "priv"]
            for lib in libs:
                args += ["-l", lib]
            with open_host(s.ling, _local_base(s)) as host, workdir(host, f"ling-{ctx.build_id}") as wd:
                there = f"{wd}/{project}"
                host.upload(stage, there)
                try:
                    host.run([tc.railing, *args], cwd=there, path=tc.otp_bin, what="railing")
                except ToolFailed as err:
                    raise ImageError(f"railing image failed: {err.message}", hint=err.hint) from err
                host.download(f"{there}/{project}.img", image)
                host.download(f"{there}/domain_config", domain_config)
                if context["ling"]["goofs"]:
                    # the core railing linked, as it unpacked it (also when railing is a wrapper)
                    host.download(f"{there}/.railing/{vmling.CORE}", out / vmling.CORE)
        if context["ling"]["goofs"]:
            core = (out / vmling.CORE).read_bytes()
            vmling.require_disk_driver(core, tc.railing, f"ling toolchain ({tc.where})", hint=RAILING_HINT)
            (out / vmling.CORE).unlink()
        expected = elfcheck.Expected(
            project=project,
            app=app.main_app,
            modules=modules,
            app_file=(app.directory / "ebin" / f"{app.main_app}.app").read_bytes(),
            sys_config=sys_config,
            libs=(*ALWAYS_EMBEDDED, *libs),
        )
        verified = elfcheck.verify(image, expected)
        check_domain_config(domain_config, project, s.image.memory_mb, line)
        kernel_path = f"/boot/{image.name}"
        menu_lst = render.render(
            s.assets_dir / "templates",
            "ling.menu.lst.j2",
            {**context, "ling": {**context["ling"], "kernel_path": kernel_path, "boot_line": line}},
        )
        pv = disk.pv_disk(ctx.out / "disks" / "pv.img", {kernel_path: image}, menu_lst)
        record = blocks.describe(ctx.out, pv, "pv", "pv", "pv-grub")
        return {
            "kind": "ling",
            "file": image.relative_to(ctx.out).as_posix(),
            "size": image.stat().st_size,
            "sha256": sha256_file(image),
            "boot_line": line,
            "railing_args": args,
            "domain_config": domain_config.relative_to(ctx.out).as_posix(),
            "xen_guest": verified.xen_guest,
            "toolchain": tc.versions(),
            "reproducible": REPRODUCIBLE,
            "embedded": verified.listing(),
            "disks": [record],
        }


# -- steps (pure or local-only) ---------------------------------------------------------------------


def boot_context(
    settings: Settings, app: str, modules: tuple[str, ...], project: str, stage: Path
) -> dict[str, Any]:
    """What ``templates/ling.bootline.j2`` needs, mirroring where railing mounts the staged files."""
    # railing mounts every directory holding a packed file at /<project>/<dir> and puts all of them
    # on -pz: the **/ebin/*.{app,beam} files plus everything under -i priv.
    packed = [p for p in stage.rglob("*") if p.parent.name == "ebin" and p.suffix in (".app", ".beam")]
    packed += [p for p in (stage / "priv").rglob("*") if p.is_file()]
    dirs = sorted({p.parent.relative_to(stage).as_posix() for p in packed})
    return {
        "project": project,
        "code_path": [f"/{project}/{d}" for d in dirs],
        "config_path": f"/{project}/priv/sys.config",
        "goofs": devices.ling_goofs(settings.app.storage),
        "start_module": start_module(app, modules),
    }


def start_module(app: str, modules: tuple[str, ...]) -> str:
    """The module whose ``start/0`` starts the app (``-s``): ``<app>`` if it exists, else ``<app>_app``."""
    for name in (app, f"{app}_app"):
        if name in modules:
            return name
    raise ImageError(
        f"{app}: neither module {app} nor {app}_app exists, so the boot line has no -s module",
        hint=f"add a start/0 that calls application:ensure_all_started({app}) to {app}_app",
    )


def check_boot_line(line: str) -> None:
    size = len(line.encode())
    if size > XEN_CMDLINE_MAX:
        raise ImageError(
            f"templates/ling.bootline.j2: the LING boot line is {size} characters, over Xen's limit of "
            f"{XEN_CMDLINE_MAX} (1024 with the final NUL): {line[:60]}...",
            hint="shorten app.name, app.scratch_dir or the priv/ directory names that end up on -pz",
        )


def check_domain_config(path: Path, project: str, memory_mb: int, boot_line: str) -> None:
    """railing's domain_config must boot the same image with the same flags as menu.lst does."""
    values: dict[str, str] = {}
    for raw in path.read_text(errors="replace").splitlines():
        key, sep, value = raw.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    want = {"name": project, "kernel": f"{project}.img", "memory": str(memory_mb)}
    for key, value in want.items():
        if values.get(key) != value:
            raise ImageError(
                f"domain_config: {key} = {values.get(key, '(missing)')!r}, expected {value!r}",
                hint=elfcheck.VERIFY_HINT,
            )
    if _flags(values.get("extra", "")) != _flags(boot_line):
        raise ImageError(
            f"domain_config: railing boots with extra = {values.get('extra', '')!r}, "
            f"which differs from the boot line {boot_line!r}",
            hint="this railing composes the command line differently; " + elfcheck.VERIFY_HINT,
        )


def _flags(line: str) -> dict[str, list[tuple[str, ...]]]:
    """``-flag values...`` groups of a command line, order-insensitive."""
    groups: dict[str, list[tuple[str, ...]]] = {}
    flag, values = "", list[str]()
    for token in [*line.split(), "-"]:
        if token.startswith("-"):
            if flag:
                groups.setdefault(flag, []).append(tuple(values))
            flag, values = token, []
        else:
            values.append(token)
    return {k: sorted(v) for k, v in groups.items()}


def _part(context: dict[str, Any], part: str) -> dict[str, Any]:
    return {**context, "ling": {**context["ling"], "part": part}}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _local_paths(settings: Settings) -> LingSettings:
    """For a local toolchain, relative ``otp_bin``/``railing`` paths are relative to the project root
    (railing runs in a staging directory, where they would not resolve); ``~`` is expanded."""
    s = settings.ling
    if s.toolchain != "local":
        return s

    def fix(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else settings.root / path)

    return dataclasses.replace(
        s,
        otp_bin=fix(s.otp_bin) if s.otp_bin else "",  # "" = erl from PATH
        railing=fix(s.railing) if "/" in s.railing else s.railing,  # a bare name is found on PATH
    )


def _local_base(settings: Settings, create: bool = False) -> Path:
    base = settings.work_dir / "tmp"
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return base
