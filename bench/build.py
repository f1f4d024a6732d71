"""Build times: cold build, no-op rebuild and config-only rebuild, side by side.

    .venv/bin/python bench/build.py [--env dev] [--runs 3]

Each run copies the project to a fresh temporary directory (so the cold build really is cold for the
build directory; download caches outside the project stay warm, as on a developer's machine), then
times three builds through the public API: cold, the same again (no-op: must reuse), and one with a
changed greeting (config-only). The no-op/cold ratio is what idempotency buys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import build, config
from tests.project import copy_project


def timed(settings: config.Settings) -> tuple[float, build.BuildResult]:
    started = time.perf_counter()
    result = build.build(settings)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dev")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    cold, noop, cfg = [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            project = copy_project(Path(tmp) / "proj")
            t_cold, first = timed(config.load(project, env=args.env))
            t_noop, again = timed(config.load(project, env=args.env))
            changed = config.load(project, env=args.env, overrides=[f"app.config.greeting=bench run {run}"])
            t_cfg, other = timed(changed)
            assert again.reused and again.build_id == first.build_id, "no-op rebuild did not reuse"
            assert not other.reused and other.build_id != first.build_id, "config change did not rebuild"
            cold.append(t_cold)
            noop.append(t_noop)
            cfg.append(t_cfg)

    target = config.load(env=args.env).image.target
    print(f"build times, target {target}, env {args.env}, median of {args.runs} runs")
    print(f"{'cold build':<22}{statistics.median(cold):>9.3f} s")
    print(f"{'no-op rebuild':<22}{statistics.median(noop):>9.3f} s")
    print(f"{'config-only rebuild':<22}{statistics.median(cfg):>9.3f} s")
    print(f"{'no-op / cold':<22}{statistics.median(noop) / statistics.median(cold):>9.3%}")
    print(f"{'config-only / cold':<22}{statistics.median(cfg) / statistics.median(cold):>9.3%}")


if __name__ == "__main__":
    main()
