"""Auto scaling of the live colour (pure: the settings in, troposphere pieces of the stack out).

Settings: ``deploy.scale_on`` (``"none"``, ``"requests"`` or ``"cpu"``), ``deploy.scale_target``,
``deploy.min_capacity`` and ``deploy.max_capacity``.

**Who scales.** The live colour: the one whose release went live (all the traffic, bake finished).
The stack's ``ScalingColor`` parameter names it; each colour has a target tracking policy
(``AWS::AutoScaling::ScalingPolicy``) that exists only while ``ScalingColor`` names that colour, and
keeps the colour's average of the metric near ``deploy.scale_target``:

- ``requests``: ``ALBRequestCountPerTarget``, the requests per instance per minute of the colour's
  target group (its ``ResourceLabel`` names the load balancer and the target group);
- ``cpu``: ``ASGAverageCPUUtilization`` of the colour's group.

During a rollout no colour has a policy, from the first traffic shift until the new release is
recorded live; a rollback (automatic or ``invoke rollback``) gives the policy back to the colour it
returns to. The old colour loses its policy at the first shift on purpose: with its traffic leaving,
its request count and its CPU drop, the policy would scale it in, and a rollback would find it
shrunk. Both colours keep their size while the traffic moves (the old server group is "pinned", as
Spinnaker pins it during a red/black deploy).

**Sizes.** A colour that runs has ``MinSize``/``MaxSize`` = the stack's ``MinCapacity``/
``MaxCapacity`` parameters (``deploy.min_capacity``/``max_capacity``; with ``scale_on = "none"`` both
are the fixed capacity); a colour with no instances has 0/0. ``DesiredCapacity`` is the colour's
``Capacity`` parameter. CloudFormation passes ``DesiredCapacity`` whenever it updates a group, and so
resets whatever a scaling policy set (aws/aws-cdk#5507, "every deployment resets capacity"); the
pipeline therefore passes, for every colour that keeps running its release, the desired capacity its
group has just before each update (:meth:`pipeline.aws.deployment.Deployment.apply`). It chooses a
colour's capacity only when it starts one (at the live colour's current size: :func:`start_capacity`)
or stops one (0).

The local cloud has no CloudWatch alarms to drive a policy; it follows each change of a group's
desired capacity (a VM per instance), and its tests change it as a scaling alarm would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from troposphere import And, Condition, Equals, GetAtt, If, Join, Not, Parameter, Ref, Template
from troposphere import autoscaling as asg

from pipeline.aws.tags import COLORS, Color

if TYPE_CHECKING:
    from pipeline.aws.params import StackState
    from pipeline.config import Settings

PARAMETER = "ScalingColor"  # which colour has the policy: blue, green or none
NONE = "none"
MIN_PARAMETER = "MinCapacity"
MAX_PARAMETER = "MaxCapacity"
METRICS = {"requests": "ALBRequestCountPerTarget", "cpu": "ASGAverageCPUUtilization"}
# deploy.scale_target = 0: requests per instance per minute (about 17 a second), or percent CPU.
DEFAULT_TARGETS = {"requests": 1000, "cpu": 50}
# Seconds before a new instance's metrics count towards the colour's average: it boots and passes
# its health checks first (the groups' health check grace period).
WARMUP = 120


# -- the settings -----------------------------------------------------------------------------------------


def bounds(settings: Settings) -> tuple[int, int]:
    """(min, max) of a running colour's group. Without a policy both are the fixed capacity; on the
    local cloud they widen to take ``local.capacity``, which stands in for ``deploy.capacity``."""
    d = settings.deploy
    local = settings.aws.endpoint == "local"
    first = settings.local.capacity if local else d.capacity
    if d.scale_on == NONE:
        return first, first
    if local:
        return min(d.min_capacity, first), max(d.max_capacity, first)
    return d.min_capacity, d.max_capacity


def clamp(n: int, limits: tuple[int, int]) -> int:
    lo, hi = limits
    return max(lo, min(hi, n))


def start_capacity(first: int, state: StackState) -> int:
    """How many instances a colour gets when it starts a release: as many as the live colour's group
    wants now (``state`` carries what the groups want, read at the start), within the bounds; the
    first release's ``first`` when no colour is live or the live one has no instances."""
    live = state.live
    now = state.side(live).capacity if live is not None else 0
    return clamp(now if now > 0 else first, (state.min_capacity, state.max_capacity))


