"""Bounded polling with an injectable clock: the one wait loop of the pipeline, for the states no
boto3 waiter covers the way it needs (images, snapshots, stacks, change sets, target health)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import AwsError, PipelineError

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
    expired: Callable[[], PipelineError] | None = None,
) -> T:
    """Call ``check`` until it returns something other than None, within one deadline of ``timeout``
    seconds; ``check`` may raise to stop early.

    The interval starts at ``first`` seconds and doubles up to ``most`` (``first == most``: a fixed
    rate): quick for the usual short waits, gentle on the API's rate limits for the long ones. No sleep
    passes the deadline, and ``check`` runs once more at it. Then ``expired()`` is raised, or by default
    an :class:`AwsError` "``what``: still not done after ``timeout``s" with ``hint``.
    """
    deadline = clock() + timeout
    interval = first
    while True:
        value = check()
        if value is not None:
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            if expired is not None:
                raise expired()
            raise AwsError(f"{what}: still not done after {timeout:g}s", hint=hint)
        sleep(min(interval, remaining))
        interval = min(interval * 2, most)
