"""Blue/green rollouts against in-process moto: the full cycle, every way a release can fail and roll
back, and bad input refused before anything changes.

The assertions are on the sequence of stack parameter sets the pipeline sent (recorded calls) and on
its own checks; moto's final state is checked only where moto models it (weights of the listener rule,
the image each group's instances run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from awstest import FakeClock, Recorder

from pipeline import build, config, ui
from pipeline.aws import ami, deploy, gc, history, provenance, rollback
from pipeline.aws import status as stack_status
from pipeline.aws.deploy import Runtime
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError
from tests.deploy_support import (
    REGION,
    TargetHealth,
    TwoReleases,
    fail_updates,
    make_clients,
    register_ami,
    set_stack_status,
    slow_updates,
)
from tests.project import copy_project

REPO = Path(__file__).resolve().parent.parent
STACK = "erlang-web-dev"
BAKE, RETENTION, TIMEOUT = 30, 300, 120
OVERRIDES = [
    f"deploy.bake_seconds={BAKE}",
    f"deploy.retention_seconds={RETENTION}",
    f"deploy.health_timeout_seconds={TIMEOUT}",
]
B1, B2, B3 = "1111111111aa", "2222222222bb", "3333333333cc"
GIT = provenance.GitState("unknown", "unknown")


@dataclass
class World:
    settings: Settings
    clients: Clients
    rec: Recorder
    clock: FakeClock
    health: TargetHealth

    def runtime(self, answer: bool = True) -> Runtime:
        self.questions: list[str] = []

        def confirm(question: str) -> bool:
            self.questions.append(question)
            return answer

        return Runtime(sleep=self.clock.sleep, clock=self.clock.clock, confirm=confirm)

    def ami(self, build_id: str, virtualization: str = "hvm") -> str:
        return register_ami(self.clients, self.settings, build_id, virtualization)

    def deploy(self, build_id: str, **kw: object) -> deploy.Outcome:
        return deploy.deploy(self.settings, self.clients, self.runtime(), build_id, **kw)  # type: ignore[arg-type]

    def params(self) -> dict[str, str]:
        info = self.clients.cloudformation().describe_stacks(StackName=STACK)["Stacks"][0]
        return {p["ParameterKey"]: p["ParameterValue"] for p in info["Parameters"]}

    def rule_weights(self) -> dict[str, int]:
        """The weighted listener rule as the load balancer has it (moto models this faithfully)."""
        elbv2 = self.clients.elbv2()
        outputs = stack_outputs(self.clients)
        listener = elbv2.describe_listeners(LoadBalancerArn=outputs["LoadBalancerArn"])["Listeners"][0]
        rules = elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
        (weighted,) = [r for r in rules if r["Priority"] == "10"]
        groups = weighted["Actions"][0]["ForwardConfig"]["TargetGroups"]
        by_arn = {outputs["BlueTargetGroupArn"]: "blue", outputs["GreenTargetGroupArn"]: "green"}
        return {by_arn[g["TargetGroupArn"]]: int(g["Weight"]) for g in groups}

    def images_running(self, color: str) -> set[str]:
        """The AMIs of the instances the colour's group runs (moto launches from the launch template)."""
        name = stack_outputs(self.clients)[f"{color.capitalize()}ServerGroupName"]
        groups = self.clients.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        ids = [i["InstanceId"] for g in groups["AutoScalingGroups"] for i in g["Instances"]]
        if not ids:
            return set()
        reservations = self.clients.ec2().describe_instances(InstanceIds=ids)["Reservations"]
        return {i["ImageId"] for r in reservations for i in r["Instances"]}


def stack_outputs(clients: Clients) -> dict[str, str]:
    info = clients.cloudformation().describe_stacks(StackName=STACK)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in info["Outputs"]}


