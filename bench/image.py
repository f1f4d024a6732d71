"""Benchmark of the beam image: sizes and boot-to-first-HTTP-200 under QEMU.

    .venv/bin/python bench/image.py [--env dev] [--runs 5] [--no-boot] [--no-examples]

Prints, for the current build of the environment (built first if needed):
- sizes: kernel, initramfs (compressed and unpacked) and each disk (bytes and non-zero 512 KiB
  blocks); the trimmed Erlang runtime against the full installation it is cut from; the initramfs
  with each compression the kernel accepts;
- boot time from QEMU start to the first ``GET /health`` 200, median of ``--runs`` boots: the image
  as built (direct kernel boot and the hvm-uefi disk through OVMF) against an unoptimised boot of the
  same image measured in the same run (gzip -1 initramfs as in the feasibility run, no kernel
  parameters but the console, the NIC's iPXE ROM loaded, SeaBIOS), so that load from other processes affects
  both sides alike. The feasibility run's figures are printed for reference;
- for each app under ``examples/`` (built in a temporary copy; ``mix release`` first for Elixir):
  the image's initramfs and trimmed runtime against the size of the release it is made from, as
  rebar3 or mix made it (with erts where the release ships its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package (which QEMU health checks use).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import build, config, erlang  # noqa: E402
from pipeline.images import initramfs, runtime  # noqa: E402
from pipeline.local import boot  # noqa: E402
from pipeline.local.qemu import Vm, VmSpec, make_scratch  # noqa: E402

# The unoptimised feasibility run (Debian cloud kernel, host erts with kernel/stdlib/mnesia, gzip -1).
FEASIBILITY = {"initramfs_unpacked": 21_000_000, "initramfs_gzip": 13_000_000, "boot_seconds": 9.6}
TARGETS = {"initramfs_compressed": 8_000_000, "direct_boot_seconds": 5.0}
MB = 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-boot", action="store_true", help="sizes only")
    ap.add_argument("--no-examples", action="store_true", help="skip the examples' sizes")
    args = ap.parse_args()
    settings = config.load(ROOT, env=args.env)
    result = build.build(settings)
    image = result.manifest["image"]
    d = result.directory
    print(f"build {result.build_id} (env {settings.env}), kernel {image['kernel']['release']}")

    # -- sizes ------------------------------------------------------------------------------------------
    ird = image["initramfs"]
    raw = _unpack(d / ird["file"], ird["compression"])
    tc = erlang.host_toolchain()
    full = runtime.untrimmed_size(tc)
    print("\nsizes")
    print(f"  kernel                 {image['kernel']['size'] / MB:7.2f} MB")
    print(
        f"  initramfs              {ird['size'] / MB:7.2f} MB {ird['compression']}, "
        f"{ird['unpacked_size'] / MB:.2f} MB unpacked   (feasibility run: "
        f"{FEASIBILITY['initramfs_gzip'] / MB:.0f} MB gzip, {FEASIBILITY['initramfs_unpacked'] / MB:.0f} MB "
        f"unpacked; target < {TARGETS['initramfs_compressed'] / MB:.0f} MB)"
    )
    print(
        f"  Erlang runtime         {image['runtime']['size'] / MB:7.2f} MB trimmed "
        f"({', '.join(sorted(image['runtime']['applications']))}) vs {full / MB:.1f} MB for the full "
        f"installation in {tc.root} ({100 * image['runtime']['size'] / full:.0f}%)"
    )
    for disk in image["disks"]:
        blocks = disk["nonzero_blocks"]
        print(
            f"  disk {disk['name']:<17} {disk['size'] / MB:7.0f} MB, {blocks} non-zero blocks "
            f"({blocks * 512 / 1024:.1f} MiB to upload)"
        )
    print("  initramfs by compression (same archive):")
    variants: dict[str, Path] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-image-"))
    for method in ("gzip", "xz", "zstd"):
        started = time.monotonic()
        data = initramfs.compress(raw, method)
        took = time.monotonic() - started
        variants[method] = tmp / f"initrd.{method}"
        variants[method].write_bytes(data)
        print(f"    {method:<5} {len(data) / MB:6.2f} MB, compressed in {took:5.1f}s")
    baseline_initrd = tmp / "initrd.gzip1"
    baseline_initrd.write_bytes(
        subprocess.run(["gzip", "-1"], input=raw, capture_output=True, check=True).stdout
    )

    if not args.no_examples:
        examples(settings.env)
    if args.no_boot:
        return 0

    # -- boot times -------------------------------------------------------------------------------------
    print(
        f"\nboot to first HTTP 200, median of {args.runs} (QEMU TCG; other load on this machine adds noise)"
    )
    direct = boot.spec_for(
        settings,
        result.manifest,
        d,
        disk=False,
        scratch=None,
        port=0,
        name="bench",
        console_log=tmp / "c.log",
    )
    uefi = boot.spec_for(
        settings, result.manifest, d, disk=True, scratch=None, port=0, name="bench", console_log=tmp / "c.log"
    )
    cases = {
        "direct, unoptimised": replace(
            direct, initrd=baseline_initrd, cmdline="console=ttyS0", nic_option_rom=True, qboot=False
        ),
        "direct, as built": direct,
        "hvm-uefi disk (OVMF)": uefi,
    }
    for method in ("gzip", "xz"):
        if method != ird["compression"]:
            cases[f"direct, {method} initramfs"] = replace(direct, initrd=variants[method])
    times: dict[str, list[tuple[float, ...]]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, spec in cases.items():  # interleaved, so load changes hit every case alike
            times[name].append(_boot_once(spec, settings.app.port, tmp))
    print(
        "  (phases on the guest clock, from the kernel's start: /init runs, the network is up, the\n"
        "  scratch disk is mounted, the Erlang VM starts; the rest to the first 200 is the VM's boot and\n"
        "  the app's start, and the time before the kernel runs is QEMU's and the firmware's)"
    )
    for name, samples in times.items():
        total, kinit, net, scratch, erl = (statistics.median(s[i] for s in samples) for i in range(5))
        runs = ", ".join(f"{s[0]:.1f}" for s in samples)
        print(
            f"  {name:<24} {total:6.1f}s   (/init {kinit:.2f}s, network {net:.2f}s, scratch {scratch:.2f}s, "
            f"Erlang VM {erl:.2f}s; all runs {runs})"
        )
    print(
        f"  feasibility run (unoptimised, reference): {FEASIBILITY['boot_seconds']}s; "
        f"target for direct boot: < {TARGETS['direct_boot_seconds']}s"
    )
    return 0


def examples(env: str) -> None:
    """Each example's image against the release it is made from: the release's code (lib/, releases/,
    overlays; no start scripts) as rebar3 or mix made it, against the same in the image (trimmed to
    ebin/priv, beams stripped), then what the image adds underneath (erts programs, shared libraries)
    and the compressed initramfs."""
    print(f"\nexamples (env {env}): the release's code as made and in the image, and what the image adds")
    print(f"  {'example':<16}{'release':>9}{'in image':>10}{'erts+libs':>11}{'initramfs':>11}")
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp:
        for directory in sorted(p for p in (ROOT / "examples").iterdir() if (p / "pipeline.toml").is_file()):
            project = Path(shutil.copytree(directory, Path(tmp) / directory.name))
            if (project / "mix.exs").is_file():
                made = subprocess.run(
                    ["mix", "release", "--overwrite"], cwd=project, capture_output=True,
                    env={**os.environ, "MIX_ENV": "prod", "HOME": tmp},
                )  # fmt: skip
                if made.returncode != 0:
                    print(f"  {directory.name:<16} skipped: mix release failed")
                    continue
            s = config.load(project, env=env)
            result = build.build(s)
            image = result.manifest["image"]
            release = _tree_size(build.compiled(s).directory, skip=("bin", "erts-"))
            unpacked = Path(tmp) / f"{directory.name}.initrd"
            unpacked.mkdir()
            ird = image["initramfs"]
            raw = _unpack(result.directory / ird["file"], ird["compression"])
            cpio = ["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"]
            subprocess.run(cpio, input=raw, cwd=unpacked, check=True)
            code = _tree_size(unpacked / runtime.ROOT.lstrip("/"), skip=("erts-",))
            underneath = image["runtime"]["size"] - code
            erts = "its own erts" if image["runtime"]["own_erts"] else "this machine's erts"
            print(
                f"  {directory.name:<16}{release / MB:>7.1f}MB{code / MB:>8.1f}MB{underneath / MB:>9.1f}MB"
                f"{ird['size'] / MB:>9.1f}MB  (code {100 * code / release:.0f}% of the release; {erts})"
            )


def _tree_size(root: Path, skip: tuple[str, ...]) -> int:
    """Bytes of the files under ``root`` outside its top-level entries starting with ``skip``."""
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(skip)
    )


def _boot_once(spec: VmSpec, port: int, tmp: Path) -> tuple[float, ...]:
    scratch = tmp / "scratch.img"
    scratch.unlink(missing_ok=True)
    make_scratch(scratch, 1)
    spec = replace(spec, scratch=scratch)
    with Vm(spec) as vm:
        total = vm.wait_healthy(port, timeout=600)
    text = spec.console_log.read_text(errors="replace")
    phases = ("build", "network", "scratch: .* mounted", "starting the Erlang VM")
    return (total, *(_stamp(text, "init: " + p) for p in phases))


def _stamp(text: str, pattern: str) -> float:
    m = re.search(r"\[\s*([\d.]+)\] " + pattern, text)
    return float(m.group(1)) if m else float("nan")


def _unpack(path: Path, method: str) -> bytes:
    tool = {"gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "zstd": ["zstd", "-dcq"], "none": ["cat"]}[method]
    return subprocess.run([*tool, str(path)], capture_output=True, check=True).stdout


if __name__ == "__main__":
    sys.exit(main())
