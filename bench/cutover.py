"""Benchmark of a blue/green cutover on the local cloud, against replacing the release all at once.

    .venv/bin/python bench/cutover.py [--runs 1] [--boot direct|uefi]

In a throwaway copy of the project with its own local AWS and load balancer (free ports), a first
release is made live (``invoke build ami deploy``). Then, with a load loop sending ``GET /`` through the
local load balancer the whole time (loopback, one request every 20 ms, bounded in count and time):

1. **baseline**: a new release (another greeting) replaces the live one all at once, as one stack
   update without the health gate: the idle colour gets the new image, its instances and all the
   traffic while the live colour is scaled to 0. Requests fail until the new VM has booted.
2. **blue/green**, ``--runs`` times: ``invoke deploy`` of another new greeting (health-gated, weights
   in steps, draining).

For each it prints: the time from the deploy's start to the new VMs being healthy, the time the weight
shift took (first weight update to the end of the last), the requests served and failed during the
shift and over the whole deploy (failed: no answer, or one other than 200), the requests the local load
balancer sent to a colour with no healthy target (it fails open as an ALB does, so such requests reach
targets that may not answer), and the peak memory (resident, summed) of the VMs. Target: 0 failed
requests in every blue/green run. Other work on this machine slows the VMs' boots; the baseline ran
in the same conditions.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project and its tests' helpers, instead of bench/ itself (bench/http.py would shadow the stdlib).
sys.path[0:1] = [str(ROOT), str(ROOT / "tests")]

from pipeline import build, config  # noqa: E402
from pipeline.aws import ami, session  # noqa: E402
from pipeline.aws.deployment import Deployment, Runtime, capacity  # noqa: E402
from pipeline.aws.params import Release, Side  # noqa: E402
from pipeline.aws.rollout import opposite  # noqa: E402
from pipeline.local import control, memory  # noqa: E402
from tests.cloud_support import LoadLoop, qemu_processes, until  # noqa: E402
from tests.erlnode import free_port  # noqa: E402
from tests.project import copy_project  # noqa: E402


@dataclass
class MemorySampler:
    """Peak resident memory of the project's QEMU processes (summed), sampled every 0.25 s."""

    marker: str
    peak_mb: int = 0
    peak_vms: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            pids = list(qemu_processes(self.marker))
            self.peak_mb = max(self.peak_mb, sum(memory.rss_mb(p) for p in pids))
            self.peak_vms = max(self.peak_vms, len(pids))


