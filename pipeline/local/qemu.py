"""Run a beam image as a QEMU VM on this machine: direct kernel boot or the exact UEFI disk image.

A :class:`Vm` is one QEMU process with user-mode networking (host ports on 127.0.0.1 forwarded to
guest ports), an optional scratch disk, the serial console written to a log file and a QMP socket
for a clean shutdown. Several can run at once (the local cloud runs one per instance): each has its
own work directory, ports and files.

Lifecycle and cleanup: :meth:`Vm.start` starts QEMU and returns at once; :meth:`Vm.wait_healthy`
polls an HTTP path until it answers 200; :meth:`Vm.stop` asks the guest to power off (the ACPI power
button, which the image turns into a graceful stop of the app), waits, then ends QEMU if it has not
exited, and removes the VM's temporary files (the console log is kept). ``start`` cleans up itself
if it fails, and ``with Vm(...) as vm:`` stops the VM on every way out of the block. QEMU is also
told to die with the process that started it (``PR_SET_PDEATHSIG``), so a killed pipeline leaves no
VM behind; the thread that starts a VM must therefore outlive it.

Acceleration: ``tcg`` (software emulation) works everywhere. ``kvm`` is used only when asked for:
a ``/dev/kvm`` that exists is not proof that it works (some hosts have a PVM-only KVM module).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pipeline.errors import ImageError, PipelineError
from pipeline.proc import alive, run, which

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
QEMU_HINT = "install the Debian packages qemu-system-x86, qemu-utils and ovmf (./setup.sh)"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# QEMU's minimal firmware for direct kernel boot (Debian's qemu-system-data): it loads the kernel
# from QEMU's fw_cfg without SeaBIOS's device scan, which takes a good part of a second under TCG.
QBOOT = Path("/usr/share/qemu/qboot.rom")
_PR_SET_PDEATHSIG = 1


class PortInUse(PipelineError):
    """A host port asked for is taken by another process."""


@dataclass(frozen=True)
class VmSpec:
    """What to boot and how. Give ``kernel`` + ``initrd`` + ``cmdline`` (direct) or ``disk`` (UEFI)."""

    name: str
    console_log: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    disk: Path | None = None  # a raw UEFI disk image; never written (the VM writes to an overlay)
    scratch: Path | None = None  # raw scratch disk file (sparse); written by the guest
    forwards: dict[int, int] = field(default_factory=dict)  # guest port -> host port (0: pick a free one)
    memory_mb: int = 256
    cpus: int = 1
    accel: Literal["tcg", "kvm"] = "tcg"
    disk_bus: Literal["virtio", "nvme"] = "virtio"
    nic_option_rom: bool = False  # QEMU's iPXE ROM for the NIC: only slows the boot (no network boot)
    qboot: bool = True  # direct boot through qboot (if installed) instead of SeaBIOS

    @property
    def mode(self) -> Literal["direct", "uefi"]:
        return "uefi" if self.disk is not None else "direct"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUse` if ``port`` on ``host`` cannot be bound."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"port {port} on {host} is already in use", hint="choose another with --port, or omit it"
            ) from err


class Vm:
    """One QEMU VM. Not thread-safe; use one object per VM."""

    def __init__(
        self,
        spec: VmSpec,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.sleep = sleep
        self.ports: dict[int, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.healthy_at: float | None = None
        self.work: Path | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start QEMU (returns once the process runs). Cleans up after itself if anything fails."""
        qemu = which(QEMU, hint=QEMU_HINT)
        spec = self.spec
        self._check_inputs()
        for guest, host in spec.forwards.items():
            if host:
                check_port_free(host)
            self.ports[guest] = host or free_port()
        base = Path(tempfile.gettempdir()) / "erlang-unikernel-vms"
        base.mkdir(exist_ok=True)
        remove_abandoned(base.iterdir(), r"(?P<pid>\d+)-vm-")
        self.work = Path(tempfile.mkdtemp(dir=base, prefix=f"{os.getpid()}-vm-{spec.name}-"))
        try:
            argv = [qemu, *self._args()]
            spec.console_log.parent.mkdir(parents=True, exist_ok=True)
            spec.console_log.write_bytes(b"")
            log.info("starting %s: %s", spec.name, " ".join(argv))
            self.started_at = self.clock()
            with (self.work / "qemu.stderr").open("wb") as err:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches us, not QEMU
                    preexec_fn=_die_with_parent,  # only async-signal-safe work before exec
                )
        except BaseException:
            self.stop(grace=0)
            raise

    def url(self, guest_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[guest_port]}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, guest_port: int, path: str = "/health", timeout: float = 180.0) -> float:
        """Poll ``GET path`` until it answers 200; return seconds since QEMU was started.

        Raises :class:`ImageError` (with QEMU's last words or the console log's path) if QEMU exits
        or the deadline passes; the VM is left running for the caller to inspect or stop.
        """
        deadline = self.started_at + timeout
        while True:
            if not self.running():
                raise ImageError(
                    f"VM {self.spec.name} exited before {path} answered: {self._last_words()}",
                    hint=f"see the console log {self.spec.console_log}",
                )
            status, _ = http_get(self.ports[guest_port], path, timeout=2.0)
            if status == 200:
                self.healthy_at = self.clock()
                return self.healthy_at - self.started_at
            if self.clock() > deadline:
                raise ImageError(
                    f"VM {self.spec.name}: GET {path} did not answer 200 within {timeout:.0f}s "
                    f"(last: {status or 'no answer'})",
                    hint=f"see the console log {self.spec.console_log}",
                )
            self.sleep(0.1)

    def stop(self, grace: float = 60.0) -> int | None:
        """Power the guest off (ACPI power button), wait up to ``grace`` seconds, then end QEMU.

        Returns QEMU's exit status (None if it never started). Idempotent; always removes the
        VM's temporary files. A second Ctrl-C while waiting ends QEMU at once.
        """
        status = None
        try:
            if self.proc is not None:
                try:
                    if self.proc.poll() is None and grace > 0:
                        with contextlib.suppress(OSError, ValueError):
                            self.qmp("system_powerdown")
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            self.proc.wait(timeout=grace)
                finally:
                    if self.proc.poll() is None:
                        if grace > 0:
                            log.warning("VM %s still runs after %.0fs; ending QEMU", self.spec.name, grace)
                        self.proc.send_signal(signal.SIGTERM)
                        try:
                            self.proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            self.proc.kill()
                            self.proc.wait()
                status = self.proc.returncode
        finally:
            if self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)
                self.work = None
        return status

    def __enter__(self) -> Vm:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A guest that has answered runs the app: ask it to stop gracefully. One that has not (a
        # failed boot, Ctrl-C during the boot) has nothing to save and may not react to the button.
        clean = exc_type is None or exc_type is KeyboardInterrupt
        self.stop(grace=60.0 if clean and self.healthy_at is not None else 0)

    # -- QMP --------------------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its result."""
        if self.work is None:
            raise OSError("VM is not running")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.work / "qmp.sock"))
            f = s.makefile("rwb")
            json.loads(f.readline())  # QMP's hello
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                f.write(json.dumps(cmd).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise OSError(f"QMP {cmd['execute']}: {reply['error'].get('desc')}")
                    break
            return reply.get("return")

    # -- internals --------------------------------------------------------------------------------------

    def _check_inputs(self) -> None:
        spec = self.spec
        if spec.mode == "direct":
            if spec.kernel is None or spec.initrd is None:
                raise ImageError(f"VM {spec.name}: direct boot needs a kernel and an initramfs")
            needed = [spec.kernel, spec.initrd]
        else:
            needed = [spec.disk, OVMF_CODE, OVMF_VARS]  # type: ignore[list-item]
            which("qemu-img", hint=QEMU_HINT)
        for path in needed:
            if not Path(path).is_file():
                raise ImageError(f"{path}: not found", hint=QEMU_HINT if "OVMF" in str(path) else None)

    def _args(self) -> list[str]:
        spec = self.spec
        assert self.work is not None
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.ports.items())
        args = [
            "-name", spec.name,
            "-accel", spec.accel,
            "-machine", "q35",
            "-cpu", "max" if spec.accel == "tcg" else "host",
            "-m", str(spec.memory_mb),
            "-smp", str(spec.cpus),
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", f"file:{spec.console_log}",
            "-qmp", f"unix:{self.work / 'qmp.sock'},server=on,wait=off",
            # Exit instead of rebooting: a guest whose init died (panic=-1) ends the VM.
            "-no-reboot",
            "-netdev", f"user,id=net0{fwd}",
            # romfile= : no iPXE option ROM; the VM never boots from the network.
            "-device", "virtio-net-pci,netdev=net0" + ("" if spec.nic_option_rom else ",romfile="),
        ]  # fmt: skip
        if spec.mode == "direct":
            if spec.qboot and QBOOT.is_file():
                args += ["-bios", str(QBOOT)]
            args += ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.cmdline]
        else:
            vars_copy = self.work / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            overlay = self.work / "boot.qcow2"
            run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(Path(spec.disk).resolve()),  # type: ignore[arg-type]
                 "-F", "raw", str(overlay)],
                what="qemu-img",
            )  # fmt: skip
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                *self._disk("boot", overlay, "qcow2"),
            ]  # fmt: skip
        if spec.scratch is not None:
            args += self._disk("scratch", spec.scratch, "raw")
        return args

    def _disk(self, name: str, path: Path, fmt: str) -> list[str]:
        drive = f"file={path},format={fmt},if=none,id={name},cache=unsafe"
        if self.spec.disk_bus == "nvme":
            return ["-drive", drive, "-device", f"nvme,drive={name},serial={name}"]
        return ["-drive", drive, "-device", f"virtio-blk-pci,drive={name}"]

    def _last_words(self) -> str:
        text = ""
        if self.work is not None and (self.work / "qemu.stderr").is_file():
            text = (self.work / "qemu.stderr").read_text(errors="replace").strip()
        if not text and self.proc is not None:
            text = f"QEMU exit status {self.proc.returncode}"
        return text.splitlines()[-1] if text else "no output"


def remove_abandoned(paths: Iterable[Path], pattern: str) -> None:
    """Remove the files and directories whose name matches ``pattern`` (from its start) with a
    ``pid`` group naming a process that is gone.

    A pipeline killed outright (SIGKILL) cannot clean up; its VM died with it (PDEATHSIG), and the
    next run removes what it left.
    """
    for path in paths:
        m = re.match(pattern, path.name)
        if m is None or alive(int(m.group("pid"))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def make_scratch(path: Path, size_gib: int) -> Path:
    """Create a sparse, all-zero scratch disk file (the guest puts a file system on it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:
        f.truncate(size_gib << 30)
    return path


def http_get(port: int, path: str, timeout: float = 5.0, method: str = "GET") -> tuple[int, bytes]:
    """``(status, body)`` of one request to 127.0.0.1:port, or ``(0, b"")`` if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


@contextlib.contextmanager
def running(spec: VmSpec) -> Iterator[Vm]:
    """``with running(spec) as vm:`` - a started VM, stopped (and cleaned up) on the way out."""
    vm = Vm(spec)
    with vm:
        yield vm


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
