"""The health gate: judging an observation, waiting and watching with a fake clock, HTTP probes of the
real erlang_web app, and the 5xx metric."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from awstest import FakeClock

from pipeline.aws.health import (
    AwsHealth,
    HealthGate,
    Probe,
    Subject,
    Target,
    Unhealthy,
    arn_suffix,
    assess,
    http_probe,
)
from pipeline.aws.stack import COLOR_HEADER
from pipeline.aws.tags import Color
from tests.deploy_support import make_clients
from tests.erlnode import ErlangWebNode, free_port

BUILD = "2222222222bb"
OK = Probe(200, '{"status":"ok","storage":"ram"}')
VERSION = Probe(200, '{"app":"erlang_web","build_id":"2222222222bb"}')
ELB_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012"
LB = f"{ELB_ARN}:loadbalancer/app/erlang-web-dev-Load-ABC/0123456789abcdef"
TG = f"{ELB_ARN}:targetgroup/erlang-web-dev-Gree-XYZ/fedcba9876543210"
SUBJECT = Subject("green", TG, LB, capacity=2, build_id=BUILD)


def t(state: str, n: int = 1, reason: str = "") -> Target:
    return Target(f"i-{n:017x}", state, reason)


# -- judging one observation -----------------------------------------------------------------------


def test_healthy_needs_every_expected_target_healthy() -> None:
    assert assess([t("healthy", 1), t("healthy", 2)], 2, None, None, BUILD).healthy
    short = assess([t("healthy", 1)], 2, None, None, BUILD)
    assert not short.healthy and short.detail.startswith("1/2 targets healthy")
    mixed = assess([t("healthy", 1), t("initial", 2, "Elb.RegistrationInProgress")], 1, None, None, BUILD)
    assert not mixed.healthy
    assert "i-00000000000000002 initial (Elb.RegistrationInProgress)" in mixed.detail
    assert not assess([], 1, None, None, BUILD).healthy


def test_draining_targets_are_leaving_and_do_not_count() -> None:
    v = assess([t("healthy", 1), t("draining", 2)], 1, None, None, BUILD)
    assert v.healthy


def test_probes_must_answer_health_200_and_the_expected_build() -> None:
    targets = [t("healthy", 1)]
    assert assess(targets, 1, OK, VERSION, BUILD).healthy
    assert "/version build 2222222222bb" in assess(targets, 1, OK, VERSION, BUILD).detail
    starting = assess(targets, 1, Probe(503, '{"status":"starting"}'), VERSION, BUILD)
    assert not starting.healthy and "/health 503" in starting.detail
    old = assess(targets, 1, OK, Probe(200, '{"build_id":"1111111111aa"}'), BUILD)
    assert not old.healthy and "expected build 2222222222bb" in old.detail
    garbage = assess(targets, 1, OK, Probe(200, "<html>"), BUILD)
    assert not garbage.healthy and "/version build ?" in garbage.detail
    unreachable = assess(targets, 1, None, None, BUILD)
    assert unreachable.healthy and "not reachable from here" in unreachable.detail


# -- waiting and watching --------------------------------------------------------------------------


class Scripted:
    """A health source that plays back states per poll (tests only)."""

    def __init__(self, states: Callable[[int], list[Target]], errors: int = 0, probes: bool = False) -> None:
        self.states = states
        self.errors = errors
        self.polls = 0
        self.probes = probes
        self.probed: list[tuple[Color, str]] = []

    def targets(self, target_group_arn: str) -> list[Target]:
        assert target_group_arn == TG
        self.polls += 1
        return self.states(self.polls)

    def probe(self, color: Color, path: str) -> Probe | None:
        self.probed.append((color, path))
        if not self.probes:
            return None
        return OK if path == "/health" else VERSION

    def errors_5xx(self, load_balancer_arn: str, target_group_arn: str, minutes: int) -> int:
        assert (load_balancer_arn, target_group_arn) == (LB, TG)
        return self.errors


def test_wait_healthy_polls_until_healthy_and_reports_each_change() -> None:
    clock = FakeClock()
    lines: list[str] = []
    src = Scripted(
        lambda n: [t("initial", 1), t("initial", 2)] if n < 4 else [t("healthy", 1), t("healthy", 2)],
        probes=True,
    )
    gate = HealthGate(src, clock.sleep, clock.clock, lines.append)
    verdict = gate.wait_healthy(SUBJECT, timeout=600)
    assert verdict.healthy
    assert src.polls == 4 and clock.slept == [10.0, 10.0, 10.0]
    assert len(lines) == 2  # one line per change, not per poll
    assert src.probed[:2] == [("green", "/health"), ("green", "/version")]


def test_wait_healthy_gives_up_at_the_deadline() -> None:
    clock = FakeClock()
    gate = HealthGate(Scripted(lambda n: [t("unhealthy", 1, "Target.Timeout")]), clock.sleep, clock.clock)
    with pytest.raises(Unhealthy) as err:
        gate.wait_healthy(Subject("green", TG, LB, 1, BUILD), timeout=45)
    assert clock.now == pytest.approx(45)
    assert "green (build 2222222222bb) did not become healthy within 45s" in str(err.value)
    assert "unhealthy (Target.Timeout)" in str(err.value)


def test_watch_holds_for_the_bake_time_while_healthy() -> None:
    clock = FakeClock()
    src = Scripted(lambda n: [t("healthy", 1), t("healthy", 2)])
    HealthGate(src, clock.sleep, clock.clock).watch(SUBJECT, 60)
    assert sum(clock.slept) == pytest.approx(60) and src.polls == 7


def test_watch_fails_as_soon_as_health_is_lost_or_5xx_pile_up() -> None:
    clock = FakeClock()
    src = Scripted(lambda n: [t("healthy", 1), t("unhealthy" if n == 3 else "healthy", 2)])
    with pytest.raises(Unhealthy, match="became unhealthy"):
        HealthGate(src, clock.sleep, clock.clock).watch(SUBJECT, 600)
    assert src.polls == 3
    errors = Scripted(lambda n: [t("healthy", 1), t("healthy", 2)], errors=6)
    with pytest.raises(Unhealthy, match="answered 6 requests with 5xx in one minute"):
        HealthGate(errors, clock.sleep, clock.clock).watch(SUBJECT, 600)
    fine = Scripted(lambda n: [t("healthy", 1), t("healthy", 2)], errors=5)
    HealthGate(fine, clock.sleep, clock.clock).watch(SUBJECT, 30)


# -- HTTP probes -----------------------------------------------------------------------------------


def test_http_probe_reads_health_and_version_from_the_real_app(
    erlang_web_node: Callable[..., ErlangWebNode],
) -> None:
    node = erlang_web_node("probe", build_id=BUILD, env="dev", image_target="beam")
    base = f"http://127.0.0.1:{node.port}"
    health = http_probe(base + "/health", {}, 5)
    version = http_probe(base + "/version", {}, 5)
    assert health is not None and health.status == 200
    assert assess([t("healthy")], 1, health, version, BUILD).healthy
    assert not assess([t("healthy")], 1, health, version, "3333333333cc").healthy
    missing = http_probe(base + "/nope", {}, 5)
    assert missing is not None and missing.status == 404


def test_http_probe_of_nothing_listening_is_not_reachable() -> None:
    assert http_probe(f"http://127.0.0.1:{free_port()}/health", {}, 2) is None


@pytest.fixture
def echo_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server that records request headers and answers like a colour's /version."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b'{"build_id":"' + self.headers.get(COLOR_HEADER, "").encode() + b'"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_aws_health_probes_a_colour_through_the_load_balancer_with_its_header_and_token(
    echo_server: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = echo_server
    token = "0123456789abcdef0123456789abcdef"
    health = AwsHealth(elbv2=None, cloudwatch=None, probe_url=url + "/", probe_token=token)  # type: ignore[arg-type]
    answer = health.probe("green", "/version")
    assert answer is not None and answer.status == 200 and '"green"' in answer.body
    assert seen[0][COLOR_HEADER.lower()] == "green" and seen[0]["x-pipeline-probe"] == token
    assert AwsHealth(elbv2=None, cloudwatch=None, probe_url=None).probe("blue", "/health") is None  # type: ignore[arg-type]


# -- the 5xx metric --------------------------------------------------------------------------------


def test_dimension_values_come_from_the_arns() -> None:
    assert arn_suffix(LB, "loadbalancer/") == "app/erlang-web-dev-Load-ABC/0123456789abcdef"
    assert arn_suffix(TG, "targetgroup/") == "targetgroup/erlang-web-dev-Gree-XYZ/fedcba9876543210"


def test_errors_5xx_is_the_worst_minute_of_the_colours_metric(aws_in_process: None) -> None:
    clients = make_clients()
    cw = clients.client("cloudwatch")
    now = datetime.now(UTC)
    for tg, value in ((TG, 3.0), (TG, 9.0), (TG.replace("Gree-XYZ", "Blue-QQQ"), 50.0)):
        cw.put_metric_data(
            Namespace="AWS/ApplicationELB",
            MetricData=[
                {
                    "MetricName": "HTTPCode_Target_5XX_Count",
                    "Dimensions": [
                        {"Name": "LoadBalancer", "Value": arn_suffix(LB, "loadbalancer/")},
                        {"Name": "TargetGroup", "Value": arn_suffix(tg, "targetgroup/")},
                    ],
                    "Timestamp": now,
                    "Value": value,
                }
            ],
        )
    health = AwsHealth(clients.elbv2(), cw, None)
    assert health.errors_5xx(LB, TG, 2) == 12  # same minute: summed; the other colour is not counted
    assert health.errors_5xx(LB, TG.replace("Gree-XYZ", "Nope-000"), 2) == 0
