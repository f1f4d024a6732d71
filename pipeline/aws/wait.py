"""Bounded polling with an injectable clock, for the AWS states no waiter covers the way we need."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import AwsError

T = TypeVar("T")


def poll(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    first: float = 1.0,
    most: float = 15.0,
    hint: str | None = None,
) -> T:
    """Call ``check`` until it returns something other than None; raise after ``timeout`` seconds.

    The interval starts at ``first`` seconds and doubles up to ``most``: quick for the usual short
    waits, and gentle on the API's rate limits for the long ones.
    """
    deadline = clock() + timeout
    interval = first
    while True:
        value = check()
        if value is not None:
            return value
        if clock() + interval > deadline:
            raise AwsError(f"{what}: still not done after {timeout:g}s", hint=hint)
        sleep(interval)
        interval = min(interval * 2, most)
