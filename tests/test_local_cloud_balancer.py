"""The local load balancer over real sockets: weights, the colour header rules, draining, targets that
refuse, health checks. The targets are small HTTP servers on loopback that answer with their name."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.local.balancer import Balancer
from pipeline.local.registry import HealthCheck, Machine, Registry
from pipeline.local.routing import Chooser
from tests.cloud_support import LoadLoop
from tests.test_local_cloud_units import BLUE, GREEN, listener

FAST = HealthCheck(path="/health", healthy_threshold=1, unhealthy_threshold=1, interval=0.1, timeout=1.0)


class Target:
    """A target: answers ``GET`` with its name; ``hold`` makes it wait before answering."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        self.health = 200
        self.headers: list[dict[str, str]] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._answer(target.health, b"ok")
                    return
                target.headers.append(dict(self.headers))
                target.arrived.set()
                target.hold.wait(30)
                if self.path == "/chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"one ", b"two"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self._answer(200, target.name.encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer(200, f"{target.name} got {len(body)} bytes".encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lb() -> Iterator[tuple[Balancer, Registry, dict[str, Target], int]]:
    registry = Registry()
    balancer = Balancer(registry, chooser=Chooser(random.Random(3)))
    balancer.start()
    targets = {name: Target(name) for name in ("i-blue", "i-green")}
    for name, t in targets.items():
        registry.add(Machine(name, "us-east-1", "g", name[2:], "b", "ami", FAST))
        registry.update(
            name, lambda m, port=t.port: (setattr(m, "phase", "running"), setattr(m, "host_port", port))
        )
        registry.observe(name, 200, "")
    port = _free_port()
    balancer.configure([_at(listener(100, 0), port)], {BLUE: ("i-blue",), GREEN: ("i-green",)})
    yield balancer, registry, targets, port
    balancer.stop()
    for t in targets.values():
        t.close()


def _free_port() -> int:
    from pipeline.local.qemu import free_port

    return free_port()


def _at(lst, port):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(lst, port=port)


