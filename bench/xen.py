"""The Xen test host: dom0 size and time to a ready toolstack, against untrimmed/unprepared baselines.

    .venv/bin/python bench/xen.py [--runs 2]

Size: the dom0 initramfs (what the check boots) against every file of the packages it is made from
(the toolstack packages and the dom0 kernel's modules, as an untrimmed root would hold them).
Time: QEMU start to dom0's toolstack being ready, with the dom0 kernel given to Xen as the ELF taken
out of its bzImage once when the host is prepared (what the check does) against the bzImage as
shipped, which Xen then decompresses at every boot under emulation. Runs alternate, so both see the
same machine load.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config
from pipeline.images import debs
from pipeline.xen import host as xenhost
from pipeline.xen import recipe
from pipeline.xen.machine import XenMachine
from tests.xen_disks import ext2_disk


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def boot_to_toolstack(
    settings: config.Settings, r: recipe.XenRecipe, h: xenhost.PreparedHost, disk: Path, tmp: Path
) -> float:
    started = time.perf_counter()
    with XenMachine(h, r, settings.root / "templates", [disk], tmp, 256, settings.app.port) as m:
        m.wait_for(r"^xencheck: ready", r.timeouts.toolstack, "toolstack")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    settings = config.load()
    r = recipe.load(settings.root)
    h = xenhost.prepare(settings.root, r)
    kernel = r.dom0.kernel_package
    kernel_root = debs.fetch(kernel, r.packages[kernel], "ami/xen.toml").root
    untrimmed = sum(
        tree_size(debs.fetch(name, version, "ami/xen.toml").root)
        for name, version in r.packages.items()
        if name not in (r.hypervisor.package, "grub-xen-bin", "grub-common")
    ) - tree_size(kernel_root / "boot")
    ours = h.dom0_initrd.stat().st_size
    print(
        f"dom0 initramfs: {ours / 2**20:.1f} MiB; untrimmed packages: {untrimmed / 2**20:.1f} MiB "
        f"({untrimmed / ours:.0f}x)"
    )

    bzimage = next((kernel_root / "boot").glob("vmlinuz-*"))
    baseline = dataclasses.replace(h, dom0_kernel=bzimage)
    times: dict[str, list[float]] = {"prepared ELF": [], "bzImage (baseline)": []}
    with tempfile.TemporaryDirectory() as tmp:
        disk = ext2_disk(Path(tmp) / "empty.img", {"/readme": b"no menu.lst: never booted\n"}, size_mb=8)
        for run in range(args.runs):
            for name, host in (("prepared ELF", h), ("bzImage (baseline)", baseline)):
                seconds = boot_to_toolstack(settings, r, host, disk, Path(tmp) / f"{run}-{len(times[name])}")
                times[name].append(seconds)
                print(f"  run {run + 1}: {name:<20} {seconds:6.1f}s to a ready toolstack")
    for name, values in times.items():
        print(f"{name:<20} median {statistics.median(values):6.1f}s")
    gain = statistics.median(times["bzImage (baseline)"]) - statistics.median(times["prepared ELF"])
    print(f"prepared dom0 kernel saves {gain:.1f}s per boot")


if __name__ == "__main__":
    main()
