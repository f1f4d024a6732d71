"""Invoke tasks: the command line of the pipeline.

    invoke build ami deploy      source -> image -> AMI -> live blue/green release
    invoke test                  the whole test suite (lint, types, EUnit, pytest)

Tasks parse flags, load the settings, call one function of the ``pipeline`` package and print. Every
error of the pipeline ends the task with its one-line message and exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from pipeline import config, rules, ui
from pipeline.errors import (
    AwsError,
    CompileError,
    ConfigError,
    DeployError,
    ImageError,
    PipelineError,
    TemplateError,
    ToolFailed,
    ToolMissing,
)

logging.basicConfig(
    level=os.environ.get("PIPELINE_LOG_LEVEL", "WARNING").upper(),
    format="%(levelname)s %(name)s: %(message)s",
)

ENV_HELP = "environment from pipeline.toml (default: its default_env)"
SET_HELP = "override a setting for this run, e.g. --set app.config.motd=Hi (repeatable)"
COMMON_HELP = {"env": ENV_HELP, "set": SET_HELP}


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI system cancelling the job) acts like Ctrl-C


@contextmanager
def failures() -> Iterator[None]:
    """Turn pipeline errors into a one-line message on stderr and exit status 1. A file system error
    that escaped the pipeline's own handling (a path it was given, a full disk) is one line too.
    SIGTERM acts like Ctrl-C (a deploy rolls back, an upload stops cleanly)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except PipelineError as err:
        if err.hint is None:
            err.hint = _fallback_hint(err)
        raise Exit(f"error: {_printable(str(err))}", code=1) from None
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise Exit(
            f"error: {_printable(where + (err.strerror or str(err)))} "
            "(hint: check the path, its permissions and the free space, then run the task again)",
            code=1,
        ) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


# The next step for an error raised without a hint of its own, by kind (most specific first).
FALLBACK_HINTS: tuple[tuple[type[PipelineError], str], ...] = (
    (ConfigError, "fix the setting or file named at the start of the line"),
    (TemplateError, "fix the template at the line named (templates/ of the project)"),
    (CompileError, "fix the Erlang source and run the build again"),
    (ToolMissing, "./setup.sh installs the programs the pipeline runs"),
    (ToolFailed, "the program's own message is above; PIPELINE_LOG_LEVEL=INFO shows more"),
    (ImageError, "nothing half-made was kept; invoke build --force builds the image again"),
    (AwsError, "check aws.endpoint, aws.profile and aws.region; invoke iam-policy prints the permissions"),
    (DeployError, "invoke status shows the stack's state"),
)


def _fallback_hint(err: PipelineError) -> str:
    for kind, hint in FALLBACK_HINTS:
        if isinstance(err, kind):
            return hint
    return "PIPELINE_LOG_LEVEL=INFO shows what led to it"


def _printable(line: str) -> str:
    """The error line as the terminal gets it: control characters (an escape sequence, a line break)
    and bytes that are not UTF-8 escaped, so a value can neither spoof nor break the line."""
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)


def load(env: str | None, overrides: list[str] | None, **cli: Any) -> config.Settings:
    """Settings for ``env`` with ``--set`` overrides and the task's own flags (``section__key=value``)."""
    flags = {}
    for name, value in cli.items():
        if value is not None:
            section, key = name.split("__")
            flags[f"--{key.replace('_', '-')}"] = f"{section}.{key}={_toml(value)}"
    return config.load(env=env, overrides=list(overrides or []), flags=flags)


def _clients(settings: config.Settings) -> Any:
    """The AWS clients for ``settings``, after saying which AWS they act on (every AWS task's first line)."""
    from botocore.exceptions import ProfileNotFound

    from pipeline.aws import session

    try:
        clients = session.clients(settings)
    except ProfileNotFound:
        raise ConfigError(
            f'{settings.where("aws.profile")}: there is no AWS profile "{settings.aws.profile}"',
            hint='aws configure list-profiles lists them; or set aws.profile = "" for the default '
            "credential chain",
        ) from None
    ui.say(f"AWS: {clients.describe()}")
    return clients


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
        result = images.publish(s, _clients(s), builder.find(s), dry_run=dry_run)
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
        s = load(env, set_, ami__keep=_whole("keep", keep))
        minutes = _whole("grace-minutes", grace_minutes, hi=10 * 365 * 24 * 60)
        clients = _clients(s)
        grace = collector.GRACE if minutes is None else timedelta(minutes=minutes)
        p = collector.plan(clients, s, grace=grace)
        _show_gc_plan(p, "gc: removing" if yes else "gc: would remove (dry run; --yes to remove)")
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


