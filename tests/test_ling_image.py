"""LING image verification (ELF, __xen_guest, embedded file system), the boot line and the device
mapping, on images made by the railing stand-in from a real compiled app."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline import erlang, render
from pipeline.errors import ImageError
from pipeline.images import elfcheck, ling, ling_project
from tests.railing_standin import make_toolchain, standin_railing
from tests.railing_standin.projects import REPO, tiny_app

SYS_CONFIG = b'[{tinyapp, [{greeting, <<"hi">>}]}].\n'


@dataclass(frozen=True)
class Made:
    app: erlang.CompiledApp
    stage: Path
    image: Path
    expected: elfcheck.Expected


def railing(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(standin_railing()), "image", "-n", "tinyapp", "-i", "priv", *args],
        cwd=stage,
        capture_output=True,
        text=True,
        check=True,
    )


def make(tmp: Path, app: erlang.CompiledApp, change: str = "") -> Made:
    """Stage the app as the pipeline does, optionally break the stage, run the stand-in railing."""
    stage = tmp / "tinyapp"
    ling_project.stage_main(app, stage)
    (stage / "priv" / "sys.config").write_bytes(SYS_CONFIG)
    if change == "drop-module":
        (stage / "ebin" / "tinyapp_util.beam").unlink()
    elif change == "alter-config":
        (stage / "priv" / "sys.config").write_bytes(SYS_CONFIG.replace(b"hi", b"ho"))
    elif change == "shadow-config":
        (stage / "priv" / "zz").mkdir()
        (stage / "priv" / "zz" / "sys.config").write_bytes(b"[].\n")
    railing(stage, "-m", "64", "-e", "-dhcp")
    expected = elfcheck.Expected(
        project="tinyapp",
        app="tinyapp",
        modules=app.modules,
        app_file=(app.ebin / "tinyapp.app").read_bytes(),
        sys_config=SYS_CONFIG,
        libs=("kernel", "stdlib"),
    )
    return Made(app, stage, stage / "tinyapp.img", expected)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> erlang.CompiledApp:
    root = tmp_path_factory.mktemp("app")
    tiny_app(root / "tinyapp")
    return erlang.compile_app(root / "tinyapp", root / "out", otp17(root))


def otp17(root: Path) -> erlang.Toolchain:
    """The stand-in OTP 17 (tests/railing_standin/fake_otp.py): the beams railing accepts."""
    return erlang.Toolchain(make_toolchain(root / "otp17").parent, "17", "17.5", "6.4")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, compiled: erlang.CompiledApp) -> Made:
    return make(tmp_path_factory.mktemp("good"), compiled)


def copy(made: Made, tmp_path: Path) -> Path:
    out = tmp_path / made.image.name
    shutil.copy2(made.image, out)
    return out


# -- a good image --------------------------------------------------------------------------------


def test_a_good_image_passes_and_lists_every_embedded_file(good: Made) -> None:
    image = elfcheck.verify(good.image, good.expected)
    assert image.guest["GUEST_OS"] == "Ling" and image.guest["XEN_VER"] == "xen-3.0"
    assert image.mounts["top"] == "/tinyapp/ebin" and image.mounts["priv"] == "/tinyapp/priv"
    listing = {(e["mount"], e["name"]): e for e in image.listing()}
    config = listing[("/tinyapp/priv", "sys.config")]
    assert config["sha256"] == hashlib.sha256(SYS_CONFIG).hexdigest()
    assert config["size"] == len(SYS_CONFIG)
    app_file = listing[("/tinyapp/ebin", "tinyapp.app")]
    assert app_file["sha256"] == hashlib.sha256(good.expected.app_file).hexdigest()
    for module in good.app.modules:
        assert ("/tinyapp/ebin", f"{module}.ling") in listing
    assert ("/boot", "start.boot") in listing and ("/boot", "local.map") in listing
    assert any(m.startswith("/erlang/lib/kernel-") for m, _ in listing)
    # every file is accounted for: the listing is the whole embedded file system
    assert len(image.listing()) == len(image.files)


def test_embedded_modules_are_ling_code_naming_their_module(good: Made) -> None:
    image = elfcheck.read(good.image)
    for module in good.app.modules:
        found = image.winner(f"{module}.ling")
        assert found is not None
        atoms = elfcheck.ling_module_atoms(found.data)
        assert atoms is not None and module in atoms
    beam = (good.app.ebin / "tinyapp_app.beam").read_bytes()
    assert elfcheck.ling_module_atoms(beam) is None  # a beam is not LING code


# -- corrupted images, each refused with the reason ------------------------------------------------


def test_wrong_section_name_is_refused(good: Made, tmp_path: Path) -> None:
    img = copy(good, tmp_path)
    subprocess.run(["objcopy", "--rename-section", "__xen_guest=__xen_other", str(img)], check=True)
    with pytest.raises(ImageError, match=r"no __xen_guest section, so Xen would not load it") as err:
        elfcheck.verify(img, good.expected)
    assert "__xen_other" in str(err.value) and "\n" not in str(err.value)


def test_wrong_guest_os_is_refused(good: Made, tmp_path: Path) -> None:
    img = copy(good, tmp_path)
    section = tmp_path / "guest"
    section.write_bytes(b"GUEST_OS=linux,XEN_VER=xen-3.0,LOADER=generic\0")
    subprocess.run(["objcopy", "--update-section", f"__xen_guest={section}", str(img)], check=True)
    with pytest.raises(ImageError, match=r"__xen_guest section says GUEST_OS=linux, expected GUEST_OS=Ling"):
        elfcheck.verify(img, good.expected)


def test_old_xen_version_is_refused(good: Made, tmp_path: Path) -> None:
    img = copy(good, tmp_path)
    section = tmp_path / "guest"
    section.write_bytes(b"GUEST_OS=Ling,XEN_VER=xen-2.0,LOADER=generic\0")
    subprocess.run(["objcopy", "--update-section", f"__xen_guest={section}", str(img)], check=True)
    with pytest.raises(ImageError, match=r"only images built for Xen 3.0, and this one has XEN_VER=xen-2.0"):
        elfcheck.verify(img, good.expected)


def test_missing_module_is_refused(compiled: erlang.CompiledApp, tmp_path: Path) -> None:
    made = make(tmp_path, compiled, "drop-module")
    with pytest.raises(ImageError, match=r"app module tinyapp_util missing from /tinyapp/ebin"):
        elfcheck.verify(made.image, made.expected)


def test_altered_sys_config_is_refused(compiled: erlang.CompiledApp, tmp_path: Path) -> None:
    made = make(tmp_path, compiled, "alter-config")
    with pytest.raises(ImageError, match=r"embedded sys.config differs from the one built"):
        elfcheck.verify(made.image, made.expected)


def test_sys_config_shadowed_by_a_later_file_is_refused(compiled: erlang.CompiledApp, tmp_path: Path) -> None:
    made = make(tmp_path, compiled, "shadow-config")
    with pytest.raises(ImageError, match=r"the sys.config LING would read is zz/sys.config"):
        elfcheck.verify(made.image, made.expected)


def test_other_app_file_is_refused(good: Made) -> None:
    expected = replace(good.expected, app_file=good.expected.app_file + b"%\n")
    with pytest.raises(ImageError, match=r"embedded tinyapp.app differs"):
        elfcheck.verify(good.image, expected)


def test_missing_otp_library_is_refused(good: Made) -> None:
    expected = replace(good.expected, libs=("kernel", "stdlib", "mnesia"))
    with pytest.raises(ImageError, match=r"OTP application mnesia is not embedded .* -l mnesia"):
        elfcheck.verify(good.image, expected)


def test_stripped_image_is_refused(good: Made, tmp_path: Path) -> None:
    img = copy(good, tmp_path)
    subprocess.run(["strip", str(img)], check=True)
    with pytest.raises(ImageError, match=r"no symbol table, so _binary_embed_fs_start"):
        elfcheck.verify(img, good.expected)


def test_object_file_is_not_an_executable(tmp_path: Path) -> None:
    src = tmp_path / "x.S"
    src.write_text('.section __xen_guest\n.ascii "GUEST_OS=Ling,XEN_VER=xen-3.0"\n.byte 0\n')
    subprocess.run(["as", "--64", "-o", str(tmp_path / "x.o"), str(src)], check=True)
    with pytest.raises(ImageError, match=r"ET_REL, expected an ELF64 little-endian EM_X86_64 executable"):
        elfcheck.read(tmp_path / "x.o")


def test_not_an_elf_file_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(b"MZ" + bytes(200))
    with pytest.raises(ImageError, match=r"x.img: not an ELF file"):
        elfcheck.read(img)


# -- the embedded file system format --------------------------------------------------------------


def blob(buckets: list[tuple[str, list[tuple[str, bytes]]]], total: int | None = None) -> bytes:
    count = sum(len(files) for _, files in buckets) if total is None else total
    out = struct.pack(">II", len(buckets), count)
    for name, files in buckets:
        out += bytes([len(name)]) + name.encode() + struct.pack(">I", len(files))
        for fname, data in files:
            out += bytes([len(fname)]) + fname.encode() + struct.pack(">I", len(data)) + data
    return out


def test_embed_fs_is_parsed_in_order() -> None:
    data = blob([("boot", [("local.map", b"/boot /boot\n")]), ("top", [("a.app", b"x"), ("b", b"")])])
    files = elfcheck.parse_embed_fs(data)
    assert [(f.bucket, f.name, f.data) for f in files] == [
        ("boot", "local.map", b"/boot /boot\n"),
        ("top", "a.app", b"x"),
        ("top", "b", b""),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (blob([("top", [("a", b"abc")])])[:-1], r"truncated at byte \d+ \(reading top/a"),
        (blob([("top", [("a", b"abc")])], total=2), r"header says 2 files, its buckets hold 1"),
        (blob([("top", [("a", b"abc")])]) + b"\0", r"1 unexpected bytes after the embedded file system"),
        (b"\0\0", r"truncated at byte 0 \(reading header"),
    ],
)
def test_malformed_embed_fs_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        elfcheck.parse_embed_fs(data)


# -- boot line, domain config ---------------------------------------------------------------------


def boot_line(storage: str, code_path: list[str], part: str = "line") -> str:
    from pipeline.config import AppSettings

    context = {
        "app": AppSettings(storage=storage),  # type: ignore[arg-type]
        "ling": {
            "project": "erlang_web",
            "code_path": code_path,
            "config_path": "/erlang_web/priv/sys.config",
            "goofs": storage != "ram",
            "start_module": "erlang_web_app",
            "part": part,
        },
    }
    return " ".join(render.render(REPO / "templates", "ling.bootline.j2", context).split())


def test_boot_line_carries_home_code_path_config_dhcp_goofs_and_start() -> None:
    paths = ["/erlang_web/ebin", "/erlang_web/priv"]
    assert boot_line("auto", paths) == (
        "-config /erlang_web/priv/sys.config -dhcp -goofs /scratch -s erlang_web_app "
        "-home /erlang_web -pz /erlang_web/ebin /erlang_web/priv"
    )
    # railing is given only what it does not add itself
    assert boot_line("auto", paths, "extra") == (
        "-config /erlang_web/priv/sys.config -dhcp -goofs /scratch -s erlang_web_app"
    )
    # without the scratch volume there is no GooFS (LING would otherwise format its one disk)
    assert "-goofs" not in boot_line("ram", paths)


def test_boot_line_over_xen_limit_is_refused() -> None:
    ling.check_boot_line("x" * 1023)
    with pytest.raises(ImageError, match=r"boot line is 1024 characters, over Xen's limit of 1023"):
        ling.check_boot_line("x" * 1024)


def test_domain_config_must_boot_like_menu_lst(tmp_path: Path) -> None:
    line = "-dhcp -s a -home /p -pz /p/ebin /p/priv"
    cfg = tmp_path / "domain_config"
    cfg.write_text(f'name = "p"\nkernel = "p.img"\nextra = "-s a -dhcp {line[11:]}"\nmemory = 64\nvif = []\n')
    ling.check_domain_config(cfg, "p", 64, line)  # same flags, another order
    cfg.write_text(f'name = "p"\nkernel = "p.img"\nextra = "{line} /p/other"\nmemory = 64\nvif = []\n')
    with pytest.raises(ImageError, match=r"railing boots with extra = .* which differs from the boot line"):
        ling.check_domain_config(cfg, "p", 64, line)
    cfg.write_text(f'name = "p"\nkernel = "p.img"\nextra = "{line}"\nvif = []\n')
    with pytest.raises(ImageError, match=r"domain_config: memory = '\(missing\)', expected '64'"):
        ling.check_domain_config(cfg, "p", 64, line)


def test_start_module_is_the_app_module_with_start(compiled: erlang.CompiledApp) -> None:
    assert ling.start_module("tinyapp", compiled.modules) == "tinyapp_app"
    with pytest.raises(ImageError, match=r"neither module tinyapp nor tinyapp_app exists"):
        ling.start_module("tinyapp", ("tinyapp_util",))


def test_buckets_are_named_as_railing_names_them_and_may_not_collide(tmp_path: Path) -> None:
    """railing.erl avoid_ebin_stem/1: a directory's bucket is its last component, ebin skipped."""
    assert [ling_project.bucket_of(d) for d in ("ebin", "priv", "lib/cowlib/ebin", "priv/static")] == [
        "top", "priv", "cowlib", "static"
    ]  # fmt: skip
    for rel in ("ebin/a.beam", "priv/x", "lib/dep/ebin/dep.beam"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    ling_project.check_buckets(tmp_path, ["mnesia"])
    (tmp_path / "lib" / "dep" / "priv").mkdir()
    (tmp_path / "lib" / "dep" / "priv" / "mime.types").write_text("x")
    with pytest.raises(ImageError, match=r"ling: priv/ and lib/dep/priv/ would share railing's bucket priv"):
        ling_project.check_buckets(tmp_path, ["mnesia"])
    with pytest.raises(ImageError, match=r"lib/dep/ebin/ and railing's own dep/ would share"):
        ling_project.check_buckets(tmp_path, ["dep"])