def colors(params: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """(image, capacity, weight) per colour, for readable sequence assertions."""
    return {
        c: (
            params[f"{c.capitalize()}ImageId"],
            params[f"{c.capitalize()}Capacity"],
            params[f"{c.capitalize()}Weight"],
        )
        for c in ("blue", "green")
    }


@pytest.fixture
def world(aws_in_process: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    rec = Recorder()
    yield World(
        config.load(REPO, env="dev", overrides=OVERRIDES),
        make_clients(rec),
        rec,
        FakeClock(),
        TargetHealth(monkeypatch),
    )


@pytest.fixture
def live_v1(world: World) -> tuple[World, str, str]:
    """A stack with build B1 live on blue, and B2's AMI registered."""
    v1, v2 = world.ami(B1), world.ami(B2)
    world.deploy(B1)
    return world, v1, v2


def only_stack_updates_mutate(calls: list) -> None:  # type: ignore[type-arg]
    """Every change went through CloudFormation: no direct ELBv2, Auto Scaling or EC2 mutation."""
    mutating = {c.action for c in calls if c.mutating}
    assert mutating <= {
        "cloudformation:CreateStack",
        "cloudformation:UpdateStack",
        "cloudformation:DeleteStack",
        "cloudformation:CreateChangeSet",
        "cloudformation:DeleteChangeSet",
    }, mutating


# -- the full cycle --------------------------------------------------------------------------------


@pytest.mark.slow  # two real beam builds (once per session), uploaded and registered
def test_full_cycle_build_ami_deploy_v1_deploy_v2_status_rollback_destroy_gc(
    aws_in_process: None,
    two_releases: TwoReleases,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s1 = two_releases.settings("v1", *OVERRIDES, "ami.keep=1")
    s2 = two_releases.settings("v2", *OVERRIDES, "ami.keep=1")
    rec, clock = Recorder(), FakeClock()
    clients = make_clients(rec)
    health = TargetHealth(monkeypatch)
    w = World(s1, clients, rec, clock, health)

    def publish(s: Settings) -> ami.Publication:
        """The ami stage, as ``invoke ami`` runs it, on the build of ``s``'s inputs."""
        return ami.publish(
            s, clients, build.build(s), progress=False, git=GIT, sleep=clock.sleep, clock=clock.clock
        )

    # build -> ami: the build is found again (nothing changes), its disk uploaded and registered
    b1 = build.build(s1)
    assert b1.reused and b1.build_id == two_releases.v1.build_id
    mark = rec.mark()
    pub1 = publish(s1)
    ami1 = pub1.images[REGION].image_id
    assert pub1.snapshot is not None and pub1.snapshot.parent_id == "none"
    assert ("ebs", "PutSnapshotBlock") in {(c.service, c.operation) for c in rec.since(mark)}
    (registered,) = [c.params for c in rec.since(mark) if c.operation == "RegisterImage"]
    assert (registered["BootMode"], registered["VirtualizationType"]) == ("uefi", "hvm")

    # deploy v1: the stack is created with v1 live on blue, without a question (no release to replace)
    mark = rec.mark()
    out = deploy.deploy(s1, clients, w.runtime())
    assert (out.action, out.live, out.build_id, out.image_id) == ("created", "blue", b1.build_id, ami1)
    assert w.questions == []
    assert [colors(p) for p in rec.stack_parameter_sets(mark)] == [
        {"blue": (ami1, "1", "100"), "green": (ami1, "0", "0")},
        {"blue": (ami1, "1", "100"), "green": (ami1, "0", "0")},  # healthy and baked: recorded live
    ]
    assert w.images_running("blue") == {ami1}
    assert w.rule_weights() == {"blue": 100, "green": 0}
    assert out.url.startswith("http://") and out.url.endswith(".elb.amazonaws.com")

    # a configuration change is a new build, a new AMI (a delta on v1's snapshot) and a release on green
    b2 = build.build(s2)
    assert b2.build_id == two_releases.v2.build_id != b1.build_id
    pub2 = publish(s2)
    ami2 = pub2.images[REGION].image_id
    assert pub2.snapshot is not None
    assert pub2.snapshot.parent_id == pub1.snapshot.snapshot_id
    assert 0 < pub2.snapshot.blocks_sent < pub1.snapshot.blocks_sent
    mark, started = rec.mark(), clock.now
    out = deploy.deploy(s2, clients, w.runtime())
    assert (out.action, out.live, out.build_id) == ("released", "green", b2.build_id)
    sent = rec.stack_parameter_sets(mark)
    assert [colors(p) for p in sent] == [
        {"blue": (ami1, "1", "100"), "green": (ami2, "1", "0")},  # green gets v2 at blue's capacity
        {"blue": (ami1, "1", "90"), "green": (ami2, "1", "10")},
        {"blue": (ami1, "1", "50"), "green": (ami2, "1", "50")},
        {"blue": (ami1, "1", "0"), "green": (ami2, "1", "100")},
        {"blue": (ami1, "1", "0"), "green": (ami2, "1", "100")},  # the history records v2 live
        {"blue": (ami1, "0", "0"), "green": (ami2, "1", "100")},  # blue keeps v1 for rollback
    ]
    assert all(len(p) == 16 for p in sent)  # every parameter (history, probe token, bounds), every time
    assert {p["GreenBuildId"] for p in sent} == {b2.build_id}
    # green's new release got a new probe token, kept while only weights and capacity moved
    created = rec.stack_parameter_sets()[0]["ProbeToken"]
    assert len({p["ProbeToken"] for p in sent} | {created}) == 2
    calls = rec.since(mark)
    only_stack_updates_mutate(calls)
    plans = [c for c in calls if c.operation == "CreateChangeSet"]
    assert len(plans) == 1 and plans[0].params["ChangeSetType"] == "UPDATE"
    assert [c.operation for c in calls].count("DeleteChangeSet") >= 1
    assert not any(p.get("UsePreviousValue") for c in calls for p in c.params.get("Parameters", []))
    assert clock.now - started >= 3 * BAKE + RETENTION  # the bakes and the retention were held ...
    assert w.rule_weights() == {"blue": 0, "green": 100}
    assert w.images_running("green") == {ami2}
    assert w.images_running("blue") == set()
    assert "plan: start 1 instance(s)" in capsys.readouterr().err

    # ami and deploy again: nothing changes at all
    mark = rec.mark()
    assert publish(s2).images[REGION].image_id == ami2
    again = deploy.deploy(s2, clients, w.runtime())
    assert again.action == "unchanged"
    assert [c.action for c in rec.since(mark) if c.mutating] == []

    # status: colours, AMIs, builds, capacities, weights, target health, stack status
    st = stack_status.status(s2, clients)
    assert st is not None
    rows = {c.color: c for c in st.colors}
    assert (st.status, st.live) == ("UPDATE_COMPLETE", "green")
    assert (rows["green"].image_id, rows["green"].build_id, rows["green"].weight) == (ami2, b2.build_id, 100)
    assert (rows["green"].capacity, rows["green"].instances) == (1, 1)
    assert [t.state for t in rows["green"].targets] == ["healthy"]
    assert (rows["blue"].image_id, rows["blue"].capacity, rows["blue"].weight) == (ami1, 0, 0)
    assert (rows["blue"].instances, rows["blue"].targets) == (0, ())
    monkeypatch.setattr(ui.console, "width", 200)
    stack_status.show_status(st, STACK)
    table = capsys.readouterr().err
    assert "green (live)" in table and ami2 in table and "1 healthy" in table

    # rollback: blue comes back with v1, gets healthy, takes the traffic; green scales down after
    mark = rec.mark()
    out = rollback.rollback(s2, clients, w.runtime())
    assert (out.action, out.live, out.image_id) == ("rolled back", "blue", ami1)
    assert [colors(p) for p in rec.stack_parameter_sets(mark)] == [
        {"blue": (ami1, "1", "0"), "green": (ami2, "1", "100")},
        {"blue": (ami1, "1", "100"), "green": (ami2, "1", "0")},
        {"blue": (ami1, "1", "100"), "green": (ami2, "1", "0")},  # the history records v1 live again
        {"blue": (ami1, "1", "100"), "green": (ami2, "0", "0")},
    ]
    only_stack_updates_mutate(rec.since(mark))
    assert w.images_running("blue") == {ami1}
    assert w.rule_weights() == {"blue": 100, "green": 0}

    # while the stack uses both AMIs, gc keeps them (ami.keep=1 would keep only v2)
    assert gc.plan(clients, s2).removals == []

    # destroy: the stack goes; what gc could remove now is v1's image and snapshot (v2 is the newest)
    gone = stack_status.destroy(s2, clients, w.runtime())
    assert gone.deleted and gone.collectable is not None
    assert [q for q in w.questions if "delete stack" in q]
    assert stack_status.status(s2, clients) is None
    snapshot1 = pub1.snapshot.snapshot_id
    assert {(r.kind, r.resource_id) for r in gone.collectable.removals} == {
        ("image", ami1),
        ("snapshot", snapshot1),
    }

    # gc: removes them; v2 and its snapshot stay
    mark = rec.mark()
    assert gc.apply(clients, s2, gone.collectable) == []
    assert {(c.operation, c.params.get("ImageId") or c.params.get("SnapshotId")) for c in rec.since(mark)
            if c.mutating} == {("DeregisterImage", ami1), ("DeleteSnapshot", snapshot1)}  # fmt: skip
    assert ami.find_image(clients, s2, b1.build_id, "hvm", REGION) is None
    assert ami.find_image(clients, s2, b2.build_id, "hvm", REGION) is not None
    assert gc.plan(clients, s2).removals == []


# -- failures roll back ----------------------------------------------------------------------------


def test_green_never_healthy_rolls_back_to_blue(live_v1: tuple[World, str, str]) -> None:
    w, v1, v2 = live_v1
    w.health.states[v2] = "unhealthy"
    mark, started = w.rec.mark(), w.clock.now
    with pytest.raises(DeployError) as err:
        w.deploy(B2)
    line = str(err.value)
    assert "\n" not in line
    assert "green (build 2222222222bb) did not become healthy within 120s" in line
    assert "rolled back: blue has 100% of the traffic, green has no instances" in line
    assert [colors(p) for p in w.rec.stack_parameter_sets(mark)] == [
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},
        {"blue": (v1, "1", "100"), "green": (v1, "0", "0")},  # green back to its previous release
    ]
    assert w.clock.now - started >= TIMEOUT
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}
    assert w.rule_weights() == {"blue": 100, "green": 0}
    only_stack_updates_mutate(w.rec.since(mark))


def test_green_becoming_healthy_late_but_in_time_is_released(live_v1: tuple[World, str, str]) -> None:
    w, _v1, v2 = live_v1
    w.health.states[v2] = lambda n: "initial" if n < 3 else "healthy"
    assert w.deploy(B2).live == "green"
    assert colors(w.params())["green"] == (v2, "1", "100")


def test_health_lost_at_the_50_percent_step_rolls_back(live_v1: tuple[World, str, str]) -> None:
    w, v1, v2 = live_v1
    w.health.states[v2] = lambda n: (
        "unhealthy" if w.rec.last_parameters().get("GreenWeight") == "50" else "healthy"
    )
    mark = w.rec.mark()
    with pytest.raises(
        DeployError, match=r"bake green at 50%: green \(build 2222222222bb\) became unhealthy"
    ):
        w.deploy(B2)
    sent = [colors(p) for p in w.rec.stack_parameter_sets(mark)]
    assert [c["green"][2] for c in sent] == ["0", "10", "50", "0", "0"]
    # the weight moves back first, green's instances go in a second update (after they drained)
    assert sent[-2:] == [
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},
        {"blue": (v1, "1", "100"), "green": (v1, "0", "0")},
    ]
    assert w.rule_weights() == {"blue": 100, "green": 0}


