"""Whether this machine has the memory for more local VMs, decided before any is started.

A VM of ``M`` MiB can grow to ``M`` plus QEMU's own overhead. The room for new VMs is the kernel's
``MemAvailable`` minus a margin kept for everything else, minus what the VMs already running may still
grow by (the part of their limit they have not touched yet; a booting VM has touched little). The
deploy stage asks before it starts a colour's instances, and the instance runner asks again before
each VM, so the machine is never driven into swapping or the OOM killer by the local cloud.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

MIB = 1 << 20
# QEMU's own memory beside the guest's (TCG's translation cache, firmware, devices): a 256 MiB beam
# guest's QEMU was measured at 340-380 MiB resident.
QEMU_OVERHEAD_MB = 128
MARGIN_MB = 512  # kept free for the host: the pipeline, the local AWS, the build tools


class NotEnoughMemory(PipelineError):
    """Starting the VMs asked for would take more memory than the machine has available."""


@dataclass(frozen=True)
class Running:
    """A VM that runs: its memory limit and what it has touched so far (its QEMU process's RSS)."""

    memory_mb: int
    rss_mb: int

    @property
    def growth_mb(self) -> int:
        return max(0, self.memory_mb + QEMU_OVERHEAD_MB - self.rss_mb)


def check_room(
    count: int,
    memory_mb: int,
    available_mb: int,
    running: Sequence[Running] = (),
    margin_mb: int = MARGIN_MB,
    what: str = "the local cloud",
) -> None:
    """Raise :class:`NotEnoughMemory` unless ``count`` more VMs of ``memory_mb`` fit (pure)."""
    if count <= 0:
        return
    needed = count * (memory_mb + QEMU_OVERHEAD_MB)
    growth = sum(r.growth_mb for r in running)
    room = available_mb - margin_mb - growth
    if needed > room:
        raise NotEnoughMemory(
            f"{what}: {count} VM(s) of {memory_mb} MiB need {needed} MiB, but only {max(room, 0)} MiB "
            f"are free for VMs (MemAvailable {available_mb} MiB, minus {margin_mb} MiB kept for the host"
            + (f", minus {growth} MiB the {len(running)} running VM(s) may still use" if running else "")
            + ")",
            hint="lower local.capacity or local.vm_memory_mb, or stop other VMs (invoke local.down)",
        )


def available_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The kernel's estimate of memory available for new work (MemAvailable), in MiB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise PipelineError(f"{meminfo}: no MemAvailable line", hint="a Linux kernel of 3.14 or later has it")


def rss_mb(pid: int) -> int:
    """Resident memory of process ``pid`` in MiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0