def target_value(scale_on: str, scale_target: int) -> int:
    return scale_target or DEFAULT_TARGETS.get(scale_on, 0)


# -- the template -------------------------------------------------------------------------------------------


def add_parameters(t: Template, policies: bool) -> None:
    """``MinCapacity``, ``MaxCapacity`` and (with policies) ``ScalingColor``."""
    for name, what in ((MIN_PARAMETER, "minimum"), (MAX_PARAMETER, "maximum")):
        t.add_parameter(
            Parameter(
                name,
                Type="Number",
                MinValue=0,
                MaxValue=100,
                Description=f"the {what} size of a colour that runs (deploy.{what[:3]}_capacity)",
            )
        )
    if policies:
        t.add_parameter(
            Parameter(
                PARAMETER,
                Type="String",
                AllowedValues=[*COLORS, NONE],
                Description="the colour whose scaling policy is in force (the live one; none while "
                "a rollout moves the traffic)",
            )
        )


def group_sizes(t: Template, color: Color, capacity: Parameter) -> dict[str, Any]:
    """``MinSize``, ``MaxSize`` and ``DesiredCapacity`` of ``color``'s group."""
    stopped = f"{color.capitalize()}Stopped"
    t.add_condition(stopped, Equals(Ref(capacity), "0"))
    return {
        "MinSize": If(stopped, 0, Ref(MIN_PARAMETER)),
        "MaxSize": If(stopped, 0, Ref(MAX_PARAMETER)),
        "DesiredCapacity": Ref(capacity),
    }


def add_policy(
    t: Template, scale_on: str, target: int, color: Color, group: Any, target_group: Any, alb: Any
) -> None:
    """``color``'s target tracking policy, in force while ``ScalingColor`` names it and it runs (a
    colour with no instances has nothing to scale: its group's bounds are 0 and 0)."""
    c = color.capitalize()
    scales = f"{c}Scales"
    t.add_condition(scales, And(Equals(Ref(PARAMETER), color), Not(Condition(f"{c}Stopped"))))
    metric: dict[str, Any] = {"PredefinedMetricType": METRICS[scale_on]}
    extra: dict[str, Any] = {}
    if scale_on == "requests":
        # "app/<balancer name>/<id>/targetgroup/<group name>/<id>": the colour's share of the
        # balancer's requests (PredefinedMetricSpecification, Auto Scaling API reference).
        metric["ResourceLabel"] = Join(
            "/", [GetAtt(alb, "LoadBalancerFullName"), GetAtt(target_group, "TargetGroupFullName")]
        )
        # The target group must be in use by the load balancer before a policy can count its requests.
        extra["DependsOn"] = ["WeightedRule"]
    t.add_resource(
        asg.ScalingPolicy(
            f"{c}ScalingPolicy",
            Condition=scales,
            AutoScalingGroupName=Ref(group),
            PolicyType="TargetTrackingScaling",
            EstimatedInstanceWarmup=WARMUP,
            TargetTrackingConfiguration=asg.TargetTrackingConfiguration(
                PredefinedMetricSpecification=asg.PredefinedMetricSpecification(**metric),
                TargetValue=float(target),
            ),
            **extra,
        )
    )


def parameters(state: StackState) -> Mapping[str, str]:
    """The values of this module's parameters for ``state``."""
    return {
        MIN_PARAMETER: str(state.min_capacity),
        MAX_PARAMETER: str(state.max_capacity),
        PARAMETER: state.scaling or NONE,
    }
