"""erlang_web's own limits and its behaviour past them, over real HTTP on the host's Erlang.

The listen socket sets no packet_size or send_timeout: LING does not apply them to accepted
sockets (cloudozer/ling core/ol_tcp_acc.c copies only packet and binary from the listen socket;
core/ol_inet.c), so these tests see the limits the app enforces itself, as it would run there.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pipeline.erlang import CompiledApp
from tests.erlnode import (
    ErlangWebNode,
    connect,
    hold,
    read_response,
    read_until_closed,
    running,
    status_of,
    wait_for,
)

Start = Callable[..., ErlangWebNode]
MAX_LINE = 8192  # the default: RFC 9112 3 asks servers to take request lines of 8000 octets at least


@pytest.fixture(scope="module")
def node(erlang_web_app: CompiledApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErlangWebNode]:
    with running(erlang_web_app, tmp_path_factory.mktemp("erlang_web_limits")) as n:
        yield n


def request_line(length: int, method: str = "GET") -> bytes:
    """A request line of exactly ``length`` bytes, its CRLF included (for GET /?aaa...)."""
    fixed = len(f"{method} /? HTTP/1.1\r\n")
    return f"{method} /?{'a' * (length - fixed)} HTTP/1.1\r\n".encode()


def exchange(node: ErlangWebNode, data: bytes) -> bytes:
    with connect(node) as s:
        s.sendall(data)
        return read_until_closed(s)


def head_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


# -- line limits -------------------------------------------------------------------------------


def test_a_request_line_of_max_line_bytes_is_served_and_one_more_byte_gets_414(node: ErlangWebNode) -> None:
    with connect(node) as s:
        line = request_line(MAX_LINE)
        assert len(line) == MAX_LINE
        s.sendall(line + b"Host: t\r\n\r\n")
        assert read_response(s)[0] == 200
    raw = exchange(node, request_line(MAX_LINE + 1) + b"Host: t\r\n\r\n")
    assert status_of(raw) == 414, raw[:200]
    assert b"\r\nConnection: close\r\n" in raw


def test_a_request_line_too_long_gets_414_before_it_ends(node: ErlangWebNode) -> None:
    # The server answers as soon as it has more than max_line bytes without a line end, rather than
    # reading an endless line; the client never sends its CRLF here.
    with connect(node, timeout=10) as s:
        s.sendall(b"GET /" + b"a" * (MAX_LINE + 100))
        raw = read_until_closed(s)
    assert status_of(raw) == 414


def test_a_header_line_over_max_line_gets_431(node: ErlangWebNode) -> None:
    long_header = b"X-Long: " + b"b" * MAX_LINE + b"\r\n"
    raw = exchange(node, b"GET / HTTP/1.1\r\nHost: t\r\n" + long_header + b"\r\n")
    assert status_of(raw) == 431, raw[:200]
    assert raw.split(b"\r\n")[0] == b"HTTP/1.1 431 Request Header Fields Too Large"


def test_more_than_100_header_fields_get_431(node: ErlangWebNode) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    with connect(node) as s:  # 100 fields (Host among them) are fine
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + fields[: -len(b"X-99: 1\r\n")] + b"\r\n")
        assert read_response(s)[0] == 200
    assert status_of(exchange(node, b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")) == 431


# -- HEAD --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(request_line(MAX_LINE + 1, "HEAD") + b"Host: t\r\n\r\n", 414, id="414"),
        pytest.param(b"HEAD / HTTP/1.1\r\nHost: t\r\nX: " + b"b" * MAX_LINE + b"\r\n\r\n", 431, id="431"),
        pytest.param(b"HEAD / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400, id="400"),
        pytest.param(b"HEAD / HTTP/1.1\r\n\r\n", 400, id="400-no-host"),
        pytest.param(b"HEAD / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n", 413, id="413"),
        pytest.param(b"HEAD / HTTP/3.0\r\nHost: t\r\n\r\n", 505, id="505"),
    ],
)
def test_error_answers_to_head_carry_no_body(node: ErlangWebNode, request_bytes: bytes, status: int) -> None:
    raw = exchange(node, request_bytes)
    head, body = head_and_body(raw)
    assert status_of(raw) == status
    assert body == b""  # RFC 9110 9.3.2: the server does not send content in a response to HEAD
    assert int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1)) > 0  # type: ignore[union-attr]


def test_a_404_to_head_has_no_body_and_keeps_the_connection_in_step(node: ErlangWebNode) -> None:
    with connect(node) as s:
        s.sendall(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /version HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = read_response(s, "HEAD")
        assert status == 404 and int(headers["content-length"]) > 0
        status, _, body = read_response(s)
        assert status == 200 and body.startswith(b'{"app":"erlang_web"')


# -- past max_connections --------------------------------------------------------------------


def test_past_max_connections_the_health_check_gets_its_real_answer(erlang_web_node: Start) -> None:
    n = erlang_web_node(max_connections=2)
    held = hold(n, 2)
    try:
        assert n.get_json("/health") == (200, {"status": "ok", "storage": "ram"})
        assert n.get_json("/health?from=alb") == (200, {"status": "ok", "storage": "ram"})
        status, headers, _ = n.request("GET", "/")
        assert (status, headers["connection"]) == (503, "close")
        assert n.request("GET", "/version")[0] == 503
        assert n.request("POST", "/health")[0] == 503  # only what a health check sends gets through
    finally:
        for s in held:
            s.close()


def test_past_max_connections_a_client_that_sends_nothing_still_gets_503(erlang_web_node: Start) -> None:
    n = erlang_web_node(max_connections=1)
    held = hold(n, 1)
    try:
        with connect(n) as s:
            assert status_of(read_until_closed(s)) == 503
    finally:
        held[0].close()


def test_past_the_open_files_limit_new_connections_are_answered(
    erlang_web_app: CompiledApp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # With 256 descriptors and max_connections 1024, the app serves as many connections as leave
    # room for answering the next ones (503, or the health answer) and warns at start, instead of
    # running out of descriptors and leaving new connections unanswered in the backlog.
    node = ErlangWebNode(erlang_web_app, tmp_path_factory.mktemp("nofile"), max_connections=1024)
    node.max_open_files = 256
    held: list[socket.socket] = []
    node.start()
    try:
        while len(held) < 250:
            s = connect(node)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, _ = read_response(s)
            if status == 503:
                s.close()
                break
            held.append(s)
        assert 64 < len(held) < 250, len(held)
        assert node.get_json("/health")[0] == 200
        assert node.request("GET", "/")[0] == 503
        assert "open-files limit (256) is below what max_connections 1024 needs" in node.log()
    finally:
        for s in held:
            s.close()
        node.stop()
        node.kill()


# -- sending ------------------------------------------------------------------------------------


def test_a_client_that_does_not_read_is_disconnected_after_send_timeout(erlang_web_node: Start) -> None:
    greeting = "x" * (1 << 20)
    n = erlang_web_node(greeting=greeting, send_timeout=500, log_interval=200)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", n.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 32)  # 32 MiB of answers asked for
        time.sleep(2)  # read nothing for longer than send_timeout
        received = 0
        try:
            while chunk := s.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < 32 * len(greeting)
    wait_for(lambda: True if "response not taken by the client" in n.log() else None, 10, "the report")


# -- counting and logging ----------------------------------------------------------------------


def test_client_errors_and_503s_are_counted_and_logged_at_a_bounded_rate(erlang_web_node: Start) -> None:
    # (max_connections 20: a connection answered 400 may hold its slot a moment after the client has
    # its answer)
    n = erlang_web_node(max_connections=20, log_interval=300)
    started = time.monotonic()
    for _ in range(40):
        assert status_of(exchange(n, b"NONSENSE\r\n\r\n")) == 400
    held = hold(n, 20)
    try:
        for _ in range(30):
            assert n.request("GET", "/")[0] == 503
    finally:
        for s in held:
            s.close()

    def reports() -> list[str] | None:
        lines = [line for line in n.log().splitlines() if "erlang_web: in the last" in line]
        total = sum(int(m) for line in lines for m in re.findall(r"(\d+) x 400 Bad Request", line))
        total_503 = sum(int(m) for line in lines for m in re.findall(r"(\d+) x 503 Service", line))
        return lines if (total, total_503) == (40, 30) else None

    lines = wait_for(reports, 10, "reports counting 40 x 400 and 30 x 503")
    elapsed = time.monotonic() - started
    # one line per log_interval at most, however many errors there were
    assert len(lines) <= elapsed / 0.3 + 1, lines
    assert "NONSENSE" not in n.log()
