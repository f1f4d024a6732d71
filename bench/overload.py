"""Load shapes past erlang_web's connection limit, for bench/http.py ``--overload``.

Two shapes, each against a fresh node on loopback with ``max_connections`` at its default (1024) and
the node's open-files limit set as the image would set it for its init process:

- **wrk**: ``wrk -c 2000`` on ``GET /`` (keep-alive; a client whose connection is closed reconnects).
- **slow clients**: 1,100 connections opened at once, each sending a request line and then one
  header line per second, never the empty line that ends the request (the server's request
  timeout answers them, or the connection limit does).

During both, a probe opens a fresh connection every 250 ms and asks ``GET /health`` (what a load
balancer does), and another asks ``GET /``: how long until the first byte of an answer, which status,
or none at all. The node's log is searched for descriptor warnings afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 5.0
ALB_HEALTH_TIMEOUT_S = 5.0  # ALB's default health check timeout: a slower answer fails the check


@dataclass
class Probes:
    """Answers to fresh-connection probes of one path: (seconds to the first byte, status or None)."""

    path: str
    answers: list[tuple[float, int | None]] = field(default_factory=list)

    def statuses(self) -> Counter[str]:
        return Counter("none" if s is None else str(s) for _, s in self.answers)

    def summary(self) -> str:
        if not self.answers:
            return f"{self.path}: no probes"
        times = sorted(t for t, s in self.answers if s is not None)
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses().items()))
        lat = f"p50 {_ms(statistics.median(times))}, max {_ms(times[-1])}" if times else "no answers"
        return f"GET {self.path}: {len(self.answers)} probes ({counts}); answer after {lat}"

    def ok_in_time(self) -> int:
        """Probes a load balancer's health check would count as passing: 200 within its timeout."""
        return sum(1 for t, s in self.answers if s == 200 and t <= ALB_HEALTH_TIMEOUT_S)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def probe_once(port: int, path: str) -> tuple[float, int | None]:
    """One request on a fresh connection: seconds until the status line began, and its status."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while len(head) < 12:
                chunk = s.recv(12 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError:
        head = b""
    took = time.monotonic() - started
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return took, int(m.group(1)) if m else None


@contextlib.contextmanager
def probing(port: int, paths: tuple[str, ...]) -> Iterator[list[Probes]]:
    """Start a probe of each path every PROBE_EVERY_S while the block runs, each on a thread of its
    own, so that a probe left waiting does not delay the next one."""
    results = [Probes(p) for p in paths]
    stop = threading.Event()
    lock = threading.Lock()
    running: list[threading.Thread] = []

    def one(probes: Probes) -> None:
        answer = probe_once(port, probes.path)
        with lock:
            probes.answers.append(answer)

    def schedule() -> None:
        while not stop.is_set():
            for p in results:
                t = threading.Thread(target=one, args=(p,), daemon=True)
                t.start()
                running.append(t)
            stop.wait(PROBE_EVERY_S)

    scheduler = threading.Thread(target=schedule, daemon=True)
    scheduler.start()
    try:
        yield results
    finally:
        stop.set()
        scheduler.join()
        for t in running:
            t.join(PROBE_TIMEOUT_S + 5)


@dataclass
class SlowResult:
    """What each slow client saw: status of its answer (or how it ended) and when."""

    outcomes: Counter[str] = field(default_factory=Counter)
    first_503_s: list[float] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
        t = sorted(self.first_503_s)
        lat = f"; 503 p50 {_ms(statistics.median(t))}, max {_ms(t[-1])} after connecting" if t else ""
        return f"{sum(self.outcomes.values())} slow clients: {counts}{lat}"


async def _slow_client(port: int, interval: float, deadline: float, out: SlowResult) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, TimeoutError):
        out.outcomes["connect failed"] += 1
        return
    # From the established connection: opening 1,100 of them takes this client itself a while.
    started = time.monotonic()
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        answer = asyncio.ensure_future(reader.read(12))
        n = 0
        while not answer.done() and time.monotonic() < deadline:
            done, _ = await asyncio.wait({answer}, timeout=interval)
            if done:
                break
            n += 1
            with contextlib.suppress(OSError):
                writer.write(f"X-Slow-{n}: 1\r\n".encode())
        if not answer.done():
            answer.cancel()
            out.outcomes["still waiting"] += 1
            return
        try:
            head = answer.result()
        except OSError:
            out.outcomes["reset, no answer"] += 1
            return
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if m is None:
            out.outcomes["closed, no answer"] += 1
            return
        status = m.group(1).decode()
        out.outcomes[status] += 1
        if status == "503":
            out.first_503_s.append(time.monotonic() - started)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _slow_clients(port: int, count: int, interval: float, seconds: float) -> SlowResult:
    out = SlowResult()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(_slow_client(port, interval, deadline, out) for _ in range(count)))
    return out


def slow_clients(port: int, count: int = 1100, interval: float = 1.0, seconds: float = 12.0) -> SlowResult:
    """Open ``count`` slow clients at once and wait until each is answered or ``seconds`` pass."""
    return asyncio.run(_slow_clients(port, count, interval, seconds))


_FD_WARNING = re.compile(r"file descriptors|emfile", re.I)


def descriptor_warnings(log: Path, since: int) -> int:
    """Lines about running out of descriptors the node logged after byte offset ``since``."""
    try:
        text = log.read_bytes()[since:].decode(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if _FD_WARNING.search(line))


_REPORT = re.compile(r"erlang_web: in the last [\d.]+ s: (.*)$")
_COUNT = re.compile(r"(\d+) x ([^,(]+)")


def app_counts(log: Path, since: int) -> Counter[str]:
    """What the app itself counted (its rate-limited report lines) after byte offset ``since``."""
    try:
        text = log.read_bytes()[since:].decode(errors="replace")
    except FileNotFoundError:
        return Counter()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _REPORT.search(line)
        if m:
            for n, what in _COUNT.findall(m.group(1)):
                counts[what.strip()] += int(n)
    return counts


def describe_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{what} {n:,}" for what, n in sorted(counts.items())) or "nothing"
