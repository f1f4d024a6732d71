"""erlang_web over real HTTP: the app compiled by the pipeline, run on the host's Erlang."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.erlang import CompiledApp
from tests.erlnode import (
    Atom,
    Chars,
    ErlangWebNode,
    connect,
    hold,
    read_response,
    read_until_closed,
    running,
    status_of,
    wait_for,
)

GREETING = "Grüße aus Erlang ✓\n"
BUILD = {"build_id": "b-1234", "config_digest": "sha256:abcd", "image_target": "beam", "env": "test"}
Start = Callable[..., ErlangWebNode]


@pytest.fixture(scope="module")
def node(erlang_web_app: CompiledApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErlangWebNode]:
    """One node for the tests that do not need their own configuration."""
    workdir = tmp_path_factory.mktemp("erlang_web_node")
    env = {"greeting": GREETING, "max_body": 1024, "request_timeout": 1500, "idle_timeout": 2000, **BUILD}
    with running(erlang_web_app, workdir, **env) as n:
        yield n


def test_the_compiled_app_has_no_nifs_and_lists_its_runtime_dependencies(erlang_web_app: CompiledApp) -> None:
    # image builders ship the OTP applications named here; LING cannot load NIFs
    assert erlang_web_app.nif_modules == ()
    assert erlang_web_app.applications == ("kernel", "stdlib", "mnesia")
    assert erlang_web_app.version == "0.1.0"


# -- endpoints ---------------------------------------------------------------------------------


def test_root_returns_the_configured_greeting_as_utf8_text(node: ErlangWebNode) -> None:
    status, headers, body = node.request("GET", "/")
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.decode("utf-8") == GREETING
    assert int(headers["content-length"]) == len(GREETING.encode())
    assert headers["date"].endswith(" GMT")


def test_head_gives_the_get_headers_without_a_body(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /version HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = read_response(s, "HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) == len(GREETING.encode())
        # the connection is still in step: the next response is the /version one
        status, headers, body = read_response(s)
        assert status == 200 and body.startswith(b'{"app":"erlang_web"')


def test_version_reports_the_app_version_and_the_baked_build_facts(
    node: ErlangWebNode, erlang_web_app: CompiledApp
) -> None:
    status, doc = node.get_json("/version")
    assert status == 200
    assert doc == {
        "app": "erlang_web",
        "version": erlang_web_app.version,
        "build_id": "b-1234",
        "config_digest": "sha256:abcd",
        "target": "beam",
        "env": "test",
    }
    assert erlang_web_app.version == "0.1.0"


def test_version_fields_default_to_unknown(erlang_web_node: Start) -> None:
    n = erlang_web_node()
    _, doc = n.get_json("/version")
    assert [doc[k] for k in ("build_id", "config_digest", "target", "env")] == ["unknown"] * 4


def test_health_is_ok_with_ram_storage(node: ErlangWebNode) -> None:
    assert node.get_json("/health") == (200, {"status": "ok", "storage": "ram"})


def test_counter_get_and_post(node: ErlangWebNode) -> None:
    _, before = node.get_json("/counter")
    assert node.get_json("/counter", "POST") == (200, {"counter": before["counter"] + 1})
    assert node.get_json("/counter", "POST") == (200, {"counter": before["counter"] + 2})
    assert node.get_json("/counter") == (200, {"counter": before["counter"] + 2})


# -- storage modes -----------------------------------------------------------------------------


def test_disc_counter_starts_at_zero_and_survives_a_restart(erlang_web_node: Start, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    first = erlang_web_node("first", storage=Atom("disc"), scratch_dir=Chars(str(scratch)))
    assert first.get_json("/health") == (200, {"status": "ok", "storage": "disc"})
    assert first.get_json("/counter") == (200, {"counter": 0})
    for n in (1, 2, 3):
        assert first.get_json("/counter", "POST") == (200, {"counter": n})
    assert first.stop() == 0
    # mnesia's files are directly in the scratch dir: LING's GooFS has no subdirectories
    assert (scratch / "schema.DAT").is_file()
    assert [p.name for p in scratch.iterdir() if not p.is_file()] == []

    second = erlang_web_node("second", storage=Atom("disc"), scratch_dir=Chars(str(scratch)))
    assert second.get_json("/counter") == (200, {"counter": 3})
    assert second.get_json("/counter", "POST") == (200, {"counter": 4})


def test_auto_uses_disc_when_the_scratch_dir_exists(erlang_web_node: Start, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    n = erlang_web_node(storage=Atom("auto"), scratch_dir=Chars(str(scratch)))
    assert n.get_json("/health") == (200, {"status": "ok", "storage": "disc"})
    assert n.get_json("/counter", "POST") == (200, {"counter": 1})
    assert (scratch / "schema.DAT").is_file()


def test_auto_falls_back_to_ram_without_a_scratch_dir(erlang_web_node: Start, tmp_path: Path) -> None:
    n = erlang_web_node(storage=Atom("auto"), scratch_dir=Chars(str(tmp_path / "missing")))
    assert n.get_json("/health") == (200, {"status": "ok", "storage": "ram"})
    assert n.get_json("/counter") == (200, {"counter": 0})
    assert not (tmp_path / "missing").exists()


def test_disc_with_an_unusable_dir_fails_health_but_still_serves(
    erlang_web_node: Start, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    n = erlang_web_node(storage=Atom("disc"), scratch_dir=Chars(str(missing)), wait="listening")

    def failed() -> dict[str, str] | None:
        status, doc = n.get_json("/health")
        assert status == 503, doc
        return doc if doc["status"] == "storage_failed" else None

    doc = wait_for(failed, 20, "storage_failed")
    assert doc["storage"] == "failed" and str(missing) in doc["reason"]
    assert n.request("GET", "/")[0] == 200
    assert n.request("GET", "/version")[0] == 200
    assert n.get_json("/counter") == (503, {"error": "storage_unavailable"})
    assert n.get_json("/counter", "POST") == (503, {"error": "storage_unavailable"})
    # it stays failed
    assert n.get_json("/health")[0] == 503


def test_a_bad_config_value_stops_the_node_with_a_message(erlang_web_node: Start) -> None:
    with pytest.raises(RuntimeError, match=r"bad_config.*max_body"):
        erlang_web_node(max_body=-5)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="request-line-without-target"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", id="space-in-header-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", id="obsolete-line-folding"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http11-without-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(
            b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", id="cl-not-a-number"
        ),
        pytest.param(b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", id="cl-negative"),
        pytest.param(
            b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            id="cl-conflicting",
        ),
        pytest.param(
            b"POST /counter HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            id="body-without-content-length",
        ),
        pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", id="asterisk-target"),
    ],
)
def test_malformed_requests_get_400_and_the_connection_closes(
    node: ErlangWebNode, request_bytes: bytes
) -> None:
    with connect(node) as s:
        s.sendall(request_bytes)
        raw = read_until_closed(s)
    assert status_of(raw) == 400, raw
    assert b"\r\nConnection: close\r\n" in raw


def test_other_http_versions_get_505(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
        assert status_of(read_until_closed(s)) == 505


def test_a_body_over_max_body_gets_413(node: ErlangWebNode) -> None:
    status, headers, _ = node.request("POST", "/counter", body=b"x" * 1025)
    assert status == 413
    assert headers["connection"] == "close"
    # max_body itself is fine
    assert node.request("POST", "/counter", body=b"x" * 1024)[0] == 200


def test_expect_100_continue_is_answered_before_the_body(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abc")
        status, _, body = read_response(s)
        assert status == 200 and body.startswith(b'{"counter":')


def test_unknown_path_is_404(node: ErlangWebNode) -> None:
    for path in ("/nope", "/health/", "/Counter"):
        assert node.request("GET", path)[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
        ("PUT", "/version", "GET, HEAD"),
        ("PUT", "/counter", "GET, HEAD, POST"),
        ("OPTIONS", "/counter", "GET, HEAD, POST"),
    ],
)
def test_wrong_method_is_405_with_allow(node: ErlangWebNode, method: str, path: str, allow: str) -> None:
    status, headers, _ = node.request(method, path)
    assert status == 405
    assert headers["allow"] == allow


def test_query_strings_are_ignored_for_routing(node: ErlangWebNode) -> None:
    assert node.request("GET", "/health?probe=alb")[0] == 200


# -- connections -------------------------------------------------------------------------------


def test_http11_keeps_the_connection_open_for_several_requests(node: ErlangWebNode) -> None:
    conn = node.connection()
    try:
        ports = set()
        for path in ("/", "/health", "/version", "/counter", "/nope", "/"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 404)
            assert resp.getheader("connection") is None
            assert conn.sock is not None
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1
    finally:
        conn.close()


def test_connection_close_from_an_http11_client_is_honoured(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = read_until_closed(s)
    assert status_of(raw) == 200 and b"\r\nConnection: close\r\n" in raw


def test_http10_closes_by_default(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw = read_until_closed(s)
    assert status_of(raw) == 200
    assert b"\r\nConnection: close\r\n" in raw
    assert raw.endswith(GREETING.encode())


def test_http10_keep_alive_on_request(node: ErlangWebNode) -> None:
    with connect(node) as s:
        for _ in range(3):
            s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _ = read_response(s)
            assert status == 200
            assert headers["connection"] == "keep-alive"


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(node: ErlangWebNode) -> None:
    with connect(node, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s)[0] == 200
        idle_since = time.monotonic()
        assert s.recv(1) == b""  # blocks until the server closes (idle_timeout = 2 s)
        waited = time.monotonic() - idle_since
    assert 1.8 <= waited < 6, waited


def test_stalled_headers_get_408_after_request_timeout(node: ErlangWebNode) -> None:
    with connect(node, timeout=10) as s:
        sent = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # the empty line never comes
        raw = read_until_closed(s)
        waited = time.monotonic() - sent
    assert status_of(raw) == 408
    assert 1.3 <= waited < 5, waited


def test_stalled_body_gets_408(node: ErlangWebNode) -> None:
    with connect(node, timeout=10) as s:
        s.sendall(b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert status_of(read_until_closed(s)) == 408


def test_a_partial_first_request_line_is_closed_after_request_timeout(node: ErlangWebNode) -> None:
    # The first request on a connection must be complete within request_timeout of the accept.
    with connect(node, timeout=10) as s:
        sent = time.monotonic()
        s.sendall(b"GET /heal")
        raw = read_until_closed(s)
        waited = time.monotonic() - sent
    assert raw == b""  # no complete request line: closed without an answer
    assert 1.3 <= waited < 4, waited


def test_a_partial_later_request_line_is_closed_after_idle_timeout(node: ErlangWebNode) -> None:
    # Between keep-alive requests an incomplete request line counts as idle (idle_timeout = 2 s).
    with connect(node, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s)[0] == 200
        sent = time.monotonic()
        s.sendall(b"GET /ver")
        raw = read_until_closed(s)
        waited = time.monotonic() - sent
    assert raw == b""
    assert 1.8 <= waited < 5, waited


def test_a_connection_that_sends_nothing_is_closed_after_request_timeout(node: ErlangWebNode) -> None:
    with connect(node, timeout=10) as s:
        opened = time.monotonic()
        assert s.recv(1) == b""
        waited = time.monotonic() - opened
    assert 1.3 <= waited < 5, waited


def test_connections_beyond_max_connections_get_503(erlang_web_node: Start) -> None:
    n = erlang_web_node(max_connections=2)
    held = hold(n, 2)  # both are being served (and counted)
    try:
        with connect(n) as third:
            third.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            raw = read_until_closed(third)
        assert status_of(raw) == 503
        assert b"\r\nConnection: close\r\n" in raw
        # the held connections still work
        held[0].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(held[0])[0] == 200
        # once one closes, a new connection is served again
        held.pop().close()
        wait_for(lambda: True if n.request("GET", "/")[0] == 200 else None, 10, "a free connection slot")
    finally:
        for s in held:
            s.close()


def test_sigterm_drains_idle_connections_and_stops_the_node(erlang_web_node: Start) -> None:
    n = erlang_web_node(request_timeout=3000, idle_timeout=60000)
    with connect(n, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s)[0] == 200
        started = time.monotonic()
        assert n.proc is not None
        n.proc.terminate()
        assert s.recv(1) == b""  # the idle connection is closed by the drain, not the idle timeout
        assert n.stop() == 0
        assert time.monotonic() - started < 10


def test_sigterm_lets_a_request_in_progress_finish(erlang_web_node: Start) -> None:
    n = erlang_web_node(request_timeout=8000)
    with connect(n, timeout=10) as s:
        s.sendall(b"POST /counter HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        # the 100 proves the server is reading this request's body when the drain starts
        assert s.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"a")
        assert n.proc is not None
        n.proc.terminate()

        def refused() -> bool | None:
            try:
                socket.create_connection(("127.0.0.1", n.port), timeout=1).close()
                return None
            except (ConnectionRefusedError, ConnectionResetError):
                # (reset: this probe's handshake was under way as the listen socket closed)
                return True

        wait_for(refused, 10, "the listener to close")  # draining has begun
        s.sendall(b"bc")
        raw = read_until_closed(s)
    assert status_of(raw) == 200
    assert b"\r\nConnection: close\r\n" in raw
    assert raw.endswith(b'{"counter":1}')
    assert n.stop() == 0
