"""Build times: cold build, no-op rebuild and config-only rebuild, side by side, for the quick start's
app and for an example with dependencies.

    .venv/bin/python bench/build.py [--env dev] [--runs 3] [--example umbrella_shop]

Each run copies the project to a fresh temporary directory (so the cold build really is cold for the
build directory and the compile cache; download caches outside the project stay warm, as on a
developer's machine), then times three builds through the public API: cold, the same again (no-op:
must reuse), and one with a changed setting (config-only: the release is reused, only the baked
configuration and the image change). The no-op/cold ratio is what idempotency buys; config-only/cold
is what caching the release buys.

The example (``examples/umbrella_shop`` by default: two applications and a dependency from
``_checkouts/``, built by rebar3) is measured the same way, with ``app.port`` as the changed setting.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import build, config  # noqa: E402
from tests.project import copy_project  # noqa: E402


def timed(settings: config.Settings) -> tuple[float, build.BuildResult]:
    started = time.perf_counter()
    result = build.build(settings)
    return time.perf_counter() - started, result


def measure(
    make: Callable[[Path], Path], env: str, change: Callable[[int], str], runs: int
) -> tuple[list[float], list[float], list[float]]:
    cold, noop, cfg = [], [], []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            project = make(Path(tmp))
            t_cold, first = timed(config.load(project, env=env))
            t_noop, again = timed(config.load(project, env=env))
            t_cfg, other = timed(config.load(project, env=env, overrides=[change(run)]))
            assert again.reused and again.build_id == first.build_id, "no-op rebuild did not reuse"
            assert not other.reused and other.build_id != first.build_id, "config change did not rebuild"
            cold.append(t_cold)
            noop.append(t_noop)
            cfg.append(t_cfg)
    return cold, noop, cfg


def report(title: str, cold: list[float], noop: list[float], cfg: list[float]) -> None:
    print(title)
    print(f"  {'cold build':<22}{statistics.median(cold):>9.3f} s")
    print(f"  {'no-op rebuild':<22}{statistics.median(noop):>9.3f} s")
    print(f"  {'config-only rebuild':<22}{statistics.median(cfg):>9.3f} s")
    print(f"  {'no-op / cold':<22}{statistics.median(noop) / statistics.median(cold):>9.3%}")
    print(f"  {'config-only / cold':<22}{statistics.median(cfg) / statistics.median(cold):>9.3%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dev")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--example", default="umbrella_shop", help='an app under examples/ ("" to skip)')
    args = parser.parse_args()

    target = config.load(ROOT, env=args.env).image.target
    print(f"build times, target {target}, env {args.env}, median of {args.runs} runs")
    quick = measure(
        lambda tmp: copy_project(tmp / "proj"),
        args.env,
        lambda run: f"app.config.greeting=bench run {run}",
        args.runs,
    )
    report("apps/erlang_web (the quick start)", *quick)
    if args.example:

        def example(tmp: Path) -> Path:
            return Path(shutil.copytree(ROOT / "examples" / args.example, tmp / args.example))

        measured = measure(example, args.env, lambda run: f"app.port={9000 + run}", args.runs)
        report(f"examples/{args.example} (rebar3 release with dependencies)", *measured)


if __name__ == "__main__":
    main()