def test_too_many_5xx_during_a_bake_rolls_back(live_v1: tuple[World, str, str]) -> None:
    """The 5xx watch reads the colour's CloudWatch metric (put here as the load balancer would)."""
    from datetime import UTC, datetime

    from pipeline.aws.health import arn_suffix

    w, v1, _v2 = live_v1
    outputs = stack_outputs(w.clients)
    w.clients.client("cloudwatch").put_metric_data(
        Namespace="AWS/ApplicationELB",
        MetricData=[
            {
                "MetricName": "HTTPCode_Target_5XX_Count",
                "Dimensions": [
                    {
                        "Name": "LoadBalancer",
                        "Value": arn_suffix(outputs["LoadBalancerArn"], "loadbalancer/"),
                    },
                    {
                        "Name": "TargetGroup",
                        "Value": arn_suffix(outputs["GreenTargetGroupArn"], "targetgroup/"),
                    },
                ],
                "Timestamp": datetime.now(UTC),
                "Value": 40,
            }
        ],
    )
    with pytest.raises(DeployError, match="answered 40 requests with 5xx in one minute"):
        w.deploy(B2)
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}


def test_a_failed_stack_update_rolls_back_and_names_the_failing_resource(
    live_v1: tuple[World, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    w, v1, v2 = live_v1
    failed = fail_updates(monkeypatch, lambda p: p["GreenWeight"] == "10", "GreenServerGroup")
    mark = w.rec.mark()
    with pytest.raises(DeployError) as err:
        w.deploy(B2)
    line = str(err.value)
    assert (
        "ended in UPDATE_ROLLBACK_COMPLETE: GreenServerGroup UPDATE_FAILED: Group did not stabilize" in line
    )
    assert "rolled back: blue has 100% of the traffic" in line
    assert failed == [1]
    assert [colors(p)["green"] for p in w.rec.stack_parameter_sets(mark)] == [
        (v2, "1", "0"),
        (v2, "1", "10"),  # this one failed; CloudFormation kept the previous parameters
        (v2, "1", "0"),  # the weights (already so: recorded in the history), then the instances
        (v1, "0", "0"),
    ]
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}
    events = capsys.readouterr().err
    assert "GreenServerGroup UPDATE_FAILED: Group did not stabilize" in events  # streamed as they came
    assert "UPDATE_ROLLBACK_COMPLETE" in events


def test_ctrl_c_mid_shift_rolls_back(live_v1: tuple[World, str, str]) -> None:
    w, v1, _v2 = live_v1

    def interrupt(clock: FakeClock) -> None:
        if w.rec.last_parameters().get("GreenWeight") == "50":
            clock.on_sleep = None
            raise KeyboardInterrupt

    w.clock.on_sleep = interrupt
    mark = w.rec.mark()
    with pytest.raises(
        DeployError, match=r"bake green at 50%: interrupted \(Ctrl-C or SIGTERM\); rolled back"
    ):
        w.deploy(B2)
    assert [colors(p)["green"][2] for p in w.rec.stack_parameter_sets(mark)] == ["0", "10", "50", "0", "0"]
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}


