"""Auto scaling that survives blue/green, at the level of the requests the pipeline sends: the settings
it refuses, the scaling policy in the template, the parameters every update passes (a new colour
starts at the live colour's current size, a running colour is always sent at the size its group has,
the policy moves with the release) and a rollback that gives the old colour back at its size, with
its policy.

The groups are scaled here as a scaling alarm would scale them (SetDesiredCapacity, or the Auto
Scaling backend directly while a rollout runs); moto evaluates no policy. Why the pipeline must pass
the current size: CloudFormation passes ``DesiredCapacity`` whenever it updates a group, resetting what
a policy set (aws/aws-cdk#5507, "every deployment resets capacity").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from awstest import FakeClock, Recorder
from botocore.exceptions import ClientError

from pipeline import config
from pipeline.aws import rollback, scaling, stack
from pipeline.aws import status as stack_status
from pipeline.errors import ConfigError, DeployError
from tests.deploy_support import REGION, TargetHealth, make_clients
from tests.test_deploy import B1, B2, OVERRIDES, TIMEOUT, World, only_stack_updates_mutate, stack_outputs
from tests.test_stack import BASE, VARIANTS

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
# The dev environment on the (in-process) local AWS: local.capacity 1 is the first release's size.
SCALING = [*OVERRIDES, 'deploy.scale_on="requests"', "deploy.max_capacity=4"]


def settings(*extra: str) -> config.Settings:
    return config.load(REPO, env="dev", overrides=[*SCALING, *extra])


@pytest.fixture
def w(aws_in_process: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    rec = Recorder()
    yield World(settings(), make_clients(rec), rec, FakeClock(), TargetHealth(monkeypatch))


def group(w: World, color: str) -> str:
    return stack_outputs(w.clients)[f"{color.capitalize()}ServerGroupName"]


def scale(w: World, color: str, n: int) -> None:
    """What the colour's scaling alarm does: SetDesiredCapacity (not through the pipeline's clients)."""
    make_clients().autoscaling().set_desired_capacity(AutoScalingGroupName=group(w, color), DesiredCapacity=n)


def scale_now(color_group: str, n: int) -> None:
    """The same from inside a rollout (a health check the test answers), through the Auto Scaling model."""
    from moto.autoscaling.models import autoscaling_backends

    autoscaling_backends[ACCOUNT][REGION].set_desired_capacity(color_group, n)


def instances(w: World, color: str) -> set[str]:
    resp = make_clients().autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=[group(w, color)])
    return {i["InstanceId"] for g in resp["AutoScalingGroups"] for i in g["Instances"]}


def policies(w: World) -> dict[str, list[str]]:
    """The target tracking policies of each colour's group, as the local AWS made them from the stack."""
    scaling_api = make_clients().autoscaling()
    return {
        c: [
            p["TargetTrackingConfiguration"]["PredefinedMetricSpecification"]["PredefinedMetricType"]
            for p in scaling_api.describe_policies(AutoScalingGroupName=group(w, c))["ScalingPolicies"]
        ]
        for c in ("blue", "green")
    }


def sizes(p: dict[str, str]) -> tuple[str, str, str]:
    """(blue's capacity, green's capacity, the colour that scales) of one parameter set."""
    return p["BlueCapacity"], p["GreenCapacity"], p["ScalingColor"]


# -- settings ----------------------------------------------------------------------------------------


def refused(*sets: str, env: str = "dev") -> str:
    with pytest.raises(ConfigError) as err:
        config.load(REPO, env=env, overrides=list(sets))
    line = str(err.value)
    assert "\n" not in line and "(hint: " in line
    return line


def test_a_minimum_above_the_maximum_is_refused_in_one_line(tmp_path: Path) -> None:
    line = refused("deploy.min_capacity=5", "deploy.max_capacity=3")
    assert line.startswith(
        "--set deploy.min_capacity: 5 is more than deploy.max_capacity, 3 (--set deploy.max_capacity)"
    )
    assert "lower deploy.min_capacity or raise deploy.max_capacity" in line
    # from the file, the line names the environment's table
    (tmp_path / "pipeline.toml").write_text(
        '[app]\nname = "erlang_web"\n[env.dev.deploy]\nmin_capacity = 3\nmax_capacity = 2\n'
    )
    with pytest.raises(ConfigError, match=r"^pipeline.toml: env.dev.deploy.min_capacity: 3 is more than"):
        config.load(tmp_path, env="dev")


