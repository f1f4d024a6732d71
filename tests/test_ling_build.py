"""`invoke build` for the ling target with a local toolchain: the railing stand-in on PATH and a stand-in
OTP 17 (see tests/railing_standin). Checks what railing was given, the boot line, the verification, the
PV disk, and one clear line with nothing left behind for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.errors import CompileError, ImageError, PipelineError, ToolMissing
from pipeline.images.ling import LingTarget
from pipeline.manifest import sha256_file
from tests.project import copy_project, invoke
from tests.railing_standin import make_toolchain, path_with, railing_dir, standin_railing, wrapper
from tests.railing_standin.projects import leftovers, ling_project, ling_settings

EXTRA = "-config /erlang_web/priv/sys.config -dhcp -goofs /scratch -s erlang_web_app"
BOOT_LINE = EXTRA + " -home /erlang_web -pz /erlang_web/ebin /erlang_web/priv"


@dataclass(frozen=True)
class Env:
    root: Path
    otp17: Path  # bin directory of the stand-in OTP 17
    otp25: Path  # bin directory of a stand-in that reports OTP 25
    railing_bin: Path  # directory holding the stand-in railing
    log: Path  # where the stand-in records its calls


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("ling")
    e = Env(
        root=root,
        otp17=make_toolchain(root / "otp17"),
        otp25=make_toolchain(root / "otp25", release="25"),
        railing_bin=railing_dir(root / "railing-bin"),
        log=root / "railing-calls.jsonl",
    )
    saved = {k: os.environ.get(k) for k in ("PATH", "RAILING_STANDIN_LOG")}
    os.environ["PATH"] = path_with(e.railing_bin)  # the stand-in on PATH, as a user's railing would be
    os.environ["RAILING_STANDIN_LOG"] = str(e.log)
    yield e
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def calls(env: Env) -> list[dict[str, object]]:
    if not env.log.exists():
        return []
    return [json.loads(line) for line in env.log.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(env: Env) -> tuple[Path, build.BuildResult, list[dict[str, object]]]:
    """The real app built once for the ling target (railing found on PATH)."""
    project = copy_project(env.root / "proj")
    before = len(calls(env))
    result = build.build(config.load(project, overrides=ling_settings(env.otp17)))
    return project, result, calls(env)[before:]


def debugfs_cat(disk: Path, path: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)], capture_output=True, check=True).stdout


# -- the happy path ------------------------------------------------------------------------------


def test_railing_gets_name_memory_extras_priv_and_libs(built: tuple[Path, build.BuildResult, list]) -> None:
    _, result, made = built
    image_calls = [c for c in made if c["args"] and c["args"][0] == "image"]  # type: ignore[index]
    assert [c["args"] for c in made if c not in image_calls] == [["-v"]]  # the probe
    assert len(image_calls) == 1
    call = image_calls[0]
    assert call["args"] == [
        "image",
        "-n",
        "erlang_web",
        "-m",
        "256",
        "-e",
        EXTRA,
        "-i",
        "priv",
        "-l",
        "mnesia",
    ]
    assert Path(str(call["cwd"])).name == "erlang_web"
    assert result.manifest["image"]["railing_args"] == call["args"]


def test_boot_line_and_manifest_record_what_was_made(built: tuple[Path, build.BuildResult, list]) -> None:
    _, result, _ = built
    d = result.directory
    image = result.manifest["image"]
    assert image["boot_line"] == BOOT_LINE
    assert image["file"] == "ling/erlang_web.img"
    assert image["sha256"] == sha256_file(d / image["file"])
    assert image["xen_guest"].startswith("GUEST_OS=Ling,XEN_VER=xen-3.0,")
    assert image["toolchain"]["otp_release"] == "17"
    assert image["toolchain"]["railing"] == "0.5.0-standin"
    assert result.manifest["inputs"]["tools"] == image["toolchain"]
    embedded = {(e["mount"], e["name"]): e for e in image["embedded"]}
    config_entry = embedded[("/erlang_web/priv", "sys.config")]
    assert config_entry["sha256"] == sha256_file(d / "config" / "sys.config")
    # what railing was handed is listed with digests; the image embeds exactly that .app file
    staged = result.manifest["app"]["files"]
    assert embedded[("/erlang_web/ebin", "erlang_web.app")]["sha256"] == staged["ebin/erlang_web.app"]
    for module in result.manifest["app"]["modules"]:
        assert ("/erlang_web/ebin", f"{module}.ling") in embedded
    assert any(m.startswith("/erlang/lib/mnesia-") for m, _ in embedded)
    domain = (d / image["domain_config"]).read_text()
    assert f'extra = "{BOOT_LINE}"' in domain and "memory = 256" in domain


def test_pv_disk_boots_the_image_with_the_boot_line_through_pv_grub(
    built: tuple[Path, build.BuildResult, list],
) -> None:
    _, result, _ = built
    d = result.directory
    (disk,) = result.manifest["image"]["disks"]
    assert (disk["name"], disk["virtualization"], disk["boot_mode"]) == ("pv", "pv", "pv-grub")
    assert disk["sha256"] == sha256_file(d / disk["file"])
    assert disk["size"] % (1 << 30) == 0
    menu = debugfs_cat(d / disk["file"], "/boot/grub/menu.lst").decode()
    lines = menu.splitlines()
    assert "root (hd0)" in lines
    assert f"kernel /boot/erlang_web.img {BOOT_LINE}" in lines
    assert not any(line.startswith("initrd") for line in lines)
    assert (
        debugfs_cat(d / disk["file"], "/boot/erlang_web.img") == (d / "ling" / "erlang_web.img").read_bytes()
    )


def test_invoke_build_reports_the_toolchain_versions(
    env: Env, built: tuple[Path, build.BuildResult, list]
) -> None:
    project, result, _ = built
    args = [a for s in ling_settings(env.otp17) for a in ("--set", s)]
    done = invoke(project, "build", *args, path=os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert "ling toolchain (local): Erlang/OTP 17" in said
    assert "railing 0.5.0-standin" in said
    assert f"build {result.build_id} is up to date" in said


def test_relative_toolchain_paths_are_relative_to_the_project(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    make_toolchain(project / "toolchain" / "otp17")
    railing_dir(project / "tools")
    overrides = ling_settings(Path("toolchain/otp17/bin"), railing="tools/railing")
    target = LingTarget()
    settings = config.load(project, overrides=overrides)
    assert target.tool_versions(settings)["otp_release"] == "17"
    tc = target.toolchain(settings)
    assert (tc.otp_bin, tc.railing) == (str(project / "toolchain/otp17/bin"), str(project / "tools/railing"))


# -- refused toolchains ----------------------------------------------------------------------------


def test_otp_25_is_refused_with_the_reason(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    with pytest.raises(ToolMissing) as err:
        build.build(config.load(project, overrides=ling_settings(env.otp25)))
    msg = str(err.value)
    assert "erl is Erlang/OTP 25, but the ling target needs OTP 17" in msg
    assert "LING runs only OTP 17 code" in msg and "(hint: set ling.otp_bin" in msg
    assert leftovers(project) == [] and not (project / ".pipeline" / "builds").exists()


def test_the_host_otp_is_refused_too(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    overrides = [*ling_settings(env.otp17), 'ling.otp_bin=""']  # erl from PATH: the host's OTP 25
    with pytest.raises(ToolMissing, match=r"ling toolchain \(local\): erl is Erlang/OTP 25"):
        build.build(config.load(project, overrides=overrides))


def test_missing_toolchain_is_refused(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    with pytest.raises(ToolMissing, match=r"/nowhere/bin/erl not found; LING runs only OTP 17 code"):
        build.build(config.load(project, overrides=ling_settings(Path("/nowhere/bin"))))


def test_missing_railing_is_refused(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    overrides = ling_settings(env.otp17, railing="no-such-railing")
    with pytest.raises(ToolMissing, match=r'railing not found \(ling.railing = "no-such-railing"\)'):
        build.build(config.load(project, overrides=overrides))


def test_a_railing_for_posix_is_refused(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    posix = wrapper(tmp_path / "railing", 'echo "LING v0.5.0 (railing build for posix)"\n')
    with pytest.raises(ToolMissing, match=r"is a railing for posix, which makes host executables"):
        build.build(config.load(project, overrides=ling_settings(env.otp17, railing=posix)))


def test_a_railing_whose_ling_has_no_disk_driver_is_refused_when_the_scratch_volume_is_used(
    env: Env, tmp_path: Path
) -> None:
    project = ling_project(tmp_path / "p")
    nodisk = railing_dir(tmp_path / "nodisk", disk_driver=False) / "railing"
    with pytest.raises(ToolMissing) as err:
        build.build(config.load(project, overrides=ling_settings(env.otp17, railing=nodisk)))
    msg = str(err.value)
    assert msg.startswith(f"ling toolchain (local): the LING core in {nodisk} (vmling.o) has no disk driver")
    assert "LING_CONFIG_DISK" in msg and 'or set app.storage = "ram"' in msg and "\n" not in msg
    assert leftovers(project) == [] and not (project / ".pipeline" / "builds").exists()
    # a script that runs that railing cannot be read before: the core railing unpacked is checked after
    script = wrapper(tmp_path / "wrapped", f'exec "{nodisk}" "$@"\n')
    with pytest.raises(ToolMissing, match=r"the LING core in .*wrapped \(vmling.o\) has no disk driver"):
        build.build(config.load(project, overrides=ling_settings(env.otp17, railing=script)))
    builds = project / ".pipeline" / "builds"
    assert leftovers(project) == [] and not any(builds.iterdir())
    # a RAM-only app gets no scratch volume (devices.py), so that railing will do
    ram = ling_settings(env.otp17, railing=nodisk, **{"app.storage": '"ram"'})
    result = build.build(config.load(project, overrides=ram))
    assert "-goofs" not in result.manifest["image"]["boot_line"]


# -- bad apps -------------------------------------------------------------------------------------


def test_app_with_a_nif_is_refused(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p", nif=True)
    with pytest.raises(CompileError) as err:
        build.build(config.load(project, overrides=ling_settings(env.otp17)))
    assert str(err.value).startswith(
        "ling: the app (tinyapp) loads native code: module tinyapp_nif calls erlang:load_nif/2"
    )
    assert leftovers(project) == []


def test_compile_error_names_the_project_file(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p", broken=True)
    with pytest.raises(CompileError, match=r"^apps/tinyapp/src/tinyapp_util.erl:3(:\d+)?: syntax error"):
        build.build(config.load(project, overrides=ling_settings(env.otp17)))
    assert leftovers(project) == []


def test_boot_line_too_long_is_refused_before_railing_runs(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p", priv_dirs=20)  # 20 priv/ dirs on -pz: over 1023 characters
    before = len(calls(env))
    with pytest.raises(ImageError, match=r"LING boot line is \d{4} characters, over Xen's limit of 1023"):
        build.build(config.load(project, overrides=ling_settings(env.otp17)))
    assert [c["args"] for c in calls(env)[before:]] == [["-v"]]  # probed, never asked for an image
    assert leftovers(project) == []


def test_tiny_app_builds_with_every_priv_dir_on_the_code_path(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p", priv_dirs=2)
    result = build.build(config.load(project, overrides=ling_settings(env.otp17, **{"app.storage": '"ram"'})))
    line = result.manifest["image"]["boot_line"]
    assert "-goofs" not in line  # no scratch volume for a RAM-only app
    assert line.endswith(
        "-home /tinyapp -pz /tinyapp/ebin /tinyapp/priv "
        "/tinyapp/priv/static_assets_directory_number_000_with_a_long_name "
        "/tinyapp/priv/static_assets_directory_number_001_with_a_long_name"
    )
    assert leftovers(project) == []


# -- corrupted output of railing, through the whole build --------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            '"@RAILING@" "$@"\n'
            '[ "$1" = image ] && objcopy --rename-section __xen_guest=__xen_other erlang_web.img\n'
            "exit 0\n",
            r"erlang_web.img: no __xen_guest section",
        ),
        (
            '[ "$1" = image ] && rm ebin/erlang_web_json.beam\nexec "@RAILING@" "$@"\n',
            r"app module erlang_web_json missing from /erlang_web/ebin",
        ),
        (
            '[ "$1" = image ] && echo "%" >> priv/sys.config\nexec "@RAILING@" "$@"\n',
            r"embedded sys.config differs from the one built",
        ),
        (
            '[ "$1" = image ] && RAILING_STANDIN_FAIL=after-embedfs && export RAILING_STANDIN_FAIL\n'
            'exec "@RAILING@" "$@"\n',
            # railing's `ok = sh(objcopy ...)` crashes the escript on {error, 1}: exit 127, as LING's does
            r"railing image failed: railing failed \(exit 127\): "
            r"\S*objcopy: 'embed.fs.unreadable': No such file; "
            r"escript: exception error: no match of right hand side value \{error,1\}",
        ),
    ],
    ids=["wrong-section", "missing-module", "altered-sys-config", "railing-fails"],
)
def test_bad_images_are_refused_and_leave_nothing(
    env: Env, built: tuple[Path, build.BuildResult, list], tmp_path: Path, script: str, message: str
) -> None:
    project, good, _ = built
    bad = wrapper(tmp_path / "railing", script.replace("@RAILING@", str(standin_railing())))
    settings = config.load(project, overrides=ling_settings(env.otp17, railing=bad))
    with pytest.raises(PipelineError, match=message) as err:
        build.build(settings, force=True)
    assert "\n" not in str(err.value)
    assert leftovers(project) == []
    assert sorted(p.name for p in (project / ".pipeline" / "builds").iterdir()) == [good.build_id]
    assert sha256_file(good.directory / "ling" / "erlang_web.img") == good.manifest["image"]["sha256"]


def test_cli_exits_1_with_one_line(env: Env, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    args = [a for s in ling_settings(env.otp25) for a in ("--set", s)]
    done = invoke(project, "build", *args, path=os.environ["PATH"])
    assert done.returncode == 1
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Erlang/OTP 25" in errors[0]
