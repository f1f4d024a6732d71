"""The stages users chain and their housekeeping: build and ami (then deploy, in :mod:`release`), gc;
settings and test."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from pipeline import ui
from pipeline.cli.common import COMMON_HELP, aws_clients, failures, load, whole_number
from pipeline.errors import PipelineError


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
            f"{len(app['applications'])} applications, {len(m.get('dependencies', []))} dependencies, "
            f"config {m['config_digest'][:12]}"
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
        "dry_run": "show what would be uploaded, registered and copied; change nothing",
    },
)
def ami(c: Context, env: str | None = None, set_: list[str] | None = None, dry_run: bool = False) -> None:
    """Upload the current build's disk as an EBS snapshot and register it as an AMI. Safe to re-run."""
    from pipeline import build as builder
    from pipeline.aws import ami as images

    with failures():
        s = load(env, set_)
        result = images.publish(s, aws_clients(s), builder.find(s), dry_run=dry_run)
        _report_ami(result)
        ui.result(result.record())


def _report_ami(result: Any) -> None:
    what = "what it would do (dry run)" if result.dry_run else "what was done"
    ui.table(
        f"ami {result.name}: {what}",
        ["region", "what"],
        [(region, action) for region, action in result.actions],
    )
    for region, image in sorted(result.images.items()):
        ui.done(f"{region}: {image.image_id} ({image.state})")


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "yes": "remove what the table lists (without it, gc only shows what would go)",
        "keep": "images to keep per target and virtualization (default: ami.keep)",
        "grace_minutes": "leave snapshots younger than this alone (default 120)",
    },
)
def gc(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    keep: str | None = None,
    grace_minutes: str | None = None,
) -> None:
    """Remove old AMIs and snapshots of this app and env; keeps the newest and those stacks use."""
    from datetime import timedelta

    from pipeline.aws import gc as collector

    with failures():
        s = load(env, set_, ami__keep=whole_number("keep", keep))
        minutes = whole_number("grace-minutes", grace_minutes, hi=10 * 365 * 24 * 60)
        clients = aws_clients(s)
        grace = collector.GRACE if minutes is None else timedelta(minutes=minutes)
        p = collector.plan(clients, s, grace=grace)
        show_gc_plan(p, "gc: removing" if yes else "gc: would remove (dry run; --yes to remove)")
        if not yes:
            ui.result(p.record(applied=False))
            return
        failed = collector.apply(clients, s, p)
        for removal, why in failed:
            ui.warn(f"{removal.region} {removal.kind} {removal.resource_id}: {why}")
        if failed:
            raise PipelineError(f"gc: {len(failed)} of {len(p.removals)} removals failed (listed above)")
        if p.removals:
            ui.done(f"gc: removed {len(p.removals)}")
        ui.result(p.record(applied=True))


def show_gc_plan(p: Any, title: str) -> None:
    """The table of what gc removes (or would), with the reason for each; or that nothing goes."""
    if p.removals:
        ui.table(title, ["region", "kind", "id", "build", "created", "why it goes"], p.rows())
    else:
        ui.done(f"gc: nothing to remove in {', '.join(p.regions)} ({len(p.kept)} kept)")


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
        # Two workers, a test file each at a time (its module fixtures are made once): the VM boots wait
        # on QEMU and the local cloud much of the time, so the suite takes about half as long.
        (
            "pytest",
            lambda: c.run(
                f"{py} -m pytest -n 2 --dist loadfile" + (" -m 'not slow and not xen'" if fast else "")
            ),
        ),
    ]
    for name, step in steps:
        ui.say(f"[bold]== {name}[/bold]")
        step()