def _show_gc_plan(p: Any, title: str) -> None:
    """The table of what gc removes (or would), with the reason for each; or that nothing goes."""
    if p.removals:
        ui.table(title, ["region", "kind", "id", "build", "created", "why it goes"], p.rows())
    else:
        ui.done(f"gc: nothing to remove in {', '.join(p.regions)} ({len(p.kept)} kept)")


def _whole(flag: str, value: str | None, lo: int = 0, hi: int = 10**9) -> int | None:
    """A flag that takes a whole number (invoke hands flags without a default over as strings)."""
    if value is None:
        return None
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ConfigError(
            f"--{flag}: expected a whole number, got {rules.show(value)}",
            hint=f"for example --{flag} {lo + 1}",
        ) from None
    if number < lo:
        raise ConfigError(
            f"--{flag}: expected {lo} or more, got {number}", hint=f"for example --{flag} {lo + 1}"
        )
    if number > hi:
        raise ConfigError(f"--{flag}: expected at most {hi}, got {number}", hint=f"for example --{flag} {hi}")
    return number


def _scratch_file(value: str | None) -> Any:
    """``--scratch``: a file to keep the scratch disk in; made if missing, in a directory that exists."""
    from pathlib import Path

    if value is None:
        return None
    if not value or "\0" in value:
        raise ConfigError(
            f"--scratch: expected a file path, got {rules.show(value)}", hint="--scratch scratch.img"
        )
    path = Path(value).expanduser()
    if path.exists() and not path.is_file():
        raise ConfigError(
            f"--scratch: {rules.show(value)} is not a regular file", hint="name a file (made if missing)"
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"--scratch: the directory of {rules.show(value)} does not exist",
            hint="name a file in an existing directory (the file is made if missing)",
        )
    return path


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
    port: str | None = None,
    check: bool = False,
) -> None:
    """Boot the built image in QEMU and wait for it to answer; Ctrl-C shuts it down."""
    import threading

    from pipeline.local import boot

    def ready(r: boot.RunResult) -> None:
        ui.done(
            f"{r.mode} boot of {r.build_id}: {r.url} answered {s.app.health_path} after {r.boot_seconds:.1f}s"
        )
        ui.say(f"  console log: {r.console_log}")
        if not check:
            ui.say("  Ctrl-C shuts the VM down")
            ui.result(r.url)

    def until_interrupted(vm: Any) -> None:
        stop = threading.Event()
        while vm.running() and not stop.wait(0.5):
            pass
        if not vm.running():
            raise Exit(
                f"error: the VM stopped by itself (hint: its console log says why: {vm.spec.console_log})",
                code=1,
            )

    with failures():  # a kill (SIGTERM) shuts the VM down like Ctrl-C
        host_port = _whole("port", port, lo=1, hi=65535)  # invoke hands the flag over as a string
        scratch_file = _scratch_file(scratch)
        s = load(env, set_)
        try:
            result = boot.boot(
                s,
                disk=disk,
                scratch=scratch_file,
                port=host_port,
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
                raise Exit(
                    f"error: smoke test failed (hint: the checks above say which; the console log is "
                    f"{result.console_log})",
                    code=1,
                )
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


@task(
    name="down",
    iterable=["set_"],
    help={**COMMON_HELP, "wipe": "also forget the local AWS's state (its journal of requests)"},
)
def local_down(c: Context, env: str | None = None, set_: list[str] | None = None, wipe: bool = False) -> None:
    """Stop the local AWS of this checkout, its VMs and its load balancer (state kept unless --wipe)."""
    from pipeline.local import control, server

    with failures():
        s = load(env, set_)
        state = control.status(s) or {}
        vms = sum(1 for m in state.get("machines", []) if m.get("pid"))
        was = server.stop(s, wipe=wipe)
        ui.done(
            (
                f"stopped the local AWS, its load balancer and {vms} VM(s)"
                if was
                else "the local AWS was not running"
            )
            + (", state wiped" if wipe else "")
        )


@task(name="status", iterable=["set_"], help={**COMMON_HELP, "json": "print the state as JSON on stdout"})
def local_status(
    c: Context, env: str | None = None, set_: list[str] | None = None, json: bool = False
) -> None:
    """The local cloud: its VMs (instance, colour, build, port, health, uptime) and listeners."""
    from pipeline.local import control

    with failures():
        s = load(env, set_)
        state = control.status(s)
        control.show_status(state, s)
        if json:
            ui.result(state)


@task(name="certificate", iterable=["set_"], help=COMMON_HELP)
def local_certificate(c: Context, env: str | None = None, set_: list[str] | None = None) -> None:
    """A certificate for 127.0.0.1 from a CA of this checkout, in the local AWS's ACM; prints its ARN."""
    from pipeline.errors import ConfigError
    from pipeline.local import ca

    with failures():
        s = load(env, set_)
        if s.aws.endpoint != "local":
            raise ConfigError(
                "local.certificate: aws.endpoint is not local",
                hint="on AWS, request or import a certificate in ACM and set deploy.certificate_arn",
            )
        issued = ca.ensure_certificate(s, _clients(s))
        what = "imported into" if issued.imported else "already in"
        ui.done(f"certificate for localhost and 127.0.0.1 {what} the local AWS's ACM")
        ui.say(f"  clients verify it against the CA in {issued.ca_file}")
        ui.say(f'  serve HTTPS with it: --set deploy.certificate_arn="{issued.arn}"')
        ui.result(issued.arn)


local = Collection("local")
local.add_task(local_down)
local.add_task(local_status)
local.add_task(local_certificate)


# -- deploy and its companions -----------------------------------------------------------------------------

DEPLOY_HELP = {
    **COMMON_HELP,
    "yes": "do not ask for confirmation",
    "dry_run": "show the plan and change nothing",
}


def _confirm(yes: bool) -> Callable[[str], bool]:
    """The question asked before a change: --yes answers it; otherwise the user at the terminal does."""

    def ask(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            ui.warn("stdin is not a terminal, so there is no one to ask: pass --yes to go ahead")
            return False
        answer = ui.console.input(f"{question} [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return ask


@task(
    iterable=["set_"],
    help={**DEPLOY_HELP, "build_id": "deploy this build's AMI (default: the build of the current inputs)"},
)
def deploy(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
    build_id: str | None = None,
) -> None:
    """Roll the build's AMI out blue/green: new colour, health gate, traffic in steps, rollback on failure."""
    from pipeline.aws import deploy as deployer
    from pipeline.aws import status as stack_status

    with failures():
        if build_id is not None and not rules.BUILD_ID.ok(build_id):
            raise rules.bad_value("--build-id", rules.BUILD_ID.expect, build_id, rules.BUILD_ID.hint)
        s = load(env, set_)
        clients = _clients(s)
        outcome = deployer.deploy(s, clients, deployer.Runtime(confirm=_confirm(yes)), build_id, dry_run)
        stack_status.show_status(stack_status.status(s, clients), outcome.stack)
        if outcome.url:
            ui.result(outcome.url)


@task(iterable=["set_"], help=COMMON_HELP)
def plan(c: Context, env: str | None = None, set_: list[str] | None = None) -> None:
    """What build, ami and deploy would change, changing nothing."""
    from pipeline.aws import deploy as deployer

    with failures():
        s = load(env, set_)
        rows = deployer.plan(s, _clients(s))
        ui.table(
            f"plan for env {s.env}",
            ("stage", "action", "detail"),
            [(r.stage, r.action, r.detail) for r in rows],
        )


@task(iterable=["set_"], help={**COMMON_HELP, "json": "print the status as JSON on stdout"})
def status(c: Context, env: str | None = None, set_: list[str] | None = None, json: bool = False) -> None:
    """Colours, AMIs, build ids, capacities, weights, target health and the stack's status."""
    from pipeline.aws import status as stack_status
    from pipeline.aws.tags import stack_name

    with failures():
        s = load(env, set_)
        st = stack_status.status(s, _clients(s))
        stack_status.show_status(st, stack_name(s.app.name, s.env))
        if json:
            ui.result(st.record() if st else None)


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "colour": "blue or green (default: the live colour; both while the traffic is split)",
        "instance": "one instance id instead of a colour's instances",
        "tail": "only the last N lines of each instance",
        "follow": "keep printing new lines as they come (Ctrl-C ends it)",
    },
)
def logs(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    colour: str | None = None,
    instance: str | None = None,
    tail: str | None = None,
    follow: bool = False,
) -> None:
    """The console output of the environment's instances, each line prefixed with instance and colour."""
    from pipeline.aws import logs as consoles
    from pipeline.aws.tags import COLORS

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with failures():
        color = next((c for c in COLORS if c == colour), None)
        if colour is not None and color is None:
            raise ConfigError(
                f'--colour: expected "blue" or "green", got "{colour}"',
                hint="leave --colour out for the live colour (both while the traffic is split)",
            )
        if colour is not None and instance is not None:
            raise ConfigError("--colour and --instance: give one of them", hint="an instance has one colour")
        lines = _whole("tail", tail)
        s = load(env, set_)
        clients = _clients(s)
        if follow:
            consoles.follow(clients, s, write, color, instance, lines)
        else:
            consoles.show(clients, s, write, color, instance, lines)


@task(
    iterable=["set_"],
    help={
        **DEPLOY_HELP,
        "to": "a build id (or its start) from invoke history, or blue|green: the release to return to "
        "(default: the last live release)",
    },
)
def rollback(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
    to: str | None = None,
) -> None:
    """Return to the last live release (its AMI goes back on the idle colour if needed), health-gated."""
    import re

    from pipeline.aws import deploy as deployer
    from pipeline.aws import rollback as back
    from pipeline.aws import status as stack_status

    with failures():
        if to is not None and to not in ("blue", "green") and not re.fullmatch(r"[0-9a-f]{4,64}", to):
            raise ConfigError(
                f'--to: expected a build id (hex, as invoke history shows it) or "blue"/"green", got '
                f"{rules.show(to)}",
                hint="invoke history lists the releases that went live",
            )
        s = load(env, set_)
        clients = _clients(s)
        outcome = back.rollback(s, clients, deployer.Runtime(confirm=_confirm(yes)), to, dry_run)
        stack_status.show_status(stack_status.status(s, clients), outcome.stack)


@task(iterable=["set_"], help={**COMMON_HELP, "json": "print the history as JSON on stdout"})
def history(c: Context, env: str | None = None, set_: list[str] | None = None, json: bool = False) -> None:
    """The environment's releases, newest first: build, AMI, when it went live, how it ended."""
    from pipeline.aws import rollback as back
    from pipeline.aws.tags import stack_name

    with failures():
        s = load(env, set_)
        r = back.releases(s, _clients(s))
        back.show_history(r, stack_name(s.app.name, s.env))
        if json:
            ui.result(r.record() if r else None)


@task(iterable=["set_"], help=DEPLOY_HELP)
def destroy(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
) -> None:
    """Delete the environment's stack (after confirmation); show what gc could then remove."""
    from pipeline.aws import status as stack_status
    from pipeline.aws.deployment import Runtime

    with failures():
        s = load(env, set_)
        gone = stack_status.destroy(s, _clients(s), Runtime(confirm=_confirm(yes)), dry_run)
        if gone.collectable is None:
            ui.say("after the delete, invoke gc shows which AMIs and snapshots can go")
            return
        _show_gc_plan(gone.collectable, "gc could now remove (invoke gc --yes removes them)")
        ui.result(gone.collectable.record(applied=False))


@task
def synth(c: Context) -> None:
    """Rewrite cfn/ from the stack blueprint (one template per environment of pipeline.toml)."""
    from pipeline.aws import stack

    with failures():
        root = config.find_root()
        changed = stack.synth(root)
        for path in changed:
            ui.done(
                f"wrote {path.relative_to(root)}" if path.exists() else f"removed {path.relative_to(root)}"
            )
        if not changed:
            ui.done("cfn/ is up to date")


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "account": "12-digit account id for the ARNs (default: any)",
        "role": "print the policy of the environment's CloudFormation service role instead",
    },
)
def iam_policy(
    c: Context, env: str | None = None, set_: list[str] | None = None, account: str = "*", role: bool = False
) -> None:
    """Print the least-privilege IAM policy the pipeline needs (ami, deploy, gc) as JSON (an alias in
    ami.kms_key_id is resolved to its key's ARN through AWS)."""
    from pipeline.aws import bootstrap, iam, service_role

    with failures():
        if account != "*" and not rules.ACCOUNT_ID.ok(account):
            raise rules.bad_value("--account", rules.ACCOUNT_ID.expect, account, 'or "*" for any account')
        s = load(env, set_)
        if role:
            ui.result(iam.to_json(service_role.policy(s, account)))
            return
        key = bootstrap.resolve_key(s, _clients(s)) if s.ami.kms_key_id else None
        ui.result(iam.policy_json(s, account, key))


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

    from pipeline.xen import check
    from pipeline.xen.machine import XenCheckFailed

    with failures():
        disk_file = _disk_file(disk)
        s = load(env, set_)
        ui.say("xen.check: Xen in QEMU, the pv disk booted through the PV-GRUB-compatible loader")
        try:
            result = check.check(s, disk_file, say=ui.say, validate=not no_validate)
        except XenCheckFailed as err:
            for line in err.excerpt:
                ui.say(f"  | {line}")
            raise
        for r in result.guest.responses:
            ui.say(f"  GET {r.path} -> {r.status} {r.body.strip()[:200]}")
        ui.done(f"PV guest answered in {result.total:.1f}s total")
        if json:
            ui.result(result.record())


def _disk_file(value: str | None) -> Any:
    """``xen.check --disk``: an existing raw disk image file."""
    from pathlib import Path

    if value is None:
        return None
    path = Path(value).expanduser() if value and "\0" not in value else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"--disk: {rules.show(value)} is not a disk image file",
            hint="name the raw PV disk to boot, or leave --disk out for the current build's",
        )
    return path.resolve()


xen = Collection("xen")
xen.add_task(xen_check, name="check")

ns = Collection(
    build, run, ami, deploy, plan, status, logs, rollback, history, destroy, gc, synth, iam_policy, settings,
    test,
)  # fmt: skip
ns.add_collection(local)
ns.add_collection(xen)