def test_ctrl_c_while_cloudformation_works_waits_for_it_then_rolls_back(
    live_v1: tuple[World, str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    w, v1, v2 = live_v1
    slow_updates(monkeypatch, lambda p: p["GreenWeight"] == "10")

    def interrupt(clock: FakeClock) -> None:
        # the first poll of the update to 10%: Ctrl-C; after that CloudFormation finishes the update
        clock.on_sleep = lambda _clock: set_stack_status(STACK, "UPDATE_COMPLETE")
        raise KeyboardInterrupt

    w.clock.on_sleep = interrupt
    mark = w.rec.mark()
    with pytest.raises(
        DeployError,
        match=r"shift 10% of the traffic to green: interrupted \(Ctrl-C or SIGTERM\); rolled back",
    ):
        w.deploy(B2)
    assert "waiting for erlang-web-dev to finish UPDATE_IN_PROGRESS" in capsys.readouterr().err
    assert [colors(p)["green"] for p in w.rec.stack_parameter_sets(mark)] == [
        (v2, "1", "0"),
        (v2, "1", "10"),
        (v2, "1", "0"),  # sent only once the interrupted update had finished: the weight first,
        (v1, "0", "0"),  # then the instances (the 10% update had completed: they took traffic)
    ]
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}


def test_ctrl_c_during_retention_keeps_the_new_release_live(live_v1: tuple[World, str, str]) -> None:
    """After the last bake the release is done: an interruption no longer rolls back; the old colour
    stays warm and the next deploy scales it down before reusing it."""
    w, v1, v2 = live_v1
    at_full: list[float] = []

    def interrupt(clock: FakeClock) -> None:
        if w.rec.last_parameters().get("GreenWeight") == "100":
            at_full.append(clock.now)
            if clock.now - at_full[0] > BAKE:  # the bake at 100% is over: this is the retention
                clock.on_sleep = None
                raise KeyboardInterrupt

    w.clock.on_sleep = interrupt
    with pytest.raises(KeyboardInterrupt):
        w.deploy(B2)
    assert colors(w.params()) == {"blue": (v1, "1", "0"), "green": (v2, "1", "100")}
    v3 = w.ami(B3)
    mark = w.rec.mark()
    assert w.deploy(B3).live == "blue"
    assert [colors(p)["blue"] for p in w.rec.stack_parameter_sets(mark)][:2] == [
        (v1, "0", "0"),
        (v3, "1", "0"),
    ]


def test_an_empty_stack_left_in_review_counts_as_no_stack(world: World) -> None:
    """A CREATE change set that was never executed leaves an empty REVIEW_IN_PROGRESS stack."""
    v1 = world.ami(B1)
    world.clients.cloudformation().create_change_set(
        StackName=STACK,
        ChangeSetName="abandoned",
        ChangeSetType="CREATE",
        TemplateBody=json.dumps(
            {"Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
        ),
    )
    mark = world.rec.mark()
    assert world.deploy(B1).action == "created"
    assert colors(world.params())["blue"] == (v1, "1", "100")
    # on the app's stack (the first deploy also makes the stack of its CloudFormation service role)
    ops = [
        c.operation
        for c in world.rec.since(mark)
        if c.mutating
        and (c.params.get("StackName") == STACK or f":stack/{STACK}/" in str(c.params.get("StackName")))
    ]
    # the empty stack is removed, then the real one made; an update records the release live
    assert ops == ["DeleteStack", "CreateStack", "UpdateStack"]


def test_first_release_that_is_not_healthy_is_reported_and_the_stack_kept(world: World) -> None:
    v1 = world.ami(B1)
    world.health.states[v1] = "unhealthy"
    with pytest.raises(DeployError, match="was created but the first release did not go live") as err:
        world.deploy(B1)
    assert "no earlier release runs to return to" in str(err.value)
    assert colors(world.params())["blue"] == (v1, "1", "100")
    (entry,) = history.decode(world.params()["History"])
    assert (entry.outcome, entry.was_live) == ("failed", False)
    assert "did not become healthy within 120s" in entry.reason


# -- bad input: one line, non-zero exit, nothing changed -------------------------------------------


def assert_refused(w: World, build_id: str, expected: str, settings: Settings | None = None) -> str:
    before = w.params() if stack_exists(w) else None
    mark = w.rec.mark()
    with pytest.raises(PipelineError) as err:
        deploy.deploy(settings or w.settings, w.clients, w.runtime(), build_id)
    line = str(err.value)
    assert "\n" not in line and "(hint: " in line
    assert expected in line, line
    assert [c.action for c in w.rec.since(mark) if c.mutating] == []
    assert w.questions == []
    if before is not None:
        assert w.params() == before
    return line


def stack_exists(w: World) -> bool:
    return bool(
        w.clients.cloudformation().list_stacks(StackStatusFilter=["CREATE_COMPLETE", "UPDATE_COMPLETE"])[
            "StackSummaries"
        ]
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("UPDATE_ROLLBACK_FAILED", "continue-update-rollback --stack-name erlang-web-dev"),
        ("UPDATE_IN_PROGRESS", "another deploy or change is in progress"),
        ("UPDATE_ROLLBACK_IN_PROGRESS", "another deploy or change is in progress"),
        ("ROLLBACK_COMPLETE", "remove it with invoke destroy"),
        ("DELETE_FAILED", "a resource could not be deleted"),
        ("IMPORT_MAGIC_STATE", "a state the pipeline does not know: IMPORT_MAGIC_STATE"),
    ],
)
def test_a_stack_in_a_state_it_cannot_leave_is_refused(
    live_v1: tuple[World, str, str], status: str, expected: str
) -> None:
    w, v1, _v2 = live_v1
    set_stack_status(STACK, status)
    line = assert_refused(w, B2, expected)
    assert line.startswith(f"stack {STACK} ")
    assert colors(w.params())["blue"] == (v1, "1", "100")


def test_an_ami_missing_in_the_region_is_refused(live_v1: tuple[World, str, str]) -> None:
    w, _v1, _v2 = live_v1
    # B3 has an AMI, but only in another region
    other = Clients(region="us-west-2", session=w.clients.session)
    register_ami(other, w.settings, B3)
    assert_refused(
        w, B3, "no AMI of build 3333333333cc (beam, hvm) in us-east-1 (hint: run: invoke ami --env dev"
    )


def test_an_ami_still_pending_is_refused(live_v1: tuple[World, str, str]) -> None:
    """An ``invoke ami`` that was stopped while EC2 was still making the AMI leaves it pending."""
    from moto.ec2.models import ec2_backends

    w, _v1, _v2 = live_v1
    v3 = w.ami(B3)
    ec2_backends["123456789012"][w.settings.aws.region].amis[v3].state = "pending"  # moto is never pending
    assert_refused(
        w,
        B3,
        f"AMI {v3} of build 3333333333cc in us-east-1 is pending, not available yet "
        "(hint: run: invoke ami --env dev (it waits until the AMI is available), then deploy)",
    )


def test_an_instance_type_that_cannot_boot_the_image_is_refused(live_v1: tuple[World, str, str]) -> None:
    w, _v1, _v2 = live_v1
    pv = config.load(REPO, env="dev", overrides=[*OVERRIDES, "deploy.virtualization=pv"])
    w.ami(B2, "pv")
    assert_refused(w, B2, 'deploy.instance_type: "t3.micro" cannot boot paravirtual (PV) images', pv)


def test_a_pv_release_on_a_pv_instance_type_is_deployed(live_v1: tuple[World, str, str]) -> None:
    w, _v1, _v2 = live_v1
    pv = config.load(
        REPO, env="dev", overrides=[*OVERRIDES, "deploy.virtualization=pv", "deploy.instance_type=m3.medium"]
    )
    v2pv = w.ami(B2, "pv")
    mark = w.rec.mark()
    deploy.deploy(pv, w.clients, w.runtime(), B2)
    first = w.rec.stack_parameter_sets(mark)[0]
    assert (first["GreenImageId"], first["GreenInstanceType"], first["GreenVirtualization"]) == (
        v2pv,
        "m3.medium",
        "pv",
    )
    assert (first["BlueInstanceType"], first["BlueVirtualization"]) == (
        "t3.micro",
        "hvm",
    )  # blue's own release


def test_a_deploy_while_the_traffic_is_split_is_refused_until_rollback_chooses(
    live_v1: tuple[World, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, v1, v2 = live_v1
    # a rollout killed hard (no chance to roll back) left the traffic split
    killed = fail_updates(monkeypatch, lambda p: False, "-")
    assert killed == []
    params = w.params()
    split = {
        **params,
        "GreenImageId": v2,
        "GreenCapacity": "1",
        "GreenWeight": "50",
        "BlueWeight": "50",
        "GreenBuildId": B2,
    }
    w.clients.cloudformation().update_stack(
        StackName=STACK,
        UsePreviousTemplate=True,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in split.items()],
    )
    line = assert_refused(w, B2, "the traffic is split (blue 50%, green 50%)")
    assert "invoke rollback returns to build 1111111111aa" in line
    with pytest.raises(DeployError, match="green holds build 2222222222bb, which was never live"):
        rollback.rollback(w.settings, w.clients, w.runtime(), to="green")
    mark = w.rec.mark()
    out = rollback.rollback(w.settings, w.clients, w.runtime())  # to the last live release: v1, blue
    assert out.live == "blue"
    assert [colors(p) for p in w.rec.stack_parameter_sets(mark)] == [
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},  # recorded live
        {"blue": (v1, "1", "100"), "green": (v2, "0", "0")},  # green drained first
    ]


def test_rollback_without_a_previous_release_is_refused(world: World) -> None:
    world.ami(B1)
    with pytest.raises(DeployError, match="does not exist: nothing to roll back"):
        rollback.rollback(world.settings, world.clients, world.runtime())
    world.deploy(B1)
    mark = world.rec.mark()
    with pytest.raises(DeployError, match=r"there is no earlier live release to return to"):
        rollback.rollback(world.settings, world.clients, world.runtime())
    assert [c for c in world.rec.since(mark) if c.mutating] == []


def test_a_declined_confirmation_changes_nothing(live_v1: tuple[World, str, str]) -> None:
    w, _v1, _v2 = live_v1
    before = w.params()
    mark = w.rec.mark()
    with pytest.raises(DeployError, match="not confirmed: nothing was changed"):
        deploy.deploy(w.settings, w.clients, w.runtime(answer=False), B2)
    assert w.questions == ["roll build 2222222222bb out to green on stack erlang-web-dev?"]
    assert {c.operation for c in w.rec.since(mark) if c.mutating} == {"CreateChangeSet", "DeleteChangeSet"}
    assert w.params() == before
    assert w.clients.cloudformation().list_change_sets(StackName=STACK)["Summaries"] == []


def test_dry_run_shows_the_plan_and_changes_nothing(
    live_v1: tuple[World, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    w, _v1, v2 = live_v1
    capsys.readouterr()
    mark = w.rec.mark()
    out = w.deploy(B2, dry_run=True)
    assert out.action == "planned"
    assert [c for c in w.rec.since(mark) if c.operation in ("UpdateStack", "CreateStack")] == []
    shown = capsys.readouterr().err
    assert "GreenImageId" in shown and v2 in shown  # the parameter diff of the first update
    assert "shift 50% of the traffic to green" in shown


def test_a_template_change_with_the_same_release_updates_only_the_stack(
    live_v1: tuple[World, str, str],
) -> None:
    w, v1, _v2 = live_v1
    changed = config.load(REPO, env="dev", overrides=[*OVERRIDES, "deploy.allowed_cidrs=['203.0.113.0/24']"])
    mark = w.rec.mark()
    out = deploy.deploy(changed, w.clients, w.runtime(), B1)
    assert out.live == "blue"
    updates = [c for c in w.rec.since(mark) if c.operation == "UpdateStack"]
    assert len(updates) == 1
    assert "203.0.113.0/24" in updates[0].params["TemplateBody"]
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}


# -- plan ------------------------------------------------------------------------------------------


def test_plan_reports_build_ami_and_deploy_without_changing_anything(
    aws_in_process: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = copy_project(tmp_path / "proj")
    s = config.load(project, env="dev", overrides=OVERRIDES)
    rec, clock = Recorder(), FakeClock()
    clients = make_clients(rec)
    runtime = Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda q: True)

    def actions() -> dict[str, tuple[str, str]]:
        return {p.stage: (p.action, p.detail) for p in deploy.plan(s, clients, runtime)}

    build_id = build.plan(s).build_id
    first = actions()
    assert first["build"] == ("would build", f"build {build_id}")
    assert first["ami"][0] == "would register"
    assert first["deploy"] == ("would create", f"stack {STACK} with build {build_id} live on blue")

    build.build(s)
    ami = register_ami(clients, s, build_id)
    second = actions()
    assert second["build"][0] == second["ami"][0] == "up to date"
    assert ami in second["ami"][1]

    deploy.deploy(s, clients, runtime)
    assert actions()["deploy"] == ("up to date", f"build {build_id} is live on blue")

    s2 = config.load(project, env="dev", overrides=[*OVERRIDES, 'app.config.greeting="v2"'])
    b2 = build.plan(s2).build_id
    third = {p.stage: p for p in deploy.plan(s2, clients, runtime)}
    assert third["build"].action == "would build"
    assert third["deploy"].detail == f"build {b2} to green once its AMI is available"
    build.build(s2)
    register_ami(clients, s2, b2)
    mark = rec.mark()
    fourth = {p.stage: p for p in deploy.plan(s2, clients, runtime)}
    assert (fourth["deploy"].action, fourth["deploy"].detail) == (
        "would roll out",
        f"build {b2} to green in 11 steps",
    )
    assert {c.operation for c in rec.since(mark) if c.mutating} == {"CreateChangeSet", "DeleteChangeSet"}
    assert clients.cloudformation().list_change_sets(StackName=STACK)["Summaries"] == []


def test_missing_credentials_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s = config.load(REPO, env="dev")
    with pytest.raises(PipelineError) as err:
        stack_status.status(s, Clients(region="us-east-1"))
    assert str(err.value) == (
        "status: AWS: no credentials found "
        '(hint: configure them (aws configure, AWS_PROFILE, aws.profile), or use aws.endpoint = "local")'
    )
