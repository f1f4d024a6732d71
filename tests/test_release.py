"""The app as an OTP release: dependencies resolved offline, rebar3's release, the image's runtime made
from it. Real rebar3, real git and real Erlang on small projects written by the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import build, config, deps, erlang, rebar, release
from pipeline.errors import CompileError, ConfigError, ImageError
from pipeline.images import initramfs, runtime
from tests import erlprojects as ep
from tests.project import invoke

PROGRAMS = ("erlexec", "beam.smp")


@pytest.fixture
def hex_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "rebar3-cache"
    monkeypatch.setenv("REBAR_CACHE_DIR", str(cache))
    return cache


def shop(tmp_path: Path, deps_: str = "", needs: tuple[str, ...] = (), extra: str = "") -> Path:
    """A project ``shop`` with a start module, in tmp_path/shop, and pipeline.toml next to it."""
    project = ep.app(tmp_path / "shop", "shop", "1.2.0", needs=needs, mod=True)
    ep.rebar_config(project, deps_, extra)
    (tmp_path / "pipeline.toml").write_text('default_env = "dev"\n[app]\npath = "shop"\n[env.dev]\n')
    return project


def test_dependencies_resolve_from_checkouts_local_git_the_hex_cache_and_installed_libraries(
    tmp_path: Path, hex_cache: Path
) -> None:
    ep.app(tmp_path / "gdep", "gdep", "0.3.0")
    sha = ep.git_repo(tmp_path / "gdep", tag="v0.3.0")
    ep.hex_package(hex_cache, "hdep", "2.0.0", requirements={"hdep2": "~> 1.1"})
    ep.hex_package(hex_cache, "hdep2", "1.1.5")
    ep.hex_package(hex_cache, "hdep2", "1.2.0")
    ep.hex_package(hex_cache, "hdep2", "2.0.0")  # outside ~> 1.1
    project = shop(
        tmp_path,
        f'cdep, {{gdep, {{git, "file://{tmp_path}/gdep", {{tag, "v0.3.0"}}}}}}, {{hdep, "2.0.0"}}',
        needs=("cdep", "gdep", "hdep", "mochiweb"),
    )
    ep.app(project / "_checkouts" / "cdep", "cdep", "0.1.0")
    resolved = deps.resolve(project, "default")
    found = {d.name: (d.source, d.version) for d in resolved.dependencies}
    assert found == {
        "cdep": ("checkout", "0.1.0"),
        "gdep": ("git", "0.3.0"),
        "hdep": ("hex", "2.0.0"),
        "hdep2": ("hex", "1.2.0"),  # the newest cached version ~> 1.1 allows
        "mochiweb": ("installed", "3.1.1"),  # Debian's erlang-mochiweb, needed by shop's .app
    }
    by_name = {d.name: d for d in resolved.dependencies}
    assert by_name["gdep"].identity == sha
    assert by_name["hdep"].identity == deps.sha256_file(hex_cache / "hex/hexpm/packages/hdep-2.0.0.tar")


@pytest.mark.parametrize(
    ("deps_", "message"),
    [
        (
            '{nothere, "1.0.0"}',
            "rebar.config: dependency nothere (hex nothere 1.0.0) cannot be resolved offline",
        ),
        (
            '{far, {git, "https://github.com/x/far.git", {tag, "1"}}}',
            "rebar.config: dependency far is fetched from https://",
        ),
        ("", "application ghost, which shop needs (its .app applications), is not the project's"),
    ],
)
def test_an_unresolvable_dependency_is_one_line_naming_it(
    tmp_path: Path, hex_cache: Path, deps_: str, message: str
) -> None:
    project = shop(tmp_path, deps_, needs=("ghost",) if not deps_ else ())
    with pytest.raises(ConfigError) as err:
        deps.resolve(project, "default")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_changed_dependency_makes_a_new_build_id(tmp_path: Path) -> None:
    ep.app(tmp_path / "gdep", "gdep", "0.3.0")
    ep.git_repo(tmp_path / "gdep")
    shop(tmp_path, f'{{gdep, {{git, "file://{tmp_path}/gdep", {{branch, "main"}}}}}}', needs=("gdep",))
    settings = config.load(tmp_path)
    before = build.plan(settings)
    (tmp_path / "gdep" / "src" / "gdep.erl").write_text("-module(gdep).\n-export([hi/0]).\nhi() -> new.\n")
    ep.git_repo(tmp_path / "gdep")  # the branch moves on
    after = build.plan(settings)
    assert before.build_id != after.build_id
    assert before.inputs["sources"] == after.inputs["sources"]  # the project itself did not change


def _release(tmp_path: Path) -> tuple[config.Settings, erlang.Artifact]:
    settings = config.load(tmp_path)
    source = release.source_of(settings)
    return settings, release.build_release(settings, source, tmp_path / "work")


def test_the_release_holds_the_app_its_dependencies_and_modules_in_src_subdirectories(
    tmp_path: Path, hex_cache: Path
) -> None:
    ep.hex_package(hex_cache, "hdep", "2.0.0")
    project = shop(tmp_path, 'cdep, {hdep, "2.0.0"}', needs=("cdep", "hdep", "mochiweb"))
    ep.app(project / "_checkouts" / "cdep", "cdep", "0.1.0")
    (project / "src" / "handlers").mkdir()
    (project / "src" / "handlers" / "shop_h.erl").write_text("-module(shop_h).\n-export([x/0]).\nx() -> 1.\n")
    _, art = _release(tmp_path)
    names = dict(art.applications)
    assert {"shop", "cdep", "hdep", "mochiweb", "kernel", "stdlib"} <= set(names)
    assert (art.directory / "lib" / "shop-1.2.0" / "ebin" / "shop_h.beam").is_file()
    assert not (tmp_path / "shop" / "_build").exists() and not (tmp_path / "shop" / "rebar.lock").exists()
    tree = initramfs.Tree()
    rt = runtime.assemble(
        tree, erlang.host_toolchain(), art.directory, "shop", "1.2.0", PROGRAMS, tmp_path / "rt"
    )
    assert rt.applications == names and not rt.own_erts
    root = runtime.ROOT
    assert f"{root}/lib/mochiweb-3.1.1/ebin/mochiweb.app" in tree.entries
    assert f"{root}/releases/1.2.0/start.boot" in tree.entries
    assert not any(p.startswith(f"{root}/bin") for p in tree.entries)  # no start scripts
    releases = tree.entries[f"{root}/releases/RELEASES"].data.decode()
    assert f'"{root}/lib/shop-1.2.0"' in releases and str(tmp_path) not in releases


def test_the_same_project_in_two_places_gives_the_same_bytes(tmp_path: Path) -> None:
    trees = []
    for where in ("one", "two/deeper"):
        base = tmp_path / where
        project = shop(base, "cdep", needs=("cdep",))
        ep.app(project / "_checkouts" / "cdep", "cdep", "0.1.0")
        _, art = _release(base)
        tree = initramfs.Tree()
        runtime.assemble(tree, erlang.host_toolchain(), art.directory, "shop", "1.2.0", PROGRAMS, base / "rt")
        trees.append(tree.entries)
    assert trees[0] == trees[1]


def test_a_dependency_that_does_not_compile_shows_the_compiler_output(tmp_path: Path) -> None:
    project = shop(tmp_path, "bad", needs=("bad",))
    ep.app(project / "_checkouts" / "bad", "bad", "0.1.0")
    (project / "_checkouts" / "bad" / "src" / "bad.erl").write_text("-module(bad).\nbroken( ->\n")
    with pytest.raises(CompileError) as err:
        _release(tmp_path)
    assert "shop/_checkouts/bad/src/bad.erl:2:" in str(err.value)
    assert "syntax error before" in str(err.value) and "\n" not in str(err.value)


def test_a_version_from_git_is_the_one_rebar3_computes(tmp_path: Path) -> None:
    project = shop(tmp_path)
    (project / "src" / "shop.app.src").write_text(
        (project / "src" / "shop.app.src").read_text().replace('"1.2.0"', "git")
    )
    ep.git_repo(project, tag="v2.5.0")
    settings, art = _release(tmp_path)
    assert dict(art.applications)["shop"] == "2.5.0"
    assert build.plan(settings).inputs["git"]["head"]


def test_the_projects_own_relx_release_is_used_with_its_overlays(tmp_path: Path) -> None:
    project = shop(
        tmp_path,
        extra='{relx, [{release, {shop_rel, "9.9.9"}, [shop, sasl]}, '
        '{overlay, [{copy, "conf/shop.conf", "etc/shop.conf"}]}]}.\n',
    )
    (project / "conf").mkdir()
    (project / "conf" / "shop.conf").write_text("colour = blue\n")
    settings, art = _release(tmp_path)
    assert (settings.app.name, art.version) == ("shop_rel", "9.9.9")
    assert "sasl" in dict(art.applications)
    tree = initramfs.Tree()
    runtime.assemble(
        tree, erlang.host_toolchain(), art.directory, "shop_rel", "9.9.9", PROGRAMS, tmp_path / "rt"
    )
    # a file shipped next to the release, where the app (whose working directory is the root) reads it
    assert tree.entries[f"{runtime.ROOT}/etc/shop.conf"].data == b"colour = blue\n"


def test_an_app_path_outside_the_settings_directory_works(tmp_path: Path) -> None:
    elsewhere = ep.app(tmp_path / "src" / "shop", "shop", "1.2.0", mod=True)
    ep.rebar_config(elsewhere)
    root = tmp_path / "settings"
    root.mkdir()
    (root / "pipeline.toml").write_text(f'default_env = "dev"\n[app]\npath = "{elsewhere}"\n[env.dev]\n')
    p = build.plan(config.load(root))
    assert "src/shop.erl" in p.inputs["sources"]


def test_a_bad_release_given_to_invoke_build_is_one_line_and_leaves_nothing(
    made: Path, tmp_path: Path
) -> None:
    rel = _copy(made, tmp_path)
    for boot in (rel / "releases" / "1.2.0").glob("*.boot"):
        boot.unlink()
    (tmp_path / "pipeline.toml").write_text('default_env = "dev"\n[app]\nrelease = "rel"\n[env.dev]\n')
    proc = invoke(tmp_path, "build")
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "release shop 1.2.0: " in errors[0] and "no boot script" in errors[0]
    assert not list((tmp_path / ".pipeline" / "builds").glob("*"))


# -- releases the image cannot boot -----------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of shop, made once; tests change copies of it."""
    base = tmp_path_factory.mktemp("made")
    shop(base)
    return _release(base)[1].directory


