"""``invoke xen.check``: boot a build's ``pv`` disk as a Xen PV guest and talk HTTP to the app in it.

The disk is the file that becomes the PV AMI. It is first checked the way PV-GRUB reads it
(:func:`pipeline.xen.pvdisk.inspect`), then booted: Xen and dom0 in QEMU, the guest created with the
PV-GRUB-compatible loader as its kernel and the volumes an instance of the AMI gets, under the names
EC2 gives them (``pipeline/images/devices.py``: the disk as the root ``sda1``, vbd 2049, and a new
blank scratch volume at its launch-template name, if the target has one), and the app's health and
version paths (``app.health_path``, ``app.version_path``) fetched from this host through a forwarded
port. Then the guest is asked to shut down and the machine powered off. Each phase's time is recorded.

Failures raise :class:`~pipeline.xen.machine.XenCheckFailed` with the console lines that show why
(the loader's "pvgrub: FAIL" line, GRUB's error, Xen's crash report); every phase has a deadline
(``[timeouts]`` in ``ami/xen.toml``) and QEMU never outlives the call.
"""

from __future__ import annotations

import http.client
import logging
import re
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.images import devices
from pipeline.xen import host as xenhost
from pipeline.xen import pvdisk, recipe
from pipeline.xen.machine import Guest, GuestDisk, XenCheckFailed, XenMachine

log = logging.getLogger(__name__)

Say = Callable[[str], None]
DEFAULT_PATHS = ("/health", "/version")  # app.health_path and app.version_path unless set


def probe_paths(settings: Settings) -> tuple[str, ...]:
    """The app's health path, then its version path when it has one (``app.*_path``)."""
    return tuple(p for p in (settings.app.health_path, settings.app.version_path) if p)


KEEP_RUNS = 10  # console logs of the last runs kept under .pipeline/xen/
# The loader's own report (no menu.lst), and GRUB's when the boot entry fails (no such file, not a Xen
# kernel): GRUB then waits at its menu, as GRUB 0.97 does, so its error line is the failure.
_LOADER_FAIL = r"^pvgrub: FAIL|^error: |^\s*Failed to boot both default and fallback entries"


@dataclass
class Phase:
    name: str
    seconds: float


@dataclass
class Response:
    path: str
    status: int
    body: str


@dataclass
class GuestResult:
    disk: Path
    loader: str = ""  # the loader's "found ..." line
    outcome: str = ""  # "answered", "exited", "crashed"
    responses: list[Response] = field(default_factory=list)
    crash_rip: int | None = None
    excerpt: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    disk: Path
    inspected: pvdisk.PvDisk | None
    host: xenhost.PreparedHost
    guest: GuestResult
    phases: list[Phase]
    console: Path

    @property
    def total(self) -> float:
        return sum(p.seconds for p in self.phases)

    def record(self) -> dict[str, Any]:
        return {
            "disk": str(self.disk),
            "menu_lst": self.inspected.menu_lst if self.inspected else None,
            "kernel": self.inspected.entry.kernel if self.inspected else None,
            "responses": [{"path": r.path, "status": r.status, "body": r.body} for r in self.guest.responses],
            "phases": {p.name: round(p.seconds, 1) for p in self.phases},
            "total_seconds": round(self.total, 1),
            "console": str(self.console),
        }


class Timer:
    """Phase stopwatch: ``lap(name)`` records the time since the previous lap."""

    def __init__(self, say: Say, clock: Callable[[], float] = time.monotonic) -> None:
        self.say = say
        self.clock = clock
        self.phases: list[Phase] = []
        self._last = clock()

    def lap(self, name: str, note: str = "") -> None:
        now = self.clock()
        seconds, self._last = now - self._last, now
        self.phases.append(Phase(name, seconds))
        self.say(f"  {name:<12} {seconds:6.1f}s  {note}".rstrip())


# -- the check of a build --------------------------------------------------------------------------------


