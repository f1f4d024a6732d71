"""Invoke tasks: the command line of the pipeline.

    invoke build ami deploy      source -> image -> AMI -> live blue/green release
    invoke test                  the whole test suite (lint, types, EUnit, pytest)

Tasks parse flags, load the settings, call one function of the ``pipeline`` package and print. Every
error of the pipeline ends the task with its one-line message and exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from pipeline import config, ui
from pipeline.errors import PipelineError

logging.basicConfig(
    level=os.environ.get("PIPELINE_LOG_LEVEL", "WARNING").upper(),
    format="%(levelname)s %(name)s: %(message)s",
)

ENV_HELP = "environment from pipeline.toml (default: its default_env)"
SET_HELP = "override a setting for this run, e.g. --set app.greeting=Hi (repeatable)"
COMMON_HELP = {"env": ENV_HELP, "set": SET_HELP}


@contextmanager
def failures() -> Iterator[None]:
    """Turn pipeline errors into a one-line message on stderr and exit status 1."""
    try:
        yield
    except PipelineError as err:
        raise Exit(f"error: {err}", code=1) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


def load(env: str | None, overrides: list[str] | None, **cli: Any) -> config.Settings:
    """Settings for ``env`` with ``--set`` overrides and the task's own flags (``section__key=value``)."""
    pairs = list(overrides or [])
    for name, value in cli.items():
        if value is not None:
            section, key = name.split("__")
            pairs.append(f"{section}.{key}={_toml(value)}")
    return config.load(env=env, overrides=pairs)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "target": "image target: beam or ling",
        "json": "print the build record as JSON",
        "force": "rebuild even when a build of the same inputs exists",
    },
)
def build(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    target: str | None = None,
    json: bool = False,
    force: bool = False,
) -> None:
    """Compile the app and bake its configuration into a unikernel image. Reuses an identical build."""
    from pipeline import build as builder

    with failures():
        settings = load(env, set_, image__target=target)
        ui.say(f"build: env [bold]{settings.env}[/bold], target [bold]{settings.image.target}[/bold]")
        result = builder.build(settings, force=force)
        _report_build(result)
        if json:
            ui.result(result.record())


def _report_build(result: Any) -> None:
    m = result.manifest
    app = m["app"]
    if result.reused:
        ui.done(f"build {result.build_id} is up to date (nothing changed); reused {result.directory}")
    else:
        ui.done(
            f"built {result.build_id} in {result.seconds:.1f}s: {app['name']} {app['version']}, "
            f"{len(app['modules'])} modules, config {m['config_digest'][:12]}"
        )
    for disk in m.get("image", {}).get("disks", []):
        ui.say(
            f"  disk {disk['name']}: {disk['size'] >> 20} MiB, {disk['nonzero_blocks']} non-zero blocks, "
            f"sha256 {disk['sha256'][:16]}"
        )


@task(iterable=["set_"], help=COMMON_HELP)
def settings(c: Context, env: str | None = None, set_: list[str] | None = None) -> None:
    """Print the effective settings of an environment (after overlays and --set)."""
    with failures():
        s = load(env, set_)
        ui.result({"env": s.env, **s.as_dict()})


@task(help={"fast": "skip tests marked slow or xen (real VM boots)"})
def test(c: Context, fast: bool = False) -> None:
    """Run the whole test suite: ruff, mypy, the app's EUnit tests and pytest."""
    py = sys.executable  # the venv's python, so its ruff, mypy and pytest are the ones run
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("ruff", lambda: c.run(f"{py} -m ruff check . && {py} -m ruff format --check .")),
        ("mypy", lambda: c.run(f"{py} -m mypy")),
        ("eunit", lambda: c.run("cd apps/erlang_web && rebar3 eunit")),
        ("pytest", lambda: c.run(f"{py} -m pytest" + (" -m 'not slow and not xen'" if fast else ""))),
    ]
    for name, step in steps:
        ui.say(f"[bold]== {name}[/bold]")
        step()


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "disk": "boot this raw PV disk image instead of the current build's pv disk",
        "no_validate": "boot even if the pre-boot check rejects the disk (to see what the loader says)",
        "json": "print the result as JSON",
    },
)
def xen_check(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    disk: str | None = None,
    no_validate: bool = False,
    json: bool = False,
) -> None:
    """Boot the build's PV disk as a Xen PV guest (Xen in QEMU) and GET /health and /version from it."""
    from pathlib import Path

    from pipeline.xen import check
    from pipeline.xen.machine import XenCheckFailed

    with failures():
        s = load(env, set_)
        ui.say("xen.check: Xen in QEMU, the pv disk booted through the PV-GRUB-compatible loader")
        try:
            result = check.check(
                s, Path(disk).resolve() if disk else None, say=ui.say, validate=not no_validate
            )
        except XenCheckFailed as err:
            for line in err.excerpt:
                ui.say(f"  | {line}")
            raise
        for r in result.guest.responses:
            ui.say(f"  GET {r.path} -> {r.status} {r.body.strip()[:200]}")
        ui.done(f"PV guest answered in {result.total:.1f}s total")
        if json:
            ui.result(result.record())


xen = Collection("xen")
xen.add_task(xen_check, name="check")

ns = Collection(build, settings, test, xen)
