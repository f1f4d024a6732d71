"""What runs on this machine: run (the image in QEMU), the local AWS (``local.*``) and the Xen check
(``xen.check``)."""

from __future__ import annotations

from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from pipeline import rules, ui
from pipeline.cli.common import COMMON_HELP, aws_clients, failures, load, whole_number
from pipeline.errors import ConfigError


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
        host_port = whole_number("port", port, lo=1, hi=65535)  # invoke hands the flag over as a string
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
        issued = ca.ensure_certificate(s, aws_clients(s))
        what = "imported into" if issued.imported else "already in"
        ui.done(f"certificate for localhost and 127.0.0.1 {what} the local AWS's ACM")
        ui.say(f"  clients verify it against the CA in {issued.ca_file}")
        ui.say(f'  serve HTTPS with it: --set deploy.certificate_arn="{issued.arn}"')
        ui.result(issued.arn)


local = Collection("local")
local.add_task(local_down)
local.add_task(local_status)
local.add_task(local_certificate)


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
    """Boot the build's PV disk as a Xen PV guest (Xen in QEMU) and GET its health and version paths."""

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