def pv_disk_of(settings: Settings) -> Path:
    """The ``pv`` disk of the finished build of the current inputs."""
    from pipeline import build

    result = build.find(settings)
    for disk in result.manifest.get("image", {}).get("disks", []):
        if disk.get("name") == "pv":
            return result.directory / str(disk["file"])
    raise PipelineError(
        f"build {result.build_id} ({settings.image.target}) has no pv disk",
        hint="the check boots the disk that becomes the PV AMI; build a target that makes one",
    )


def check(
    settings: Settings,
    disk: Path | None = None,
    say: Say = lambda s: None,
    cache: Path | None = None,
    validate: bool = True,
) -> CheckResult:
    """Boot ``disk`` (default: the current build's pv disk) under Xen and GET the app's health and
    version paths (``app.health_path``, ``app.version_path``).

    Returns the result with phase times when both answer 200; raises :class:`PipelineError` (bad
    disk, before anything boots) or :class:`XenCheckFailed` (with a console excerpt) otherwise.
    ``validate=False`` skips the check before booting, to see what the loader itself makes of a disk.
    """
    timer = Timer(say)
    disk = disk or pv_disk_of(settings)
    inspected = pvdisk.inspect(disk) if validate else None
    if inspected is not None:
        timer.lap("validate", f"{inspected.menu_lst}: {inspected.entry.kernel} ({inspected.kernel.packing})")
    r = recipe.load(settings.assets_dir)
    test_host = xenhost.prepare(settings.assets_dir, r, cache)
    timer.lap("test host", f"{test_host.directory}")
    with instance_disks(settings, disk) as instance:
        say(
            "  volumes      "
            + ", ".join(f"{d.vdev} ({'root' if i == 0 else 'scratch'})" for i, d in enumerate(instance.disks))
        )
        with running(settings, r, test_host, [instance], timer) as machine:
            guest = boot_guest(machine, "a", disk, timer)
            guest.responses = probe(machine, "a", r.timeouts.boot, timer, probe_paths(settings))
            guest.outcome = "answered"
            stop_guest(machine, "a", timer)
        timer.lap("poweroff")
    return CheckResult(disk, inspected, test_host, guest, timer.phases, machine.run_dir / "console.log")


@contextmanager
def instance_disks(settings: Settings, disk: Path) -> Iterator[Guest]:
    """The volumes an instance of the AMI made from ``disk`` gets, named as EC2 names them: the disk as
    the root volume and, when the target has one, a new blank sparse scratch volume of
    ``deploy.scratch_size_gib`` (removed on exit)."""
    layout = devices.mapping(settings.image.target, "pv", settings.app.storage)
    scratch_file: Path | None = None
    disks = []
    for device in layout:
        if device.role == "root":
            disks.append(GuestDisk(disk, device.vdev))
        else:
            scratch_file = _runs_dir(settings) / f"scratch-{secrets.token_hex(4)}.img"
            with scratch_file.open("xb") as f:  # sparse and all zeros, as a new EBS volume reads
                f.truncate(settings.deploy.scratch_size_gib << 30)
            disks.append(GuestDisk(scratch_file, device.vdev, writable=True))
    try:
        yield Guest(tuple(disks))
    finally:
        if scratch_file is not None:
            scratch_file.unlink(missing_ok=True)


