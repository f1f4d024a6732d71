"""``invoke status`` and ``invoke destroy`` on a stack in any state CloudFormation can leave it in.

moto's stacks reach their final state at once, so the tests put a stack created by a real deploy into
the states CloudFormation reports (StackStatus values of the CloudFormation API reference): a create
still running (no outputs yet), a failed create (ROLLBACK_COMPLETE, no outputs), a failed rollback or
delete, and an update that is still running when destroy is asked (destroy waits for it: CloudFormation
refuses DeleteStack during an update).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awstest import FakeClock, Recorder

from pipeline import config
from pipeline.aws import deploy, status
from pipeline.aws.deployment import Runtime
from pipeline.aws.session import Clients
from tests.deploy_support import make_clients, register_ami

REPO = Path(__file__).resolve().parent.parent
BUILD = "1111111111aa"
STACK = "erlang-web-dev"


class Stack:
    """A stack made by a real deploy, and a handle on moto's model of it."""

    def __init__(self) -> None:
        self.rec = Recorder()
        self.clients: Clients = make_clients(self.rec)
        self.clock = FakeClock()
        self.settings = config.load(REPO, env="dev", overrides=["deploy.bake_seconds=0"])
        register_ami(self.clients, self.settings, BUILD)
        deploy.deploy(self.settings, self.clients, self.runtime(), BUILD)

    def runtime(self) -> Runtime:
        return Runtime(sleep=self.clock.sleep, clock=self.clock.clock, confirm=lambda _q: True)

    def model(self) -> Any:
        from moto.cloudformation.models import cloudformation_backends

        (stack,) = [s for s in cloudformation_backends["123456789012"]["us-east-1"].stacks.values()
                    if s.name == STACK]  # fmt: skip
        return stack

    def put_in(self, state: str, outputs: bool = True) -> None:
        from moto.cloudformation.parsing import OutputMap

        stack = self.model()
        stack.status = state
        if not outputs:
            stack.output_map = OutputMap(stack.resource_map, {"Outputs": {}}, stack.stack_id)

    def describe(self) -> list[Any]:
        return [
            s for s in self.clients.cloudformation().describe_stacks()["Stacks"] if s["StackName"] == STACK
        ]


@pytest.fixture
def stack(aws_in_process: None) -> Iterator[Stack]:
    yield Stack()


STATES = [
    ("CREATE_IN_PROGRESS", False),
    ("ROLLBACK_COMPLETE", False),
    ("ROLLBACK_FAILED", False),
    ("CREATE_FAILED", False),
    ("DELETE_FAILED", True),
    ("UPDATE_ROLLBACK_FAILED", True),
    ("UPDATE_IN_PROGRESS", True),
    ("UPDATE_ROLLBACK_IN_PROGRESS", True),
]


@pytest.mark.parametrize(("state", "outputs"), STATES)
def test_status_reports_a_stack_in_any_state(stack: Stack, state: str, outputs: bool) -> None:
    stack.put_in(state, outputs)
    st = status.status(stack.settings, stack.clients)
    assert st is not None and st.status == state and st.stack == STACK
    status.show_status(st, STACK)  # prints without failing
    assert st.record()["status"] == state


@pytest.mark.parametrize(
    ("state", "outputs"),
    [s for s in STATES if not s[0].endswith("_IN_PROGRESS") or s[0].startswith("CREATE")],
)
def test_destroy_deletes_a_stack_in_any_settled_or_creating_state(
    stack: Stack, state: str, outputs: bool
) -> None:
    stack.put_in(state, outputs)
    stack.rec.clear()
    gone = status.destroy(stack.settings, stack.clients, stack.runtime())
    assert gone.deleted and stack.describe() == []
    assert stack.rec.mutating() == [("cloudformation", "DeleteStack")]


def test_destroy_waits_for_a_running_update_then_deletes(stack: Stack) -> None:
    stack.put_in("UPDATE_IN_PROGRESS")

    def update_ends(clock: FakeClock) -> None:
        if clock.now >= 60:
            stack.put_in("UPDATE_COMPLETE")

    stack.clock.on_sleep = update_ends
    stack.rec.clear()
    gone = status.destroy(stack.settings, stack.clients, stack.runtime())
    assert gone.deleted and stack.describe() == []
    assert stack.clock.now >= 60  # it waited for the update before asking for the delete
    assert stack.rec.mutating() == [("cloudformation", "DeleteStack")]


def test_a_stack_being_created_is_deleted_without_waiting(stack: Stack) -> None:
    """CloudFormation takes DeleteStack during CREATE_IN_PROGRESS: it stops creating and deletes."""
    stack.put_in("CREATE_IN_PROGRESS", outputs=False)
    assert status.destroy(stack.settings, stack.clients, stack.runtime()).deleted
    assert stack.clock.slept == []  # no wait before the delete (and moto deletes at once)


def test_the_local_balancer_stops_serving_a_listener_whose_stack_is_gone(stack: Stack) -> None:
    """A delete that failed half-way once left the stack's load balancer in the local AWS, and the
    local load balancer kept its port after the stack was gone. It serves the listeners of live stacks
    and of load balancers made outside any stack, not those a deleted stack left behind."""
    from moto.cloudformation.models import cloudformation_backends

    from pipeline.local import world

    elbv2, ec2 = stack.clients.elbv2(), stack.clients.ec2()
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    own = elbv2.create_load_balancer(Name="made-by-hand", Subnets=subnets)["LoadBalancers"][0]
    group = elbv2.create_target_group(
        Name="by-hand", Protocol="HTTP", Port=80, VpcId=_vpc_of(ec2, subnets[0])
    )
    elbv2.create_listener(
        LoadBalancerArn=own["LoadBalancerArn"],
        Protocol="HTTP",
        Port=8123,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": group["TargetGroups"][0]["TargetGroupArn"]}],
    )
    before = {lst.port: lst.load_balancer for lst in world.read("123456789012").listeners}
    assert sorted(before) == [80, 8123]

    # The delete that failed half-way: CloudFormation reports the stack deleted, the load balancer stays.
    backend = cloudformation_backends["123456789012"]["us-east-1"]
    model = stack.model()
    model.status = "DELETE_COMPLETE"
    backend.deleted_stacks[model.stack_id] = backend.stacks.pop(model.stack_id)
    assert len(elbv2.describe_load_balancers()["LoadBalancers"]) == 2

    after = {lst.port: lst.load_balancer for lst in world.read("123456789012").listeners}
    assert after == {8123: "made-by-hand"}


def _vpc_of(ec2: Any, subnet: str) -> str:
    return str(ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"])
