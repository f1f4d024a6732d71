"""Run the erlang_web app on the host's Erlang for tests and benchmarks.

``ErlangWebNode`` writes a sys.config, starts ``erl`` with the compiled app on a loopback port and
stops it again (SIGTERM, which makes the node stop its applications in order, then SIGKILL if it
hangs). Waiting is polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.erlang import CompiledApp, compile_app
from pipeline.render import erl_atom, erl_binary, erl_string

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "apps" / "erlang_web"

T = TypeVar("T")


class Atom(str):
    """A sys.config value written as an Erlang atom (plain ``str`` values become binaries)."""


class Chars(str):
    """A sys.config value written as an Erlang string (a list of code points)."""


def compile_erlang_web(out_dir: Path) -> CompiledApp:
    """Compile apps/erlang_web into ``out_dir`` with the pipeline's own compile step."""
    return compile_app(APP_DIR, out_dir, cwd=REPO)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def erl_term(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Atom):
        return erl_atom(value)
    if isinstance(value, Chars):
        return erl_string(value)
    if isinstance(value, str):
        return erl_binary(value)
    raise TypeError(f"no Erlang term for {value!r}")


def sys_config(app_env: Mapping[str, object]) -> str:
    """A sys.config that sets erlang_web's application environment."""
    pairs = ",\n  ".join(f"{{{erl_atom(k)}, {erl_term(v)}}}" for k, v in app_env.items())
    return f"[{{erlang_web, [\n  {pairs}\n]}}].\n"


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class ErlangWebNode:
    """One ``erl`` running erlang_web with the given app env (port chosen here unless given)."""

    def __init__(self, app: CompiledApp, workdir: Path, **app_env: object) -> None:
        self.app = app
        self.workdir = workdir
        self.env: dict[str, object] = {"port": free_port(), "storage": Atom("ram"), **app_env}
        self.port = int(str(self.env["port"]))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "node.log"
        # The node's open-files limit (soft and hard), e.g. what an image's init process has; None:
        # this process's own.
        self.max_open_files: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait: str | None = "healthy", timeout: float = 30) -> ErlangWebNode:
        """Start the node; wait until /health is 200 (``"healthy"``) or answers at all
        (``"listening"``), or not at all (None)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "sys.config"
        config.write_text(sys_config(self.env), encoding="utf-8")
        start = (
            "case application:ensure_all_started(erlang_web) of "
            "{ok, _} -> ok; "
            'Err -> io:format(standard_error, "erlang_web did not start: ~p~n", [Err]), halt(3) '
            "end."
        )
        argv = ["erl", "-noshell", "-noinput", "-pa", str(self.app.ebin), "-config", str(config)]
        argv += ["-eval", start]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limits
            )
        if wait == "healthy":
            wait_for(
                lambda: self._health_is(200), timeout, f"erlang_web healthy on {self.port}\n{self.log()}"
            )
        elif wait == "listening":
            wait_for(
                lambda: self._health_is(None), timeout, f"erlang_web listening on {self.port}\n{self.log()}"
            )
        return self

    def _limits(self) -> None:
        if self.max_open_files is not None:
            limit = self.max_open_files
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM the node (graceful: applications stop in order), SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def _health_is(self, status: int | None) -> bool | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"erlang node exited with {self.proc.returncode}:\n{self.log()}")
        try:
            got, _ = self.get_json("/health")
        except OSError:
            return None
        return True if status is None or got == status else None

    # -- HTTP --------------------------------------------------------------------------------
    def connection(self, timeout: float = 5) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: status, headers (lower-case names), body."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, method: str = "GET") -> tuple[int, Any]:
        status, headers, body = self.request(method, path)
        assert headers.get("content-type") == "application/json", headers
        return status, json.loads(body)


@contextlib.contextmanager
def running(app: CompiledApp, workdir: Path, **app_env: object) -> Iterator[ErlangWebNode]:
    """A started node that is stopped (or killed) on exit."""
    node = ErlangWebNode(app, workdir, **app_env)
    try:
        yield node.start()
    finally:
        try:
            node.stop()
        finally:
            node.kill()


# -- raw HTTP over a socket (what http.client hides: pipelining, closes, malformed requests) -------


def connect(node: ErlangWebNode, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=timeout)


def read_response(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Read exactly one response from a raw socket, and not a byte more.

    The head is read byte by byte and the body by its Content-Length, so a response that arrived in
    the same segment as the previous one (pipelining) is left in the socket for the next call; a
    buffered reader would swallow it.
    """
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"connection closed after {head!r}")
        head += byte
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(body)} of {length} body bytes")
        body += chunk
    return int(status_line.split()[1]), headers, body


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


def hold(n: ErlangWebNode, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each answered once (so each is being served).

    A connection the server has just answered and closed may still hold its slot for a moment, so a
    503 here is retried until the slot is free.
    """
    held: list[socket.socket] = []

    def served() -> socket.socket | None:
        s = connect(n)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        if read_response(s)[0] == 200:
            return s
        s.close()
        return None

    for _ in range(count):
        held.append(wait_for(served, 10, "a free connection slot"))
    return held