@contextmanager
def running(
    settings: Settings,
    r: recipe.XenRecipe,
    test_host: xenhost.PreparedHost,
    guests: Sequence[Path | Guest],
    timer: Timer,
) -> Iterator[XenMachine]:
    """A running Xen test host with the disks of ``guests`` attached (a path: a guest with that disk as
    its root volume), dom0 ready; powered off (QEMU gone) on exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_runs_dir(settings)))
    machine = XenMachine(
        test_host,
        r,
        settings.assets_dir / "templates",
        guests,
        run_dir,
        guest_memory_mb=settings.image.memory_mb,
        guest_port=settings.app.port,
    )
    try:
        with machine:
            t = r.timeouts.toolstack
            i, _ = machine.wait_for(r"Building a PV Dom0", t, "Xen did not start dom0", source="xen")
            timer.lap("xen", "hypervisor up, building dom0")
            i, _ = machine.wait_for(r"^xencheck: dom0 init", t, "dom0 did not start", start=i)
            timer.lap("dom0 kernel", "dom0 Linux up, /init running")
            machine.wait_for(
                r"^xencheck: ready", t, "dom0's toolstack did not start", start=i, fail=r"^xencheck: error"
            )
            timer.lap("toolstack", "xenstored, xenconsoled, bridge")
            yield machine
    finally:
        # Keep the console log; the run's copy of the dom0 initramfs is rebuilt at every run.
        (run_dir / "dom0.cpio").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "overlay", ignore_errors=True)
        _prune(run_dir.parent, keep=KEEP_RUNS)


def _prune(runs: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` run directories (each holds a console log)."""
    old = sorted(runs.glob("run-*"), key=lambda p: p.stat().st_mtime)[:-keep]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


def _runs_dir(settings: Settings) -> Path:
    d = settings.work_dir / "xen"
    d.mkdir(parents=True, exist_ok=True)
    return d


def boot_guest(machine: XenMachine, name: str, disk: Path, timer: Timer) -> GuestResult:
    """Create guest ``name`` and wait until the loader has found menu.lst."""
    r = machine.recipe
    start = len(machine.lines)
    machine.send(f"start {name}")
    i, _ = machine.wait_for(
        rf"^xencheck: created {name}$",
        r.timeouts.create,
        f"guest {name} ({disk.name}) was not created",
        start=start,
        fail=rf"^xencheck: create-failed {name}",
        excerpt_source=None,
    )
    timer.lap("create", f"xl create guest {name}")
    try:
        _, m = machine.wait_for(
            r"^pvgrub: found (\S+)",
            r.timeouts.loader,
            f"the loader found no menu.lst on {disk.name}",
            source=f"g{name}",
            start=i,
            fail=_LOADER_FAIL + rf"|^xencheck: gone {name}",
            excerpt_source=f"g{name}",
        )
    except XenCheckFailed:
        machine.send(f"destroy {name}")
        raise
    timer.lap("loader", f"found {m.group(1)}")
    return GuestResult(disk=disk, loader=m.group(0))


def probe(
    machine: XenMachine,
    name: str,
    timeout: float,
    timer: Timer,
    paths: tuple[str, ...] = DEFAULT_PATHS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Response]:
    """GET each of ``paths`` once the app answers the first (its health path) with 200; fail if the
    guest dies first."""
    base = f"http://127.0.0.1:{machine.http_port}"
    deadline = machine.clock() + timeout
    mark = len(machine.lines)
    gone = re.compile(rf"^xencheck: gone {name} (\w+)|{_LOADER_FAIL}")
    last_error = "no answer"
    while True:
        for line in machine.lines[mark:]:
            if (line.source in ("dom0", f"g{name}")) and gone.search(line.text):
                machine.send(f"destroy {name}")
                raise XenCheckFailed(
                    f"xen: guest {name} stopped before the app answered: {line.text}",
                    machine.excerpt(f"g{name}"),
                    hint=f"full console: {machine.run_dir / 'console.log'}",
                )
        mark = len(machine.lines) - 1 if machine.lines else 0
        response = _get(base, paths[0])
        if isinstance(response, Response) and response.status == 200:
            break
        last_error = response if isinstance(response, str) else f"HTTP {response.status}"
        if machine.clock() > deadline or not machine.running:
            raise XenCheckFailed(
                f"xen: GET {paths[0]} of guest {name} did not answer 200 within {timeout:.0f}s "
                f"(last: {last_error})",
                machine.excerpt(f"g{name}"),
                hint=f"full console: {machine.run_dir / 'console.log'}",
            )
        sleep(1.0)
    timer.lap("boot", f"GET {paths[0]} answered 200")
    responses = []
    for path in paths:
        got = _get(base, path)
        if not isinstance(got, Response) or got.status != 200:
            raise XenCheckFailed(
                f"xen: GET {path} of guest {name}: {got if isinstance(got, str) else f'HTTP {got.status}'}",
                machine.excerpt(f"g{name}"),
            )
        responses.append(got)
    timer.lap("http", " ".join(f"{r.path}={r.status}" for r in responses))
    return responses