def _copy(made: Path, tmp_path: Path) -> Path:
    out = tmp_path / "rel"
    shutil.copytree(made, out)
    return out


def _set_erts(rel: Path, erts: str) -> None:
    f = rel / "releases" / "1.2.0" / "shop.rel"
    text = f.read_text()
    old = text.split("{erts,", 1)[1].split("}", 1)[0]
    f.write_text(text.replace(f"{{erts,{old}}}", f'{{erts,"{erts}"}}'))


def test_a_release_for_another_erts_is_refused_naming_both_versions(made: Path, tmp_path: Path) -> None:
    rel = _copy(made, tmp_path)
    _set_erts(rel, "99.1")
    tc = erlang.host_toolchain()
    with pytest.raises(ImageError) as err:
        runtime.assemble(initramfs.Tree(), tc, rel, "shop", "1.2.0", PROGRAMS, tmp_path / "rt")
    assert str(err.value).startswith(
        f"release shop 1.2.0 was made for erts 99.1, but the image's runtime is erts {tc.erts_version}"
    )


def test_a_release_that_ships_its_own_erts_runs_on_it(made: Path, tmp_path: Path) -> None:
    rel = _copy(made, tmp_path)
    _set_erts(rel, "99.1")
    tc = erlang.host_toolchain()
    (rel / "erts-99.1" / "bin").mkdir(parents=True)
    for prog in PROGRAMS:
        shutil.copy2(tc.root / f"erts-{tc.erts_version}" / "bin" / prog, rel / "erts-99.1" / "bin" / prog)
    tree = initramfs.Tree()
    rt = runtime.assemble(tree, tc, rel, "shop", "1.2.0", PROGRAMS, tmp_path / "rt")
    assert (rt.erts_version, rt.own_erts) == ("99.1", True)
    assert f"{runtime.ROOT}/erts-99.1/bin/beam.smp" in tree.entries