@pytest.mark.parametrize("task", ["deploy", "plan", "rollback"])
def test_deploy_plan_and_rollback_refuse_it_before_anything_starts(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.project import copy_project
    from tests.test_hostile_tasks import assert_one_line, run

    root = copy_project(tmp_path / "project")
    monkeypatch.chdir(root)
    argv = [task, "--set", "deploy.min_capacity=5", "--set", "deploy.max_capacity=3"]
    code, err = run(capsys, *([*argv, "--yes"] if task != "plan" else argv))
    assert_one_line(code, err, "deploy.min_capacity: 5 is more than deploy.max_capacity, 3")
    assert not (root / ".pipeline").exists()  # no local AWS started, nothing built, nothing sent


def test_scaling_needs_room_and_a_first_size_within_it_and_a_cpu_percentage() -> None:
    assert "needs deploy.max_capacity above deploy.min_capacity, both are 2" in refused(
        'deploy.scale_on="cpu"', "deploy.min_capacity=2", "deploy.max_capacity=2", "deploy.capacity=2"
    )
    assert "the first release's 5 instance(s) must be within" in refused(
        'deploy.scale_on="requests"', "deploy.capacity=5", "deploy.max_capacity=4"
    )
    assert refused('deploy.scale_on="cpu"', "deploy.scale_target=150").startswith(
        "--set deploy.scale_target: 150 is not a CPU utilization"
    )
    # without a policy the bounds are the fixed capacity, whatever min and max say
    fixed = config.load(REPO, env="dev", overrides=['aws.endpoint="aws"', "deploy.capacity=7"])
    assert scaling.bounds(fixed) == (7, 7)
    prod = config.load(REPO, env="prod", overrides=['aws.endpoint="aws"'])
    assert scaling.bounds(prod) == (2, 6)
    # the local cloud runs local.capacity instances of the first release: the bounds take it in
    assert scaling.bounds(config.load(REPO, env="prod")) == (1, 6)


# -- the template -------------------------------------------------------------------------------------


def test_without_scale_on_there_is_no_policy_and_no_scaling_colour() -> None:
    t = json.loads(stack.render(BASE))
    assert not [r for r in t["Resources"].values() if r["Type"] == "AWS::AutoScaling::ScalingPolicy"]
    assert "ScalingColor" not in t["Parameters"]
    assert {"MinCapacity", "MaxCapacity"} <= set(t["Parameters"])


@pytest.mark.parametrize(
    ("scale_on", "metric", "target"),
    [("requests", "ALBRequestCountPerTarget", 1000), ("cpu", "ASGAverageCPUUtilization", 50)],
)
def test_each_colour_has_a_target_tracking_policy_in_force_only_while_it_is_the_scaling_colour(
    scale_on: str, metric: str, target: int
) -> None:
    p = dataclasses.replace(BASE, scale_on=scale_on, scale_target=scaling.target_value(scale_on, 0))
    t = json.loads(stack.render(p))
    assert t["Parameters"]["ScalingColor"]["AllowedValues"] == ["blue", "green", "none"]
    for color in ("Blue", "Green"):
        policy = t["Resources"][f"{color}ScalingPolicy"]
        assert policy["Type"] == "AWS::AutoScaling::ScalingPolicy"
        assert policy["Condition"] == f"{color}Scales"
        # the colour named, and only while it runs (a colour of 0 instances has bounds 0 and 0)
        assert t["Conditions"][f"{color}Scales"] == {
            "Fn::And": [
                {"Fn::Equals": [{"Ref": "ScalingColor"}, color.lower()]},
                {"Fn::Not": [{"Condition": f"{color}Stopped"}]},
            ]
        }
        props = policy["Properties"]
        assert props["AutoScalingGroupName"] == {"Ref": f"{color}ServerGroup"}
        assert props["PolicyType"] == "TargetTrackingScaling"
        tracking = props["TargetTrackingConfiguration"]
        assert tracking["TargetValue"] == target
        spec = tracking["PredefinedMetricSpecification"]
        assert spec["PredefinedMetricType"] == metric
        if scale_on == "requests":
            # app/<balancer>/<id>/targetgroup/<group>/<id>: the colour's own target group
            assert spec["ResourceLabel"] == {
                "Fn::Join": [
                    "/",
                    [
                        {"Fn::GetAtt": ["LoadBalancer", "LoadBalancerFullName"]},
                        {"Fn::GetAtt": [f"{color}TargetGroup", "TargetGroupFullName"]},
                    ],
                ]
            }
            assert policy["DependsOn"] == ["WeightedRule"]
        else:
            assert "ResourceLabel" not in spec


@pytest.mark.parametrize("scale_on", ["requests", "cpu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_scaling_templates_are_lint_clean(variant: str, scale_on: str) -> None:
    from cfnlint.api import lint_all

    p = dataclasses.replace(VARIANTS[variant], scale_on=scale_on, scale_target=70)
    assert [f"{m.rule.id} {m.message}" for m in lint_all(stack.render(p)) if m.rule.id[0] in "EW"] == []


def test_the_committed_prod_template_scales_on_requests() -> None:
    t = json.loads((REPO / "cfn" / "erlang-web-prod.json").read_text())
    assert {n for n, r in t["Resources"].items() if r["Type"] == "AWS::AutoScaling::ScalingPolicy"} == {
        "BlueScalingPolicy",
        "GreenScalingPolicy",
    }


# -- what a deploy sends --------------------------------------------------------------------------------


def test_a_deploy_starts_the_new_colour_at_the_live_colours_current_size_and_moves_the_policy(
    w: World,
) -> None:
    w.ami(B1), w.ami(B2)
    mark = w.rec.mark()
    w.deploy(B1)
    created, recorded = w.rec.stack_parameter_sets(mark)
    # the first release gets the policy once it went live; a running colour's group is bounded 1-4
    assert (created["ScalingColor"], recorded["ScalingColor"]) == ("none", "blue")
    assert (recorded["MinCapacity"], recorded["MaxCapacity"], recorded["BlueCapacity"]) == ("1", "4", "1")
    assert policies(w) == {"blue": ["ALBRequestCountPerTarget"], "green": []}

    scale(w, "blue", 3)  # load: blue's alarm scaled it out
    serving = instances(w, "blue")
    seen: list[set[str]] = []  # blue's instances at every wait of the rollout
    w.clock.on_sleep = lambda _clock: seen.append(instances(w, "blue"))
    mark = w.rec.mark()
    out = w.deploy(B2)
    assert (out.action, out.live) == ("released", "green")
    sent = w.rec.stack_parameter_sets(mark)
    assert [sizes(p) for p in sent] == [
        ("3", "3", "blue"),  # green starts at blue's 3 (not local.capacity's 1); blue still scales
        ("3", "3", "none"),  # 10%: from the first shift on, neither colour scales
        ("3", "3", "none"),  # 50%
        ("3", "3", "none"),  # 100%
        ("3", "3", "green"),  # recorded live: green scales
        ("0", "3", "green"),  # blue scaled down after the retention
    ]
    calls = w.rec.since(mark)
    operations = [c.operation for c in calls]
    # the groups' sizes were read before the first update
    assert operations.index("DescribeAutoScalingGroups") < operations.index("UpdateStack")
    only_stack_updates_mutate(calls)
    # blue served with the same three instances until it was scaled down (no update replaced them)
    assert len(serving) == 3 and all(s in (serving, set()) for s in seen) and serving in seen
    assert len(instances(w, "green")) == 3 and instances(w, "blue") == set()
    assert policies(w) == {"blue": [], "green": ["ALBRequestCountPerTarget"]}


def test_a_colour_that_scales_during_the_rollout_is_sent_at_its_new_size(w: World) -> None:
    """Blue scales out while green boots: the update that takes blue's policy away passes blue's new
    size, so CloudFormation does not scale it back in as the traffic starts to move."""
    _, v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    scale(w, "blue", 2)
    blue = group(w, "blue")

    def green_health(n: int) -> str:
        if n == 0:
            scale_now(blue, 4)  # blue's alarm fires while green's first health checks run
        return "healthy"

    w.health.states[v2] = green_health
    mark = w.rec.mark()
    w.deploy(B2)
    assert [sizes(p) for p in w.rec.stack_parameter_sets(mark)] == [
        ("2", "2", "blue"),  # green starts at the size blue had when the deploy started
        ("4", "2", "none"),
        ("4", "2", "none"),
        ("4", "2", "none"),
        ("4", "2", "green"),
        ("0", "2", "green"),
    ]


def test_a_failed_release_gives_the_old_colour_back_at_its_size_with_its_policy(w: World) -> None:
    v1, v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    scale(w, "blue", 3)
    serving = instances(w, "blue")
    w.health.states[v2] = lambda n: "healthy" if n < 4 else "unhealthy"  # breaks while baking at 10%
    mark = w.rec.mark()
    with pytest.raises(DeployError, match="rolled back: blue has 100% of the traffic"):
        w.deploy(B2)
    assert [sizes(p) for p in w.rec.stack_parameter_sets(mark)] == [
        ("3", "3", "blue"),
        ("3", "3", "none"),  # 10%: then green fails
        ("3", "3", "blue"),  # the traffic back to blue, and its policy
        ("3", "0", "blue"),  # green's instances go once drained
    ]
    assert instances(w, "blue") == serving  # never below its size, never replaced
    assert policies(w) == {"blue": ["ALBRequestCountPerTarget"], "green": []}
    # green never became healthy: no traffic moved, blue kept its policy all along
    w.health.states[v2] = "unhealthy"
    mark = w.rec.mark()
    with pytest.raises(DeployError, match=f"did not become healthy within {TIMEOUT}s"):
        w.deploy(B2)
    assert [sizes(p) for p in w.rec.stack_parameter_sets(mark)] == [("3", "3", "blue"), ("3", "0", "blue")]
    assert w.params()["BlueImageId"] == v1


def test_a_rollback_starts_the_previous_release_at_the_live_colours_size_and_hands_the_policy_back(
    w: World,
) -> None:
    w.ami(B1), w.ami(B2)
    w.deploy(B1)
    scale(w, "blue", 3)
    w.deploy(B2)
    scale(w, "green", 2)  # the load went down since
    mark = w.rec.mark()
    out = rollback.rollback(w.settings, w.clients, w.runtime())
    assert (out.action, out.live) == ("rolled back", "blue")
    assert [sizes(p) for p in w.rec.stack_parameter_sets(mark)] == [
        ("2", "2", "green"),  # blue comes back at green's current size; green scales meanwhile
        ("2", "2", "none"),  # the traffic moves
        ("2", "2", "blue"),  # blue is live again, with its policy
        ("2", "0", "blue"),
    ]
    assert policies(w) == {"blue": ["ALBRequestCountPerTarget"], "green": []}


def test_new_bounds_reach_the_live_colour_with_the_next_deploy_of_the_same_release(w: World) -> None:
    w.ami(B1)
    w.deploy(B1)
    scale(w, "blue", 4)
    w.settings = settings("deploy.max_capacity=3")
    mark = w.rec.mark()
    out = w.deploy(B1)
    assert out.action == "released"
    (sent,) = w.rec.stack_parameter_sets(mark)
    assert (sent["MaxCapacity"], sent["BlueCapacity"], sent["ScalingColor"]) == ("3", "3", "blue")
    assert len(instances(w, "blue")) == 3
    assert w.deploy(B1).action == "unchanged"


def test_status_shows_what_each_group_wants_its_bounds_and_which_colour_scales(w: World) -> None:
    w.ami(B1)
    w.deploy(B1)
    scale(w, "blue", 3)
    st = stack_status.status(w.settings, w.clients)
    assert st is not None
    rows = {c.color: c for c in st.colors}
    assert (rows["blue"].capacity, rows["blue"].desired, rows["blue"].bounds) == (1, 3, (1, 4))
    assert (rows["blue"].scales, rows["green"].scales) == (True, False)
    assert (rows["blue"].size(), rows["green"].size()) == ("3 (1-4, scales)", "0")
    record = {c["color"]: c for c in st.record()["colors"]}
    assert (record["blue"]["desired"], record["blue"]["scales"]) == (3, True)


# -- what the local AWS does with groups (as AWS does) ---------------------------------------------------


def test_the_local_aws_refuses_a_desired_capacity_outside_the_groups_bounds(w: World) -> None:
    """AWS's answers ("New SetDesiredCapacity value 3 is above max value 2 for the AutoScalingGroup.",
    kubernetes/autoscaler#943; "Desired capacity:2 must be between the specified min size:4 and max
    size:10", convox/praxis#258); moto takes any number."""
    w.ami(B1)
    w.deploy(B1)
    api = make_clients().autoscaling()
    name = group(w, "blue")
    with pytest.raises(ClientError) as err:
        api.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=5)
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["Error"]["Message"] == (
        "New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup."
    )
    with pytest.raises(ClientError, match="New SetDesiredCapacity value 0 is below min value 1"):
        api.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=0)
    with pytest.raises(ClientError, match="Desired capacity:9 must be between the specified min size:1"):
        api.update_auto_scaling_group(AutoScalingGroupName=name, DesiredCapacity=9)
    assert len(instances(w, "blue")) == 1


def test_a_stack_update_of_a_group_keeps_its_instances_and_tags_the_new_ones(w: World) -> None:
    """CloudFormation updates a group in place; moto alone deletes and recreates it (every instance
    replaced). Green held blue's release with no instances: it is updated to B2 and 2 instances."""
    w.ami(B1)
    v2 = w.ami(B2)
    w.deploy(B1)
    scale(w, "blue", 2)
    before = instances(w, "blue")
    w.health.states[v2] = "unhealthy"
    mark = w.rec.mark()
    seen: list[set[str]] = []
    w.clock.on_sleep = lambda _clock: seen.append(instances(w, "green"))
    with pytest.raises(DeployError):
        w.deploy(B2)
    assert [sizes(p) for p in w.rec.stack_parameter_sets(mark)] == [("2", "2", "blue"), ("2", "0", "blue")]
    assert instances(w, "blue") == before

    def build_ids(ids: set[str]) -> set[str]:
        reservations = make_clients().ec2().describe_instances(InstanceIds=sorted(ids))["Reservations"]
        return {
            t["Value"]
            for r in reservations
            for i in r["Instances"]
            for t in i["Tags"]
            if t["Key"] == "BuildId"
        }

    assert build_ids(before) == {B1}
    (green,) = {frozenset(s) for s in seen if s}  # green's two instances, the same throughout its gate
    assert len(green) == 2 and build_ids(set(green)) == {B2}
