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
            seconds = vm.wait_healthy(settings.app.port, timeout=timeout)
            result = RunResult(found.build_id, mode, vm.url(settings.app.port), seconds, console_log)
            if on_ready is not None:
                on_ready(result)
            if check:
                result.checks = smoke_test(vm.ports[settings.app.port], settings, found.build_id)
            elif wait is not None:
                wait(vm)
        return result
    finally:
        if made_scratch is not None:
            made_scratch.unlink(missing_ok=True)


def smoke_test(port: int, settings: Settings, build_id: str) -> list[Check]:
    """The checks ``invoke run --check`` makes against a running image."""
    checks = []
    status, body = http_get(port, "/")
    text = body.decode(errors="replace").strip()
    checks.append(Check("GET /", status == 200 and settings.app.greeting in text, f"{status} {text[:80]}"))
    status, body = http_get(port, "/version")
    version = _json(body)
    checks.append(
        Check("GET /version", status == 200 and version.get("build_id") == build_id, f"{status} {version}")
    )
    status, body = http_get(port, "/health")
    storage = _json(body).get("storage")
    checks.append(Check("scratch disk", status == 200 and storage == "disc", f"storage {storage}"))
    s1, b1 = http_get(port, "/counter")
    s2, b2 = http_get(port, "/counter", method="POST")
    s3, b3 = http_get(port, "/counter")
    before, after, read = (_json(b).get("counter") for b in (b1, b2, b3))
    ok = (s1, s2, s3) == (200, 200, 200) and isinstance(before, int) and after == before + 1 == read
    checks.append(Check("POST /counter", ok, f"{before} -> {after}, then GET {read}"))
    return checks


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