@dataclass
class Project:
    root: Path
    sets: list[str]

    def args(self, *extra: str) -> list[str]:
        return [a for s in (*self.sets, *extra) for a in ("--set", s)]

    def invoke(self, *argv: str, lines: list[tuple[float, str]] | None = None) -> int:
        """Run invoke in the project; with ``lines``, collect (time, line) of its stderr as it comes."""
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *argv]
        proc = subprocess.Popen(cmd, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if lines is not None:
                lines.append((time.monotonic(), line.rstrip()))
        proc.wait()
        return proc.returncode

    def settings(self, *extra: str) -> config.Settings:
        return config.load(self.root, env="dev", overrides=[*self.sets, *extra])

    def release(self, greeting: str) -> tuple[config.Settings, str]:
        """Build and upload a release with ``greeting``; its settings and build id."""
        extra = f'app.config.greeting="{greeting}"'
        for task in ("build", "ami"):
            if self.invoke(task, *self.args(extra)) != 0:
                raise SystemExit(f"invoke {task} failed")
        settings = self.settings(extra)
        return settings, build.plan(settings).build_id

    def machines(self) -> list[dict[str, Any]]:
        return list((control.status(self.settings()) or {}).get("machines", []))

    def fail_open(self) -> int:
        """Requests the local load balancer sent to a colour that had no healthy target (so far)."""
        return int((control.status(self.settings()) or {}).get("requests", {}).get("fail_open", 0))


def report(name: str, loop: LoadLoop, t0: float, shift: tuple[float, float] | None, healthy: float | None,
           mem: MemorySampler, end: float, fail_open: int) -> dict[str, Any]:  # fmt: skip
    start = t0 - loop.started
    during = [a for a in loop.answers if shift and shift[0] - loop.started <= a.at <= shift[1] - loop.started]
    whole = [a for a in loop.answers if start <= a.at <= end - loop.started]
    row = {
        "run": name,
        "deploy start -> new VMs healthy (s)": f"{healthy:.1f}" if healthy is not None else "-",
        "weight shift (s)": f"{shift[1] - shift[0]:.1f}" if shift else "-",
        "requests during shift": len(during),
        "failed during shift": sum(a.status != 200 for a in during),
        "requests during deploy": len(whole),
        "failed during deploy": sum(a.status != 200 for a in whole),
        "sent to a colour with no healthy target": fail_open,
        "peak VM memory (MiB)": f"{mem.peak_mb} ({mem.peak_vms} VMs)",
    }
    print("  ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    return row


def healthy_after(p: Project, build_id: str, wall_start: float) -> float | None:
    times = [m["healthy_at"] for m in p.machines() if m["build_id"] == build_id and m.get("healthy_at")]
    return min(times) - wall_start if times else None


def baseline(p: Project, loop: LoadLoop, greeting: str) -> dict[str, Any]:
    """The new release on the idle colour with all the traffic, the live colour to 0: one update."""
    settings, build_id = p.release(greeting)
    clients = session.clients(settings)
    image = ami.find_image(clients, settings, build_id, settings.virtualization, settings.aws.region)
    assert image is not None
    d = Deployment(settings, clients, Runtime(confirm=lambda _q: True))
    info = d.read()
    assert info is not None
    state = d.state(info)
    live = state.live
    assert live is not None
    target = opposite(live)
    release = Release(image.image_id, build_id, settings.deploy.instance_type, settings.virtualization)
    new = state.with_side(target, Side(release, capacity(settings), 100))
    new = new.with_side(live, replace(state.side(live), capacity=0, weight=0))
    opened = p.fail_open()
    with MemorySampler(str(p.root)) as mem:
        t0, wall = time.monotonic(), time.time()
        d.apply(new, "all at once")
        shifted = time.monotonic()
        until("the new release answers", lambda: loop.answers and loop.answers[-1].body == greeting, 600)
        end = time.monotonic()
    healthy = healthy_after(p, build_id, wall)
    return report(
        "baseline (all at once)", loop, t0, (t0, shifted), healthy, mem, end, p.fail_open() - opened
    )


def blue_green(p: Project, loop: LoadLoop, greeting: str, name: str) -> dict[str, Any]:
    _, build_id = p.release(greeting)
    lines: list[tuple[float, str]] = []
    opened = p.fail_open()
    with MemorySampler(str(p.root)) as mem:
        t0, wall = time.monotonic(), time.time()
        code = p.invoke("deploy", "--yes", *p.args(f'app.config.greeting="{greeting}"'), lines=lines)
        end = time.monotonic()
    if code != 0:
        print("\n".join(line for _, line in lines[-20:]))
        raise SystemExit("invoke deploy failed")
    first = next((t for t, line in lines if "stack update: shift" in line), None)
    full = next((t for t, line in lines if line.startswith("bake ") and " at 100%" in line), None)
    shift = (first, full) if first is not None and full is not None else None
    return report(name, loop, t0, shift, healthy_after(p, build_id, wall), mem, end, p.fail_open() - opened)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1, help="blue/green deploys to measure")
    ap.add_argument("--boot", choices=("direct", "uefi"), default="direct")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cutover-") as tmp:
        root = copy_project(Path(tmp) / "proj")
        p = Project(
            root,
            [f"local.port={free_port()}", f"deploy.listener_port={free_port()}", f"local.boot={args.boot}"],
        )
        try:
            print(f"first release ({args.boot} boot) ...", flush=True)
            if p.invoke("build", *p.args(), "ami", *p.args(), "deploy", "--yes", *p.args()) != 0:
                raise SystemExit("the first release failed")
            url = control.local_url(f"http://x:{p.settings().deploy.listener_port}")
            with LoadLoop(url, interval=0.02, max_requests=100_000, max_seconds=3600) as loop:
                rows = [baseline(p, loop, "bench: all at once")]
                until("the baseline's old VM is gone", lambda: len(p.machines()) == 1, 120)
                for run in range(args.runs):
                    rows.append(blue_green(p, loop, f"bench: release {run + 1}", f"blue/green {run + 1}"))
                    until("the old VM is gone", lambda: len(p.machines()) == 1, 120)
        finally:
            p.invoke("local.down", *p.args())
    failed = [r for r in rows[1:] if r["failed during deploy"]]
    print(f"\nload loop: {loop.summary()}")
    print(f"target: 0 failed requests in every blue/green run: {'met' if not failed else 'NOT met'} "
          f"({len(rows) - 1} runs; the baseline failed {rows[0]['failed during deploy']})")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
