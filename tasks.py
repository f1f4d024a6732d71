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


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "disk": "boot the exact hvm-uefi disk image through UEFI firmware (OVMF) instead of the kernel",
        "scratch": "scratch disk file to attach and keep (made if missing); default: a new one, removed",
        "port": "host port forwarded to the app (default: a free one)",
        "check": "smoke-test the image, shut it down and exit 0 if it passed, 1 if not",
    },
)
def run(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    disk: bool = False,
    scratch: str | None = None,
    port: int | None = None,
    check: bool = False,
) -> None:
    """Boot the built image in QEMU and wait for it to answer; Ctrl-C shuts it down."""
    import signal
    import threading
    from pathlib import Path

    from pipeline.local import boot

    def ready(r: boot.RunResult) -> None:
        ui.done(f"{r.mode} boot of {r.build_id}: {r.url} answered /health after {r.boot_seconds:.1f}s")
        ui.say(f"  console log: {r.console_log}")
        if not check:
            ui.say("  Ctrl-C shuts the VM down")
            ui.result(r.url)

    def until_interrupted(vm: Any) -> None:
        stop = threading.Event()
        while vm.running() and not stop.wait(0.5):
            pass
        if not vm.running():
            raise Exit(f"error: the VM stopped by itself; see {vm.spec.console_log}", code=1)

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # a kill (SIGTERM) shuts the VM down like Ctrl-C

    signal.signal(signal.SIGTERM, terminated)
    with failures():
        s = load(env, set_)
        try:
            result = boot.boot(
                s,
                disk=disk,
                scratch=Path(scratch) if scratch else None,
                port=port,
                check=check,
                on_ready=ready,
                wait=until_interrupted,
            )
        except KeyboardInterrupt:
            ui.done("VM shut down")
            return
        if check:
            for item in result.checks:
                mark = "[green]ok[/green]" if item.ok else "[red]FAILED[/red]"
                ui.say(f"  {mark} {item.name}: {item.detail}")
            if not result.passed:
                raise Exit("error: smoke test failed", code=1)
            ui.done("smoke test passed; VM shut down")


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


ns = Collection(build, run, settings, test)
