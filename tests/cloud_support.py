"""Helpers for the local cloud's tests and bench: a load loop through the local load balancer, and a
look at the QEMU processes of a local AWS.

The load loop sends ``GET /`` over loopback, one request at a time on fresh connections (as many
clients would), and records every answer; it is bounded in requests and in time, whatever happens.
An ``https`` URL is fetched over TLS, verified against ``cafile`` (the local CA's certificate).
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    at: float  # seconds since the loop started
    status: int  # 0: no HTTP answer (refused, reset, timed out)
    body: str


@dataclass
class LoadLoop:
    """``GET path`` on ``url`` every ``interval`` seconds until stopped, or ``max_requests``, or
    ``max_seconds``."""

    url: str
    path: str = "/"
    interval: float = 0.05
    max_requests: int = 20000
    max_seconds: float = 900.0
    timeout: float = 10.0
    cafile: str | None = None  # what an https URL's certificate is verified against
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> LoadLoop:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="load-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadLoop:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        return self

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80)
        assert host in ("127.0.0.1", "localhost"), f"the load loop stays on loopback, not {host}"
        context = ssl.create_default_context(cafile=self.cafile) if secure else None
        while not self._stop.is_set() and len(self.answers) < self.max_requests:
            at = time.monotonic() - self.started
            if at > self.max_seconds:
                return
            status, body = 0, ""
            conn: http.client.HTTPConnection = (
                http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)
                if context is not None
                else http.client.HTTPConnection(host, port, timeout=self.timeout)
            )
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                status, body = resp.status, resp.read().decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException) as err:
                body = f"{type(err).__name__}: {err}"
            finally:
                conn.close()
            self.answers.append(Answer(at, status, body))
            self._stop.wait(self.interval)

    # what was seen

    @property
    def sent(self) -> int:
        return len(self.answers)

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def bodies(self) -> list[str]:
        """The distinct bodies in the order they were first seen."""
        seen: list[str] = []
        for a in self.answers:
            if a.status == 200 and a.body not in seen:
                seen.append(a.body)
        return seen

    def window(self, old: str, new: str) -> tuple[float, float] | None:
        """(first answer with ``new``, last answer with ``old``): the span in which both were served."""
        first_new = next((a.at for a in self.answers if a.body == new), None)
        last_old = next((a.at for a in reversed(self.answers) if a.body == old), None)
        if first_new is None or last_old is None:
            return None
        return first_new, last_old

    def summary(self) -> str:
        failed = self.failed
        text = f"{self.sent} requests, {len(failed)} failed"
        if failed:
            text += f" (first: {failed[0].status} {failed[0].body[:80]!r} at {failed[0].at:.1f}s)"
        return text


def qemu_processes(name_part: str = "") -> dict[int, str]:
    """pid -> command line of the running QEMU processes (whose command line contains ``name_part``)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64"):
            line = " ".join(a.decode(errors="replace") for a in argv)
            if name_part in line:
                out[int(entry.name)] = line
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def until(what: str, check: Callable[[], T], timeout: float = 120.0, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something true (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(every)
