"""The local cloud's pure parts: rule matching and weighted choice as an ALB does them, the target health
state machine, the memory check, and where a load balancer URL of the local AWS really answers."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from pipeline import config
from pipeline.local import control, memory
from pipeline.local.registry import HealthCheck, HealthTracker, Machine, Registry
from pipeline.local.routing import (
    Chooser,
    Condition,
    Fixed,
    Forward,
    Listener,
    Request,
    Rule,
    action_of,
    condition_of,
    route,
)

BLUE, GREEN = "arn:tg/blue", "arn:tg/green"


def listener(blue: int, green: int) -> Listener:
    """The stack's listener as ELBv2 stores it (see cfn/): header rules 1 and 2, the weighted rule 10,
    a fixed 503 by default."""
    header = [
        {"Field": "http-header", "HttpHeaderConfig": {"HttpHeaderName": "X-Pipeline-Color", "Values": [c]}}
        for c in ("blue", "green")
    ]
    weighted = {
        "Type": "forward",
        "ForwardConfig": {
            "TargetGroups": [
                {"TargetGroupArn": BLUE, "Weight": blue},
                {"TargetGroupArn": GREEN, "Weight": green},
            ]
        },
    }
    return Listener(
        port=8000,
        load_balancer="lb",
        dns_name="lb-1.us-east-1.elb.amazonaws.com",
        rules=(
            Rule(1, (condition_of(header[0]),), action_of([{"Type": "forward", "TargetGroupArn": BLUE}])),
            Rule(2, (condition_of(header[1]),), action_of([{"Type": "forward", "TargetGroupArn": GREEN}])),
            Rule(
                10,
                (condition_of({"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}),),
                action_of([weighted]),
            ),
        ),
        default=action_of(
            [
                {
                    "Type": "fixed-response",
                    "FixedResponseConfig": {"StatusCode": "503", "MessageBody": "no route"},
                }
            ]
        ),
    )


def get(path: str = "/", **headers: str) -> Request:
    return Request("GET", path, {k.lower().replace("_", "-"): v for k, v in headers.items()})


def test_the_colour_header_selects_one_group_whatever_the_weights() -> None:
    lst = listener(100, 0)
    assert route(lst, get("/version", X_Pipeline_Color="green")) == Forward(((GREEN, 1),))
    assert route(lst, get("/version", x_pipeline_color="BLUE")) == Forward(((BLUE, 1),))  # values ignore case
    assert route(lst, get("/", X_Pipeline_Color="purple")) == Forward(((BLUE, 100), (GREEN, 0)))


def test_a_request_no_rule_matches_gets_the_default_action() -> None:
    lst = listener(100, 0)
    assert route(lst, get("no-leading-slash")) == Fixed(503, "text/plain", "no route")


@pytest.mark.parametrize(
    ("condition", "request_", "matched"),
    [
        (Condition("path-pattern", ("/api/*",)), get("/api/v1?x=1"), True),
        (Condition("path-pattern", ("/api/*",)), get("/API/v1"), False),  # paths are case-sensitive
        (Condition("path-pattern", ("/v?",)), get("/v2"), True),
        (Condition("path-pattern", ("/v?",)), get("/v22"), False),
        (Condition("host-header", ("*.example.com",)), get("/", Host="App.Example.com:8000"), True),
        (Condition("http-request-method", ("POST",)), get("/"), False),
        (Condition("query-string", ("a=b",)), get("/?a=b"), False),  # not supported locally: no match
    ],
)
def test_conditions_match_as_an_alb_matches_them(
    condition: Condition, request_: Request, matched: bool
) -> None:
    from pipeline.local.routing import matches

    assert matches(condition, request_) is matched


def test_weights_split_the_traffic_and_a_zero_weight_gets_none() -> None:
    members = {BLUE: ["i-b1", "i-b2"], GREEN: ["i-g1"]}
    chooser = Chooser(random.Random(7))

    def pick(action: Forward) -> str:
        chosen = chooser.choose(action, members, lambda _t: "healthy")
        assert chosen is not None and not chosen.fail_open
        return chosen.target

    picks = Counter(pick(Forward(((BLUE, 90), (GREEN, 10)))) for _ in range(5000))
    green_share = picks["i-g1"] / 5000
    assert 0.08 < green_share < 0.12
    assert abs(picks["i-b1"] - picks["i-b2"]) <= 1  # round robin inside a group
    assert {pick(Forward(((BLUE, 100), (GREEN, 0)))) for _ in range(200)} == {"i-b1", "i-b2"}


def test_a_group_with_no_healthy_target_fails_open_to_all_its_registered_targets() -> None:
    """ALB user guide, "Health checks for Application Load Balancer target groups": "If a target group
    contains only unhealthy registered targets, the load balancer routes requests to all those targets,
    regardless of their health status." Draining targets take no new requests."""
    members = {BLUE: ["i-b1"], GREEN: ["i-g1", "i-g2", "i-g3"]}
    states = {"i-b1": "healthy", "i-g1": "unhealthy", "i-g2": "unhealthy", "i-g3": "draining"}
    chooser = Chooser(random.Random(1))
    picks = [
        chooser.choose(Forward(((BLUE, 50), (GREEN, 50))), members, states.__getitem__) for _ in range(400)
    ]
    assert all(p is not None for p in picks)
    to_green = [p for p in picks if p and p.target.startswith("i-g")]
    assert 150 < len(to_green) < 250  # green keeps its share: its weight is not handed to blue
    assert {p.target for p in to_green} == {"i-g1", "i-g2"} and all(p.fail_open for p in to_green)
    # a target still in its initial checks is not in service: a group of only those is left out
    states.update({"i-g1": "initial", "i-g2": "unhealthy"})
    assert {
        chooser.choose(Forward(((GREEN, 50), (BLUE, 50))), members, states.__getitem__).target
        for _ in range(50)
    } == {"i-b1"}  # type: ignore[union-attr]
    # a group with a healthy target sends only to it
    states["i-g2"] = "healthy"
    assert {
        chooser.choose(Forward(((GREEN, 1),)), members, states.__getitem__).target for _ in range(20)
    } == {  # type: ignore[union-attr]
        "i-g2"
    }


