"""Small rebar3 projects, dependencies and hex packages, written on the fly for the release tests.

The hex package follows the documented tarball format 3 (hex.pm "Package tarball" specification):
an uncompressed tar of ``VERSION`` ("3"), ``CHECKSUM`` (upper-case hex SHA-256 of the VERSION,
metadata.config and contents.tar.gz contents, in that order), ``metadata.config`` (Erlang terms) and
``contents.tar.gz`` (the package's files), stored in rebar3's cache as ``NAME-VSN.tar``.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path


def app(
    directory: Path, name: str, vsn: str = "1.0.0", needs: tuple[str, ...] = (), mod: bool = False
) -> Path:
    """An OTP application in ``directory`` (src/NAME.app.src and a module ``NAME`` with ``hi/0``)."""
    src = directory / "src"
    src.mkdir(parents=True, exist_ok=True)
    vsn_term = vsn if vsn == "git" else f'"{vsn}"'
    start = f", {{mod, {{{name}_app, []}}}}" if mod else ""
    apps = ", ".join(("kernel", "stdlib", *needs))
    (src / f"{name}.app.src").write_text(
        f"{{application, {name}, [{{vsn, {vsn_term}}}, {{applications, [{apps}]}}{start}, {{env, []}}]}}.\n"
    )
    (src / f"{name}.erl").write_text(f'-module({name}).\n-export([hi/0]).\nhi() -> <<"{name}">>.\n')
    if mod:
        (src / f"{name}_app.erl").write_text(
            f"-module({name}_app).\n-behaviour(application).\n-export([start/2, stop/1]).\n"
            "start(_, _) -> {ok, spawn(fun() -> receive stop -> ok end end)}.\nstop(_) -> ok.\n"
        )
    return directory


def rebar_config(directory: Path, deps: str = "", extra: str = "") -> None:
    (directory / "rebar.config").write_text(f"{{erl_opts, [debug_info]}}.\n{{deps, [{deps}]}}.\n{extra}")


def git_repo(directory: Path, tag: str | None = None) -> str:
    """Commit everything in ``directory`` as a new git repository; return the commit."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args], check=True, capture_output=True, text=True,
            env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(directory)},
        ).stdout.strip()  # fmt: skip

    if not (directory / ".git").exists():
        git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "commit", "--allow-empty")
    if tag:
        git("tag", tag)
    return git("rev-parse", "HEAD")


def hex_package(cache: Path, name: str, vsn: str, requirements: dict[str, str] | None = None) -> Path:
    """A hex package of an application ``name`` in rebar3's cache layout under ``cache``."""
    files = io.BytesIO()
    with tarfile.open(fileobj=files, mode="w:gz") as tar:
        app_src = f'{{application, {name}, [{{vsn, "{vsn}"}}, {{applications, [kernel, stdlib]}}]}}.\n'
        for path, text in {
            f"src/{name}.app.src": app_src,
            f"src/{name}.erl": f'-module({name}).\n-export([hi/0]).\nhi() -> <<"{name} {vsn}">>.\n',
            "rebar.config": "{erl_opts, []}.\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    contents = files.getvalue()
    reqs = ", ".join(
        f'{{<<"{r}">>, [{{<<"app">>, <<"{r}">>}}, {{<<"optional">>, false}}, '
        f'{{<<"requirement">>, <<"{v}">>}}]}}'
        for r, v in (requirements or {}).items()
    )
    metadata = (
        f'{{<<"app">>, <<"{name}">>}}.\n{{<<"name">>, <<"{name}">>}}.\n{{<<"version">>, <<"{vsn}">>}}.\n'
        f'{{<<"build_tools">>, [<<"rebar3">>]}}.\n{{<<"requirements">>, [{reqs}]}}.\n'
    ).encode()
    version = b"3"
    checksum = hashlib.sha256(version + metadata + contents).hexdigest().upper().encode()
    out = cache / "hex" / "hexpm" / "packages" / f"{name}-{vsn}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode="w") as tar:
        for member, data in (("VERSION", version), ("CHECKSUM", checksum), ("metadata.config", metadata),
                             ("contents.tar.gz", contents)):  # fmt: skip
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