def fetch(
    port: int, path: str = "/", method: str = "GET", body: bytes | None = None, **headers: str
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_traffic_follows_the_weights_and_the_colour_header(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    balancer, _, targets, port = lb
    assert {fetch(port)[1] for _ in range(20)} == {"i-blue"}
    assert fetch(port, X_Pipeline_Color="green") == (200, "i-green")
    balancer.configure([_at(listener(50, 50), port)], {BLUE: ("i-blue",), GREEN: ("i-green",)})
    seen = Counter(fetch(port)[1] for _ in range(200))
    assert 60 < seen["i-green"] < 140 and seen["i-blue"] + seen["i-green"] == 200
    balancer.configure([_at(listener(0, 100), port)], {BLUE: ("i-blue",), GREEN: ("i-green",)})
    assert {fetch(port)[1] for _ in range(20)} == {"i-green"}
    forwarded = targets["i-green"].headers[-1]
    assert forwarded["X-Forwarded-For"] == "127.0.0.1" and forwarded["X-Forwarded-Port"] == str(port)


def test_bodies_keep_alive_and_chunked_answers_are_relayed(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    _, _, _, port = lb
    assert fetch(port, "/echo", method="POST", body=b"x" * 5000) == (200, "i-blue got 5000 bytes")
    assert fetch(port, "/chunked") == (200, "one two")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(3):  # one connection, three requests
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"i-blue")
    finally:
        conn.close()


def test_a_draining_target_finishes_its_requests_and_gets_no_new_ones(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    balancer, registry, targets, port = lb
    blue = targets["i-blue"]
    blue.hold.clear()
    slow: list[tuple[int, str]] = []
    request = threading.Thread(target=lambda: slow.append(fetch(port, "/slow")))
    request.start()
    assert blue.arrived.wait(10)
    # the runner drains blue (its instance was terminated) while the weights move to green
    registry.drain("i-blue")
    balancer.configure([_at(listener(0, 100), port)], {BLUE: ("i-blue",), GREEN: ("i-green",)})
    assert [fetch(port)[1] for _ in range(5)] == ["i-green"] * 5
    assert registry.wait_idle("i-blue", 0.2) is False  # the slow request is still in flight
    blue.hold.set()
    request.join(10)
    assert slow == [(200, "i-blue")]
    assert registry.wait_idle("i-blue", 5) is True


def test_with_only_draining_targets_the_answer_is_503(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    _, registry, _, port = lb
    registry.drain("i-blue")
    assert fetch(port) == (503, "no target")
    assert fetch(port, X_Pipeline_Color="green") == (200, "i-green")


def test_a_colour_whose_every_target_is_unhealthy_still_gets_its_share_as_on_an_alb(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    """The group fails open (ALB user guide, "Health checks for Application Load Balancer target
    groups"): a colour that breaks while it has traffic keeps getting its share until its weight is
    taken away, so requests to it fail; this is what the load loops count."""
    balancer, registry, targets, port = lb
    for _ in range(FAST.unhealthy_threshold):
        registry.observe("i-blue", 500, "")
    assert registry.health_of("i-blue")[0] == "unhealthy"  # type: ignore[index]
    before = balancer.stats["fail_open"]
    assert [fetch(port) for _ in range(5)] == [(200, "i-blue")] * 5  # it still answers here
    assert balancer.stats["fail_open"] == before + 5
    targets["i-blue"].close()  # now it cannot answer at all: the requests fail, as on AWS
    assert fetch(port) == (502, "bad gateway")


def test_a_target_that_refuses_the_connection_is_given_up_for_another(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    balancer, registry, _, port = lb
    registry.add(Machine("i-gone", "us-east-1", "g", "blue", "b", "ami", FAST))
    registry.update(
        "i-gone", lambda m: (setattr(m, "phase", "running"), setattr(m, "host_port", _free_port()))
    )
    registry.observe("i-gone", 200, "")
    balancer.configure([_at(listener(100, 0), port)], {BLUE: ("i-gone", "i-blue"), GREEN: ("i-green",)})
    assert [fetch(port) for _ in range(10)] == [(200, "i-blue")] * 10
    assert balancer.stats["connect_failures"] >= 1


def test_health_checks_follow_the_target(lb: tuple[Balancer, Registry, dict[str, Target], int]) -> None:
    balancer, registry, targets, _ = lb
    green = targets["i-green"]
    green.health = 503
    balancer.watch("i-green", green.port, FAST)
    _until(lambda: registry.health_of("i-green")[0] == "unhealthy")  # type: ignore[index]
    assert registry.health_of("i-green") == (
        "unhealthy", "Target.ResponseCodeMismatch", "Health checks failed with these codes: [503]"
    )  # fmt: skip
    green.health = 200
    _until(lambda: registry.health_of("i-green")[0] == "healthy")  # type: ignore[index]
    balancer.unwatch("i-green")


def test_the_load_loop_sees_no_failure_while_the_weights_move(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    balancer, _, _, port = lb
    members = {BLUE: ("i-blue",), GREEN: ("i-green",)}
    with LoadLoop(f"http://127.0.0.1:{port}", interval=0.005, max_seconds=30) as loop:
        for weights in ((90, 10), (50, 50), (0, 100)):
            time.sleep(0.3)
            balancer.configure([_at(listener(*weights), port)], members)
        time.sleep(0.3)
    assert loop.failed == [] and loop.sent > 50
    assert loop.bodies() == ["i-blue", "i-green"]
    assert loop.answers[-1].body == "i-green"


def test_a_port_another_program_holds_is_reported_not_fatal(
    lb: tuple[Balancer, Registry, dict[str, Target], int],
) -> None:
    balancer, _, _, port = lb
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other = taken.getsockname()[1]
        balancer.configure([_at(listener(100, 0), port), _at(listener(100, 0), other)], {BLUE: ("i-blue",)})
        assert next(e["error"] for e in balancer.status() if e["port"] == other).startswith(
            f"cannot listen on 127.0.0.1:{other}"
        )
    assert fetch(port) == (200, "i-blue")


def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