def test_a_release_without_a_boot_script_is_refused(made: Path, tmp_path: Path) -> None:
    rel = _copy(made, tmp_path)
    for boot in (rel / "releases" / "1.2.0").glob("*.boot"):
        if boot.name in ("start.boot", "shop.boot"):
            boot.unlink()
    with pytest.raises(ImageError, match=r"release shop 1\.2\.0: .*releases/1\.2\.0: no boot script"):
        runtime.assemble(
            initramfs.Tree(), erlang.host_toolchain(), rel, "shop", "1.2.0", PROGRAMS, tmp_path / "r"
        )


def test_a_library_of_another_version_than_the_image_has_is_refused(made: Path, tmp_path: Path) -> None:
    rel = _copy(made, tmp_path)
    stdlib = next((rel / "lib").glob("stdlib-*"))
    shutil.rmtree(stdlib)  # a release made without the system libraries, for another stdlib
    f = rel / "releases" / "1.2.0" / "shop.rel"
    f.write_text(f.read_text().replace(f'"{stdlib.name.split("-", 1)[1]}"', '"0.1"', 1))
    subprocess.run(["true"], check=True)
    with pytest.raises(
        ImageError, match=r"needs stdlib 0\.1, which is not in its lib/, and the image's runtime"
    ):
        runtime.assemble(
            initramfs.Tree(), erlang.host_toolchain(), rel, "shop", "1.2.0", PROGRAMS, tmp_path / "r"
        )


def test_rebar3_failure_lines_name_the_projects_files() -> None:
    out = "===> Compiling shop\n===> Compiling src/x.erl failed\nx.erl:3:1: syntax error before: '->'\n"
    staged = Path("/nonexistent-stage")
    assert rebar.failure(out, staged, "apps/shop") == (
        "rebar3 release failed: Compiling src/x.erl failed: apps/shop/x.erl:3:1: syntax error before: '->'"
    )


def test_the_amis_provenance_says_where_the_dependencies_are_listed() -> None:
    from pipeline.aws import provenance

    deps_ = [{"name": "greeter", "version": "0.4.0", "digest": "ab" * 32, "source": "checkout"}]
    manifest = {"build_id": "0123456789abcdef", "env": "dev", "target": "beam", "app": {"name": "shop"}}
    disk = {"virtualization": "hvm", "sha256": "cd" * 32}
    git = provenance.GitState("unknown", "unknown")
    assert "Dependencies" not in provenance.image_tags(manifest, disk, git)
    tags = provenance.image_tags({**manifest, "dependencies": deps_}, disk, git)
    assert tags["Dependencies"].startswith("1 in manifest.json of build 0123456789abcdef, sha256 ")
