"""What the ling target hands railing when the app has dependencies: every application compiled by the
toolchain's OTP 17 and laid out as railing packs it (railing/railing.erl, cloudozer/ling: files
``**/ebin/*.{app,beam}``, buckets named after a directory's last component, ebin skipped), OTP's
applications with ``-l``; native code refused naming the application. Runs the railing stand-in and
the stand-in OTP 17 (tests/railing_standin), as tests/test_ling_build.py does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.errors import CompileError
from tests import erlprojects as ep
from tests.railing_standin import make_toolchain, path_with, railing_dir
from tests.railing_standin.projects import ling_settings


@pytest.fixture
def toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "railing-calls.jsonl"
    monkeypatch.setenv("PATH", path_with(railing_dir(tmp_path / "railing-bin")))
    monkeypatch.setenv("RAILING_STANDIN_LOG", str(log))
    return make_toolchain(tmp_path / "otp17")


def project(tmp_path: Path, deps_: str, needs: tuple[str, ...]) -> Path:
    app = ep.app(tmp_path / "web", "web", "2.0.0", needs=needs, mod=True)
    ep.rebar_config(app, deps_)
    (app / "src" / "web_app.erl").write_text(
        "-module(web_app).\n-behaviour(application).\n-export([start/0, start/2, stop/1]).\n"
        "start() -> application:ensure_all_started(web).\n"
        "start(_, _) -> {ok, spawn(fun() -> receive stop -> ok end end)}.\nstop(_) -> ok.\n"
    )
    (tmp_path / "pipeline.toml").write_text(
        'default_env = "dev"\n[app]\npath = "web"\n[image]\ntarget = "ling"\n[env.dev]\n'
    )
    return app


def test_dependencies_are_compiled_by_otp_17_and_staged_as_railing_packs_them(
    tmp_path: Path, toolchain: Path
) -> None:
    app = project(tmp_path, 'base, {extra, {git, "../extra", {branch, "main"}}}', needs=("base", "extra"))
    ep.app(app / "_checkouts" / "base", "base", "0.1.0", needs=("mnesia",))
    (app / "_checkouts" / "base" / "include").mkdir()
    (app / "_checkouts" / "base" / "include" / "base.hrl").write_text('-define(BASE, <<"base">>).\n')
    ep.app(tmp_path / "extra", "extra", "0.9.0")
    (tmp_path / "extra" / "src" / "extra_use.erl").write_text(  # a dependency using another's header
        '-module(extra_use).\n-export([b/0]).\n-include_lib("base/include/base.hrl").\nb() -> ?BASE.\n'
    )
    ep.rebar_config(tmp_path / "extra", "base")
    ep.git_repo(tmp_path / "extra")
    result = build.build(config.load(tmp_path, overrides=ling_settings(toolchain)))
    m = result.manifest
    assert [a["name"] for a in m["app"]["applications"]] == ["base", "extra", "web"]  # dependencies first
    staged = m["app"]["files"]
    assert {"ebin/web.app", "lib/base/ebin/base.beam", "lib/extra/ebin/extra_use.beam"} <= set(staged)
    (call,) = [json.loads(line) for line in (tmp_path / "railing-calls.jsonl").read_text().splitlines()
               if '"image"' in line]  # fmt: skip
    assert call["args"][call["args"].index("-l") :] == ["-l", "mnesia"]  # base's .app needs it, per OTP 17
    embedded = {(e["mount"], e["name"]) for e in m["image"]["embedded"]}
    assert ("/web/lib/base/ebin", "base.ling") in embedded and (
        "/web/lib/extra/ebin",
        "extra_use.ling",
    ) in embedded
    assert "/web/lib/base/ebin" in m["image"]["boot_line"].split()  # on the code path


def test_a_dependency_with_a_nif_is_refused_naming_it(tmp_path: Path, toolchain: Path) -> None:
    app = project(tmp_path, "fast", needs=("fast",))
    ep.app(app / "_checkouts" / "fast", "fast", "1.0.0")
    (app / "_checkouts" / "fast" / "src" / "fast.erl").write_text(
        "-module(fast).\n-export([hi/0]).\n-on_load(init/0).\n"
        'init() -> erlang:load_nif("./fast", 0).\nhi() -> erlang:nif_error(not_loaded).\n'
    )
    with pytest.raises(CompileError) as err:
        build.build(config.load(tmp_path, overrides=ling_settings(toolchain)))
    assert str(err.value).startswith(
        "ling: dependency fast (fast) loads native code: module fast calls erlang:load_nif/2"
    )
    assert not any((tmp_path / "web" / ".pipeline").glob("builds/*"))


def test_a_dependency_only_installed_for_this_machines_otp_is_refused(
    tmp_path: Path, toolchain: Path
) -> None:
    project(tmp_path, "", needs=("mochiweb",))
    with pytest.raises(CompileError, match=r"^ling: dependency mochiweb is the library installed in "):
        build.build(config.load(tmp_path, overrides=ling_settings(toolchain)))
