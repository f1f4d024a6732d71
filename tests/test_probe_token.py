"""The probe rules open a colour only to the holder of the release's token, and the load balancer's idle
timeout is the configured one: in the template, in the stack's parameters, and in the local load
balancer's routing as it reads the rules back from the (in-process) local AWS."""

from __future__ import annotations

from pathlib import Path

from pipeline import config
from pipeline.aws import cfn, probe, stack
from pipeline.aws.params import Release, Side, StackState
from pipeline.local import world
from pipeline.local.routing import Forward, Request, route
from tests.deploy_support import make_clients, register_ami

REPO = Path(__file__).resolve().parent.parent
TOKEN_A, TOKEN_B = "a" * 32, "b" * 32


def state(blue: str, green: str, blue_weight: int = 100) -> StackState:
    def side(image: str, weight: int) -> Side:
        return Side(Release(image, "1111111111aa", "t3.micro", "hvm"), 0, weight)

    return StackState(side(blue, blue_weight), side(green, 100 - blue_weight))


def values(params: list[dict[str, str]]) -> dict[str, str]:
    return {p["ParameterKey"]: p["ParameterValue"] for p in params}


def test_the_token_is_kept_while_the_releases_stay_and_renewed_when_one_changes() -> None:
    tokens = iter([TOKEN_A, TOKEN_B])
    first = values(probe.with_token(state("ami-1", "ami-1").parameters(), None, lambda: next(tokens)))
    assert first[probe.PARAMETER] == TOKEN_A  # a new stack: a new token
    shifted = probe.with_token(state("ami-1", "ami-1", 50).parameters(), first, lambda: "unused")
    assert values(shifted)[probe.PARAMETER] == TOKEN_A  # weights and capacity move: the same
    released = probe.with_token(state("ami-1", "ami-2").parameters(), first, lambda: next(tokens))
    assert values(released)[probe.PARAMETER] == TOKEN_B  # green gets another image: a new one
    older = {k: v for k, v in first.items() if k != probe.PARAMETER}  # a stack made before tokens
    assert (
        values(probe.with_token(state("ami-1", "ami-1").parameters(), older, lambda: "c" * 32))[
            probe.PARAMETER
        ]
        == "c" * 32
    )
    assert len(probe.new_token()) == 32 and probe.new_token() != probe.new_token()


def test_without_the_token_the_colour_header_reaches_only_the_weighted_rule(aws_in_process: None) -> None:
    settings = config.load(REPO, env="dev", overrides=["deploy.idle_timeout_seconds=45"])
    clients = make_clients()
    image = register_ami(clients, settings, "1111111111aa")
    template = stack.render(stack.params_for(settings))
    params = probe.with_token(state(image, image).parameters(), None, lambda: TOKEN_A)
    cf = clients.cloudformation()
    cfn.create(cf, "erlang-web-dev", template, params, [])

    outputs = {o["OutputKey"]: o["OutputValue"] for o in cf.describe_stacks()["Stacks"][0]["Outputs"]}
    attributes = clients.elbv2().describe_load_balancer_attributes(LoadBalancerArn=outputs["LoadBalancerArn"])
    assert {"Key": "idle_timeout.timeout_seconds", "Value": "45"} in attributes["Attributes"]

    (listener,) = world.read("123456789012").listeners
    assert listener.idle_timeout == 45.0  # what the local load balancer closes idle connections after
    green_arn = outputs["GreenTargetGroupArn"]

    def routed(**headers: str) -> object:
        return route(listener, Request("GET", "/version", {k.lower(): v for k, v in headers.items()}))

    probe_headers = probe.headers("green", TOKEN_A)
    assert routed(**probe_headers) == Forward(((green_arn, 1),))
    for wrong in ({probe.COLOR_HEADER: "green"}, probe.headers("green", TOKEN_B)):
        action = routed(**wrong)
        assert isinstance(action, Forward) and len(action.groups) == 2  # the weighted rule: 100/0
        assert dict(action.groups)[green_arn] == 0
