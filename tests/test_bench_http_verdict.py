"""bench/http.py's verdict: throughput and tail latency are judged each on its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_http", REPO / "bench" / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_http"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_more_requests_per_second_with_a_worse_p99_is_not_called_at_or_above_the_baseline(
    bench: ModuleType,
) -> None:
    ours = bench.Result("erlang_web", 31_000, 0.8, 40.0, 0)
    baselines = [bench.Result("inets (nodelay)", 15_000, 1.7, 20.0, 0), bench.Result("inets", 700, 45, 58, 0)]
    rps, p99 = bench.verdict(ours, baselines)
    assert rps == "requests/s: erlang_web / inets (nodelay): 2.07x (at or above the baseline)"
    assert p99 == "p99: erlang_web / inets (nodelay): 2.00x (WORSE than the baseline)"


def test_fewer_requests_per_second_with_a_better_p99(bench: ModuleType) -> None:
    ours = bench.Result("erlang_web", 10_000, 0.8, 5.0, 0)
    baselines = [
        bench.Result("inets (nodelay)", 15_000, 1.7, 20.0, 0),
        bench.Result("inets", 700, 45, 10.0, 0),
    ]
    rps, p99 = bench.verdict(ours, baselines)
    assert rps.endswith("0.67x (BELOW the baseline)")
    # the p99 is compared with the lowest baseline p99, whichever server had it
    assert p99 == "p99: erlang_web / inets: 0.50x (at or under the baseline)"
