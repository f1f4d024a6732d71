"""Small projects for the ling target's tests: a tiny OTP app (optionally with a NIF, a compile error
or many priv/ directories) inside a project with the repo's templates."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

APP_SRC = """{application, NAME,
 [{description, "tiny app for the ling target's tests"},
  {vsn, "1.2.3"},
  {registered, []},
  {applications, [kernel, stdlib]},
  {mod, {NAME_app, []}},
  {env, []},
  {modules, []}]}.
"""

APP_MODULE = """-module(NAME_app).
-behaviour(application).
-export([start/0, start/2, stop/1]).
start() -> application:start(NAME).
start(_Type, _Args) -> {ok, spawn(fun() -> receive stop -> ok end end)}.
stop(_State) -> ok.
"""

UTIL_MODULE = """-module(NAME_util).
-export([greeting/0]).
greeting() -> {ok, G} = application:get_env(NAME, greeting), G.
"""

NIF_MODULE = """-module(NAME_nif).
-export([fast/0]).
-on_load(init/0).
init() -> erlang:load_nif("./NAME_nif", 0).
fast() -> erlang:nif_error(not_loaded).
"""


def tiny_app(
    app_dir: Path,
    name: str = "tinyapp",
    nif: bool = False,
    broken: bool = False,
    priv_dirs: int = 0,
) -> Path:
    """Write a rebar3-layout OTP app; return its directory."""
    src = app_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    (app_dir / "rebar.config").write_text("{erl_opts, [debug_info]}.\n")
    (src / f"{name}.app.src").write_text(APP_SRC.replace("NAME", name))
    (src / f"{name}_app.erl").write_text(APP_MODULE.replace("NAME", name))
    util = UTIL_MODULE.replace("NAME", name)
    if broken:
        util = util.replace("G.\n", "G\n")  # a syntax error on line 3
    (src / f"{name}_util.erl").write_text(util)
    if nif:
        (src / f"{name}_nif.erl").write_text(NIF_MODULE.replace("NAME", name))
    for i in range(priv_dirs):
        d = app_dir / "priv" / f"static_assets_directory_number_{i:03d}_with_a_long_name"
        d.mkdir(parents=True, exist_ok=True)
        (d / "index.html").write_text(f"<p>{i}</p>\n")
    return app_dir


def ling_project(dest: Path, name: str = "tinyapp", **app_options: bool | int) -> Path:
    """A project holding a tiny app, the repo's templates and a minimal pipeline.toml; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pipeline.toml").write_text(
        f'default_env = "dev"\n[app]\nname = "{name}"\npath = "apps/{name}"\n'
        f'[image]\ntarget = "ling"\n[env.dev.app.config]\ngreeting = "tiny"\n'
    )
    shutil.copytree(REPO / "templates", dest / "templates", dirs_exist_ok=True)
    tiny_app(dest / "apps" / name, name, **app_options)  # type: ignore[arg-type]
    return dest


def ling_settings(bin_dir: Path, railing: str | Path = "railing", **more: str) -> list[str]:
    """``--set`` overrides that select the ling target with this toolchain."""
    out = ['image.target="ling"', f'ling.otp_bin="{bin_dir}"', f'ling.railing="{railing}"']
    out += [f"{k}={v}" for k, v in more.items()]
    return out


def leftovers(project: Path) -> list[str]:
    """What a build left in the project's work directory besides finished builds and the compile cache."""
    work = project / ".pipeline"
    found = []
    for sub in ("builds", "tmp"):
        d = work / sub
        if d.is_dir():
            found += [f"{sub}/{p.name}" for p in d.iterdir() if sub == "tmp" or p.name.startswith(".")]
    return sorted(found)