def _get(base: str, path: str) -> Response | str:
    """GET ``base + path``: the response, or the reason there was none."""
    try:
        with urllib.request.urlopen(base + path, timeout=5) as resp:  # noqa: S310 - a local http:// URL
            return Response(path, resp.status, resp.read(4096).decode(errors="replace"))
    except urllib.error.HTTPError as err:
        return Response(path, err.code, err.read(4096).decode(errors="replace"))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        return str(getattr(err, "reason", err))


def stop_guest(machine: XenMachine, name: str, timer: Timer) -> str:
    """Ask guest ``name`` to shut down (as EC2's stop does); return "stopped" or "destroyed"."""
    start = len(machine.lines)
    machine.send(f"stop {name}")
    _, m = machine.wait_for(
        rf"^xencheck: (stopped|destroyed) {name}\b",
        machine.recipe.timeouts.stop,
        f"guest {name} did not stop",
        start=start,
    )
    timer.lap("shutdown", f"guest {name} {m.group(1)}")
    return m.group(1)


def wait_gone(machine: XenMachine, name: str, timeout: float, start: int = 0) -> tuple[str, int]:
    """Wait until guest ``name`` exits or crashes; return (``exited``/``crashed``, line index)."""
    i, m = machine.wait_for(
        rf"^xencheck: gone {name} (\w+)", timeout, f"guest {name} did not stop", source="dom0", start=start
    )
    return m.group(1), i


def crash_rip(machine: XenMachine, start: int = 0) -> int | None:
    """The instruction pointer Xen reported for the last crashed guest vCPU, if any."""
    rip = None
    for line in machine.lines[start:]:
        if line.source == "xen":
            m = re.search(r"RIP:\s+[0-9a-f]{4}:\[<([0-9a-f]+)>\]", line.text)
            if m:
                rip = int(m.group(1), 16)
    return rip


def boot_to_kernel_entry(
    machine: XenMachine, name: str, disk: Path, inspected: pvdisk.PvDisk, timer: Timer
) -> GuestResult:
    """Boot guest ``name`` up to the point where the loader jumps into the kernel.

    For an image that cannot run here (LING built by the railing stand-in), the proof that the loader
    found menu.lst, accepted and loaded the ELF and started it is where the guest stops: Xen reports
    the crash of its first instruction at the ELF's entry point. Raises :class:`XenCheckFailed` if the
    loader failed or the guest stopped anywhere else.
    """
    guest = boot_guest(machine, name, disk, timer)
    outcome, _ = wait_gone(machine, name, machine.recipe.timeouts.boot)
    guest.outcome = outcome
    guest.excerpt = machine.excerpt(f"g{name}")
    failed = [ln for ln in machine.lines if ln.source == f"g{name}" and re.search(_LOADER_FAIL, ln.text)]
    if failed:
        raise XenCheckFailed(f"xen: the loader failed on {disk.name}: {failed[0].text}", guest.excerpt)
    guest.crash_rip = crash_rip(machine, start=0)
    entry = inspected.kernel.entry
    if outcome != "crashed" or guest.crash_rip != entry:
        rip = "none" if guest.crash_rip is None else f"0x{guest.crash_rip:x}"
        raise XenCheckFailed(
            f"xen: guest {name} {outcome} with RIP {rip}, expected a stop at the kernel's entry 0x{entry:x}",
            guest.excerpt,
        )
    timer.lap("kernel entry", f"guest stopped at entry 0x{entry:x} after the loader jumped there")
    return guest
