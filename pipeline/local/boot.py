"""``invoke run``: boot the finished build of the current inputs in QEMU, and smoke-test it.

Direct kernel boot (the build's ``boot/vmlinuz``, ``boot/initrd.img`` and ``boot/cmdline``) is the
fast default; ``disk=True`` boots the exact ``hvm-uefi`` disk image through OVMF, which is what EC2
boots (through a copy-on-write overlay: the build's image is never written), with NVMe disks as on
Nitro. A scratch disk is
attached: a new sparse file, removed afterwards, or ``scratch=PATH`` to keep and reuse one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import build
from pipeline.config import Settings
from pipeline.errors import ImageError
from pipeline.local.qemu import QEMU, QEMU_HINT, Vm, VmSpec, http_get, make_scratch, remove_abandoned
from pipeline.proc import which


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class RunResult:
    build_id: str
    mode: str
    url: str
    boot_seconds: float
    console_log: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


def spec_for(
    settings: Settings,
    manifest: dict[str, Any],
    build_dir: Path,
    *,
    disk: bool,
    scratch: Path | None,
    port: int,
    name: str,
    console_log: Path,
) -> VmSpec:
    """How to boot a finished beam build: its files, the app's port forwarded, ``scratch`` attached."""
    if manifest.get("target") != "beam":
        raise ImageError(
            f"build {manifest.get('build_id')} is a {manifest.get('target')} image; "
            "invoke run boots beam images",
            hint="build with --target beam",
        )
    image = manifest["image"]
    common: dict[str, Any] = {
        "name": name,
        "console_log": console_log,
        "scratch": scratch,
        "forwards": {settings.app.port: port},
        "memory_mb": settings.local.vm_memory_mb,
    }
    if disk:
        disks = {d["name"]: d for d in image["disks"]}
        # NVMe disks, as on Nitro: the boot path (OVMF, the kernel's built-in NVMe driver) and the
        # init script's choice of scratch disk see what they will see on EC2.
        return VmSpec(disk=build_dir / disks["hvm-uefi"]["file"], disk_bus="nvme", **common)
    return VmSpec(
        kernel=build_dir / image["kernel"]["file"],
        initrd=build_dir / image["initramfs"]["file"],
        cmdline=image["cmdline"]["direct"],
        **common,
    )


def boot(
    settings: Settings,
    *,
    disk: bool = False,
    scratch: Path | None = None,
    port: int | None = None,
    check: bool = False,
    timeout: float = 300.0,
    on_ready: Callable[[RunResult], None] | None = None,
    wait: Callable[[Vm], None] | None = None,
) -> RunResult:
    """Boot the current build; with ``check`` smoke-test it, else ``wait`` (until Ctrl-C) then stop.

    Nothing is left behind on any way out: the VM is stopped and a scratch file this call made is
    removed (a ``scratch`` given by the caller is kept).
    """
    which(QEMU, hint=QEMU_HINT)
    app = settings.app
    found = build.find(settings)
    mode = "uefi" if disk else "direct"
    run_dir = settings.work_dir / "run" / found.build_id
    console_log = run_dir / f"console-{mode}.log"
    made_scratch = None
    if run_dir.is_dir():
        remove_abandoned(run_dir.iterdir(), r"scratch-(?P<pid>\d+)\.img$")
    if scratch is None:
        made_scratch = scratch = run_dir / f"scratch-{os.getpid()}.img"
        scratch.unlink(missing_ok=True)
        make_scratch(scratch, settings.deploy.scratch_size_gib)
    elif not scratch.exists():
        make_scratch(scratch, settings.deploy.scratch_size_gib)
    try:
        spec = spec_for(
            settings, found.manifest, found.directory, disk=disk, scratch=scratch, port=port or 0,
            name=f"{settings.app.name}-{mode}", console_log=console_log,
        )  # fmt: skip
        with Vm(spec) as vm:
            try:
                seconds = vm.wait_healthy(app.port, path=app.health_path, timeout=timeout)
            except ImageError as err:
                tail = console_tail(console_log)
                raise ImageError(f"{err.message}; console: {tail}", hint=err.hint) from err
            result = RunResult(found.build_id, mode, vm.url(settings.app.port), seconds, console_log)
            if on_ready is not None:
                on_ready(result)
            if check:
                result.checks = smoke_test(vm.ports[settings.app.port], settings, found.build_id, console_log)
            elif wait is not None:
                wait(vm)
        return result
    finally:
        if made_scratch is not None:
            made_scratch.unlink(missing_ok=True)


def smoke_test(port: int, settings: Settings, build_id: str, console_log: Path) -> list[Check]:
    """The checks ``invoke run --check`` makes against a running image: what the pipeline knows of
    every app (its health path, its version path, the scratch disk the image mounts), nothing of any
    one app (what an app itself answers is for its own tests)."""
    app = settings.app
    checks = []
    status, body = http_get(port, app.health_path)
    text = body.decode(errors="replace").strip()
    checks.append(Check(f"GET {app.health_path}", status == 200, f"{status} {text[:80]}"))
    if app.version_path:
        status, body = http_get(port, app.version_path)
        text = body.decode(errors="replace").strip()
        ok = status == 200 and build_id in text
        checks.append(Check(f"GET {app.version_path}", ok, f"{status} {text[:100]}"))
    else:
        checks.append(Check("build id", True, "not checked: app.version_path is empty"))
    mounted = f"mounted on {app.scratch_dir}"
    lines = [ln for ln in _console_lines(console_log) if "scratch:" in ln]
    detail = lines[-1].split("init: ", 1)[-1] if lines else "no scratch line in the console"
    checks.append(Check("scratch disk", any(mounted in ln for ln in lines), detail))
    return checks


def console_tail(console_log: Path, lines: int = 3) -> str:
    """The last lines the guest printed, joined into one line for an error message."""
    tail = [ln for ln in _console_lines(console_log) if ln.strip()][-lines:]
    return " | ".join(ln.strip()[:160] for ln in tail) or "(nothing printed)"


def _console_lines(console_log: Path) -> list[str]:
    try:
        text = console_log.read_bytes().decode(errors="replace")
    except OSError:
        return []
    return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", ln).replace("\r", "") for ln in text.splitlines()]


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
