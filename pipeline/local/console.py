"""EC2 GetConsoleOutput of the local AWS: the serial console of the instance's VM.

moto answers every GetConsoleOutput with the same made-up text (a Linux 2.6 boot from 2006). In the
process that runs the local cloud, the answer is instead what the instance's VM wrote to its serial
console, as EC2 gives it: only the most recent 64 KB, base64-encoded in ``Output``, and ``Timestamp``
the time the output was last updated (EC2 API reference, GetConsoleOutput). An instance the cloud
does not run (its image was not made by the pipeline, or ``local.run_instances = false``) has posted
nothing, and the answer carries no ``Output``, as EC2's does before an instance has written anything.

With ``Latest`` or without, the answer is the console as it is now: a local VM has no buffering
hypervisor in between (on EC2 only Nitro instances give the latest output).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_BYTES = 64 * 1024  # "Only the most recent 64 KB of console output is available."

Finder = Callable[[str], Path | None]  # instance id -> its console log, None if it has no VM
Why = Callable[[str], str | None]  # instance id -> why it cannot run (its disk cannot be read, ...)
_finder: Finder | None = None
_why: Why = lambda _instance: None  # noqa: E731
_original: Any = None


def tail(path: Path, limit: int = MAX_BYTES) -> tuple[bytes, dt.datetime]:
    """The last ``limit`` bytes of ``path`` and when it was last written (UTC)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - limit))
        data = f.read(limit)
        modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return data, modified


def install(finder: Finder, why: Why | None = None) -> None:
    """Answer GetConsoleOutput from ``finder``'s console logs (in this process, from now on); an
    instance that cannot run at all says why (``why``) at the end of its console, as the only place
    an operator without SSH can read it."""
    global _finder, _why, _original
    from moto.core.responses import ActionResult
    from moto.ec2.responses.general import General

    _finder = finder
    _why = why or (lambda _instance: None)
    if _original is not None:
        return
    _original = General.get_console_output

    def get_console_output(self: Any) -> Any:
        find = _finder
        if find is None:
            return _original(self)
        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))  # NotFound as EC2
        result: dict[str, Any] = {"InstanceId": instance.id}
        path = find(instance.id)
        data = b""
        if path is not None and path.is_file():
            data, modified = tail(path)
            result["Timestamp"] = modified.replace(tzinfo=None)
        reason = _why(instance.id)
        if reason:
            data = (data + f"\nlocal cloud: instance {instance.id} cannot run: {reason}\n".encode())[
                -MAX_BYTES:
            ]
            result.setdefault("Timestamp", dt.datetime.now(dt.UTC).replace(tzinfo=None))
        if data:
            result["Output"] = base64.b64encode(data).decode("ascii")
        return ActionResult(result)

    General.get_console_output = get_console_output  # type: ignore[method-assign]


def uninstall() -> None:
    """moto's own answer again (the cloud that held the consoles stopped)."""
    global _finder
    _finder = None
