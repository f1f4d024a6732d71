"""Run Xen with dom0 in QEMU, start PV guests from disk images, and read everything they print.

QEMU (``-accel tcg``: the machine's KVM cannot run Xen) boots the hypervisor as a multiboot kernel
with dom0's kernel and initramfs as modules. One serial port carries Xen's log, dom0's console and,
copied by dom0 with a ``gN| `` prefix, the console of each guest; the host writes dom0's commands to
the same port (see ``templates/xen/dom0-init.sh.j2``). Each guest's disks are virtio disks of dom0
(a boot disk with ``snapshot=on``: the image file is never written), which dom0 gives to the guest
under the names EC2 gives the AMI's volumes (``sda1`` for the root, vbd 2049; see
``pipeline/images/devices.py``), so the guest and its loader see the disk numbers EC2 would give.
QEMU's user-mode network, restricted to this host, forwards a local port to the guest's address on
the bridge, so the host can talk HTTP to the guest.

Every console line is kept with the time it arrived and written to ``console.log`` in the run
directory. :class:`XenMachine` is a context manager: on leaving it, dom0 is told to power off and
QEMU is killed if it has not exited by then, so no QEMU process outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from pipeline import render
from pipeline.errors import PipelineError
from pipeline.images import devices
from pipeline.proc import which
from pipeline.xen.host import PreparedHost, cpio
from pipeline.xen.recipe import XenRecipe

log = logging.getLogger(__name__)

MAX_DISKS = 24  # virtio disks of dom0 (each a PCI device of QEMU's machine)
GUEST_ADDRESS = "10.0.2.15"  # the first address QEMU's DHCP server hands out: the guest's (dom0 asks none)
DISK_PREFIX = "/dev/vd"  # dom0's virtio disks, in the order of QEMU's -drive options
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")
_GUEST = re.compile(r"^g([a-t])\| ?(.*)$")
EXCERPT_LINES = 12


class XenCheckFailed(PipelineError):
    """The Xen check failed; ``excerpt`` holds the console lines that show why."""

    def __init__(self, message: str, excerpt: Sequence[str] = (), hint: str | None = None) -> None:
        shown = " | ".join(line.strip() for line in excerpt[-6:] if line.strip())
        super().__init__(message + (f"; console: {shown}" if shown else ""), hint=hint)
        self.excerpt = list(excerpt)


@dataclass(frozen=True)
class GuestDisk:
    """A disk file given to a guest under the name ``vdev`` (an EC2 device name without ``/dev/``)."""

    file: Path
    vdev: str
    writable: bool = False  # False: the file is never written (QEMU's snapshot=on)


@dataclass(frozen=True)
class Guest:
    """The disks of one guest, the boot disk first."""

    disks: tuple[GuestDisk, ...]

    @classmethod
    def booting(cls, disk: Path | Guest) -> Guest:
        """A guest with ``disk`` as its root volume (at EC2's PV root name), or ``disk`` itself."""
        if isinstance(disk, Guest):
            return disk
        return cls((GuestDisk(Path(disk), devices.PV_ROOT.removeprefix("/dev/")),))


@dataclass(frozen=True)
class Line:
    at: float  # seconds since QEMU started
    source: str  # "qemu", "xen", "dom0" or "ga", "gb", ...
    text: str

    def __str__(self) -> str:
        return f"[{self.at:7.2f}] {self.source:>4} {self.text}"


class XenMachine:
    """One QEMU running Xen, dom0 and (one after another) guests booted from ``disks``."""

    def __init__(
        self,
        host: PreparedHost,
        recipe: XenRecipe,
        templates: Path,
        guests: Sequence[Path | Guest],
        run_dir: Path,
        guest_memory_mb: int,
        guest_port: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guests = [Guest.booting(g) for g in guests]
        count = sum(len(g.disks) for g in self.guests)
        if not self.guests or len(self.guests) > 20 or count > MAX_DISKS:
            raise PipelineError(
                f"xen: expected 1-20 guests and at most {MAX_DISKS} disks, got {len(self.guests)} and {count}"
            )
        self.host = host
        self.recipe = recipe
        self.templates = templates
        self.disks = [d for g in self.guests for d in g.disks]
        self.run_dir = run_dir
        self.guest_memory_mb = guest_memory_mb
        self.guest_port = guest_port
        self.clock = clock
        self.http_port = free_port()
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[str] | None = None
        self._t0 = 0.0
        self.exit_code: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> XenMachine:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start QEMU (returns at once; wait for dom0 with :meth:`wait_ready`)."""
        qemu = which("qemu-system-x86_64")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        initrd = self.run_dir / "dom0.cpio"
        initrd.write_bytes(self.host.dom0_initrd.read_bytes() + self._overlay())
        for path in (self.host.dom0_kernel, initrd):
            if any(c in str(path) for c in ", "):
                raise PipelineError(
                    f"xen: {path}: QEMU cannot pass a multiboot module whose path holds a comma or space",
                    hint="set XDG_CACHE_HOME to a directory without them",
                )
        argv = self.argv(qemu, initrd)
        log.info("starting %s", " ".join(argv))
        self._log = (self.run_dir / "console.log").open("w", encoding="utf-8")
        self._t0 = self.clock()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole in close()
        )
        self._reader = threading.Thread(target=self._read, name="xen-console", daemon=True)
        self._reader.start()

    def argv(self, qemu: str, initrd: Path) -> list[str]:
        r = self.recipe
        dom0_mem = f"{r.dom0.memory_mb}M"
        xen_cmdline = f"{r.hypervisor.cmdline} dom0_mem={dom0_mem},max:{dom0_mem} dom0_max_vcpus=1"
        argv = [
            qemu,
            "-accel", f"tcg,tb-size={r.qemu.tb_size_mb}",
            "-cpu", r.qemu.cpu,
            "-smp", str(r.qemu.smp),
            "-m", str(r.qemu.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", "stdio",
            "-kernel", str(self.host.xen),
            "-append", xen_cmdline,
            "-initrd", f"{self.host.dom0_kernel} {r.dom0.cmdline},{initrd}",
            "-netdev",
            f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.http_port}-{GUEST_ADDRESS}:{self.guest_port}",
            "-device", "e1000,netdev=net0",
        ]  # fmt: skip
        for disk in self.disks:
            snapshot = "" if disk.writable else ",snapshot=on"
            file = _qemu_escape(str(disk.file.resolve()))
            argv += ["-drive", f"file={file},format=raw,if=virtio{snapshot}"]
        return argv

    def _overlay(self) -> bytes:
        """The run's own initramfs archive, appended to the cached one: /init, scripts, guest configs."""
        stage = self.run_dir / "overlay"
        ctx = {
            "modules": self.host.modules,
            "stop_timeout": int(self.recipe.timeouts.stop * 2 // 3),
        }
        files = {
            "init": render.render(self.templates, "xen/dom0-init.sh.j2", ctx),
            "etc/xen/scripts/block": render.render(self.templates, "xen/block.j2", {}),
            "etc/xen/scripts/vif": render.render(self.templates, "xen/vif.j2", {}),
            "etc/xen/xl.conf": 'autoballoon = "off"\n',
        }
        drive = 0
        for index, guest in enumerate(self.guests):
            name = chr(ord("a") + index)
            files[f"etc/xen/guest-{name}.cfg"] = render.render(
                self.templates,
                "xen/guest.cfg.j2",
                {
                    "index": name,
                    "memory_mb": self.guest_memory_mb,
                    "mac": _mac(index),
                    "vdevs": [d.vdev for d in guest.disks],
                },
            )
            # dom0's device of each of the guest's disks, in the guest's order (@DISK0@, @DISK1@, ...)
            files[f"etc/xen/guest-{name}.devs"] = (
                " ".join(_dom0_disk(drive + i) for i in range(len(guest.disks))) + "\n"
            )
            drive += len(guest.disks)
        for rel, text in files.items():
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755 if rel == "init" or "/scripts/" in rel else 0o644)
        (stage / "boot").mkdir(exist_ok=True)
        (stage / "boot" / "pvgrub.bin").write_bytes(self.host.loader.read_bytes())
        return cpio(stage)

    def close(self, timeout: float | None = None) -> None:
        """Power dom0 off and wait for QEMU to exit; kill it (and its process group) if it does not."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.send("poweroff")
            try:
                proc.wait(timeout=timeout if timeout is not None else self.recipe.timeouts.poweroff)
            except subprocess.TimeoutExpired:
                log.warning("QEMU did not exit after poweroff; killing it")
        _kill_group(proc)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.exit_code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- console ---------------------------------------------------------------------------------------

    def _read(self) -> None:
        stdout = self._proc.stdout if self._proc is not None else None
        if stdout is None:
            return
        for raw in stdout:
            # Carriage returns and escape sequences (GRUB's menu drawing) are dropped, not split on:
            # dom0 prefixes each guest line once, at its start.
            text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).strip()
            if text:
                self._add(text)
        with self._cond:
            self._cond.notify_all()

    def _add(self, text: str) -> None:
        m = _GUEST.match(text)
        if m:
            line = Line(self.clock() - self._t0, f"g{m.group(1)}", m.group(2))
        elif text.startswith("(XEN)"):
            line = Line(self.clock() - self._t0, "xen", text[5:].strip())
        elif text.startswith("qemu-system-"):
            line = Line(self.clock() - self._t0, "qemu", text)
        else:
            line = Line(self.clock() - self._t0, "dom0", text)
        if line.source.startswith("g") and not line.text.strip():
            return
        with self._cond:
            self.lines.append(line)
            if self._log is not None:
                self._log.write(str(line) + "\n")
                self._log.flush()
            self._cond.notify_all()

    def send(self, command: str) -> None:
        """Write one command line to dom0's console."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            log.debug("console closed; %r not sent", command)

    def elapsed(self) -> float:
        return self.clock() - self._t0

    def wait_for(
        self,
        pattern: str,
        timeout: float,
        what: str,
        source: str | None = None,
        start: int = 0,
        fail: str | None = None,
        excerpt_source: str | None = None,
    ) -> tuple[int, re.Match[str]]:
        """Wait for a console line matching ``pattern`` (from ``source`` if given), at or after line
        index ``start``; return its index and match.

        Raises :class:`XenCheckFailed` with a console excerpt when ``timeout`` passes, QEMU exits, or a
        line matching ``fail`` comes first.
        """
        want = re.compile(pattern)
        bad = re.compile(fail) if fail else None
        deadline = self.clock() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    if source is None or line.source == source:
                        m = want.search(line.text)
                        if m:
                            return index, m
                    if bad is not None and bad.search(line.text):
                        raise XenCheckFailed(
                            f"xen: {what}: {line.text.strip()} (after {line.at:.0f}s)",
                            self.excerpt(excerpt_source or source, upto=index + 1),
                            hint=f"full console: {self.run_dir / 'console.log'}",
                        )
                    index += 1
                if not self.running and index >= len(self.lines):
                    raise XenCheckFailed(
                        f"xen: {what}: QEMU exited (status {self._proc.returncode if self._proc else '?'}) "
                        f"after {self.elapsed():.0f}s",
                        self.excerpt(),  # everything: QEMU's own complaint is not a guest's line
                        hint=f"full console: {self.run_dir / 'console.log'}",
                    )
                left = deadline - self.clock()
                if left <= 0:
                    raise XenCheckFailed(
                        f"xen: {what}: nothing after {timeout:.0f}s",
                        self.excerpt(excerpt_source or source),
                        hint=f"full console: {self.run_dir / 'console.log'}",
                    )
                self._cond.wait(timeout=min(left, 1.0))

    def excerpt(
        self, source: str | None = None, upto: int | None = None, count: int = EXCERPT_LINES
    ) -> list[str]:
        """The last ``count`` console lines (of ``source``, plus Xen's lines about guests)."""
        with self._cond:
            lines = self.lines[:upto] if upto is not None else list(self.lines)
        if source is not None:
            lines = [ln for ln in lines if ln.source == source or (ln.source == "xen" and _about_guest(ln))]
        return [f"{ln.source}: {ln.text}" for ln in lines[-count:]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _about_guest(line: Line) -> bool:
    return bool(re.search(r"\bd[1-9]\d*v\d|[Dd]omain [1-9]|RIP:", line.text))


def _dom0_disk(index: int) -> str:
    """dom0's name of QEMU's ``index``-th virtio disk: /dev/vda ... /dev/vdz, /dev/vdaa, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return DISK_PREFIX + letters


def _mac(index: int) -> str:
    return f"00:16:3e:5a:00:{index + 1:02x}"  # 00:16:3e is Xen's own MAC prefix


def _qemu_escape(value: str) -> str:
    return value.replace(",", ",,")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End QEMU's process group: TERM, then KILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