def test_a_group_with_only_draining_or_unknown_targets_is_left_out_and_none_left_means_no_target() -> None:
    members = {BLUE: ["i-b1"], GREEN: ["i-g1", "i-g2"]}
    chooser = Chooser(random.Random(1))
    states = {"i-b1": "draining", "i-g1": "healthy", "i-g2": ""}
    picks = {
        chooser.choose(Forward(((BLUE, 50), (GREEN, 50))), members, states.__getitem__) for _ in range(100)
    }
    assert {p.target for p in picks if p} == {"i-g1"} and None not in picks
    assert chooser.choose(Forward(((BLUE, 50),)), members, states.__getitem__) is None
    assert chooser.choose(Forward(((GREEN, 1),)), members, states.__getitem__, frozenset({"i-g1"})) is None


# -- target health -----------------------------------------------------------------------------------------


def test_a_target_is_initial_until_it_passes_the_healthy_threshold() -> None:
    h = HealthTracker(HealthCheck(healthy_threshold=2, unhealthy_threshold=2))
    assert h.observe(None, "connection refused") is False  # booting: not an answer yet
    assert (h.state, h.describe()[0]) == ("initial", "Elb.RegistrationInProgress")
    h.observe(200)
    assert (h.state, h.describe()[0]) == ("initial", "Elb.InitialHealthChecking")
    assert h.observe(200) is True
    assert (h.state, h.describe()) == ("healthy", ("", ""))


def test_failures_after_the_first_answer_make_it_unhealthy_with_the_reason_elb_gives() -> None:
    h = HealthTracker(HealthCheck(healthy_threshold=2, unhealthy_threshold=2, matcher="200-299"))
    h.observe(503)
    assert h.state == "initial"
    h.observe(503)
    assert h.state == "unhealthy"
    assert h.describe() == ("Target.ResponseCodeMismatch", "Health checks failed with these codes: [503]")
    h.observe(204), h.observe(204)
    assert h.state == "healthy"
    h.observe(None, "request timed out"), h.observe(None, "request timed out")
    assert h.describe() == ("Target.Timeout", "Request timed out: request timed out")


def test_the_matcher_takes_lists_and_ranges() -> None:
    check = HealthCheck(matcher="200,202-204")
    assert [s for s in (200, 201, 202, 204, 205, 503) if check.accepts(s)] == [200, 202, 204]


def test_a_draining_machine_takes_no_new_request_and_is_idle_when_its_last_one_ends() -> None:
    registry = Registry()
    m = Machine("i-1", "us-east-1", "g", "blue", "b", "ami-1", HealthCheck(healthy_threshold=1))
    registry.add(m)
    assert registry.acquire("i-1") is None  # not running yet
    registry.update("i-1", lambda x: setattr(x, "phase", "running") or setattr(x, "host_port", 9999))
    registry.observe("i-1", 200, "")
    assert registry.acquire("i-1") == 9999
    assert registry.drain("i-1") is True
    assert registry.health_of("i-1") == ("draining", "Target.DeregistrationInProgress",
                                         "Target deregistration is in progress")  # fmt: skip
    assert registry.acquire("i-1") is None
    assert registry.wait_idle("i-1", 0.05) is False  # one request still in flight
    registry.release("i-1")
    assert registry.wait_idle("i-1", 0.05) is True


# -- memory --------------------------------------------------------------------------------------------------


def test_vms_that_fit_are_allowed() -> None:
    memory.check_room(2, 256, available_mb=4096, running=[memory.Running(256, 380)])


def test_more_vms_than_memory_available_are_refused_with_the_figures() -> None:
    with pytest.raises(memory.NotEnoughMemory) as err:
        memory.check_room(4, 1024, available_mb=4096, running=[memory.Running(1024, 100)])
    # 4 x (1024 + 128) = 4608 MiB needed; 4096 - 512 - (1024 + 128 - 100) = 2532 MiB of room
    assert str(err.value) == (
        "the local cloud: 4 VM(s) of 1024 MiB need 4608 MiB, but only 2532 MiB are free for VMs "
        "(MemAvailable 4096 MiB, minus 512 MiB kept for the host, minus 1052 MiB the 1 running VM(s) "
        "may still use) (hint: lower local.capacity or local.vm_memory_mb, or stop other VMs "
        "(invoke local.down))"
    )


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   2097152 kB\n")
    assert memory.available_mb(meminfo) == 2048


# -- where the local load balancer answers ---------------------------------------------------------------


def test_a_load_balancer_url_of_the_local_aws_maps_to_127_0_0_1_at_its_port() -> None:
    dns = "erlang-web-dev-Load-OIQRJ7PLWZHF-1.us-east-1.elb.amazonaws.com"
    assert control.local_url(f"http://{dns}:8123") == "http://127.0.0.1:8123"
    assert control.local_url(f"http://{dns}") == "http://127.0.0.1:80"
    assert control.local_url(f"http://{dns}/health") == "http://127.0.0.1:80/health"
    assert control.local_url("") == ""


def test_the_cloud_takes_its_settings_from_local_and_round_trips_them() -> None:
    s = config.load(
        env="dev", overrides=["local.boot=direct", "local.vm_memory_mb=512", "local.run_instances=false"]
    )
    cfg = control.CloudConfig.from_settings(s)
    assert cfg == control.CloudConfig(run_instances=False, boot="direct", vm_memory_mb=512)
    assert control.CloudConfig.from_json(cfg.to_json()) == cfg


def test_run_instances_must_be_a_boolean() -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"local\.run_instances"):
        config.load(env="dev", overrides=['local.run_instances="sometimes"'])
