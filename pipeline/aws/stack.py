"""The CloudFormation blueprint of one app and environment: blue/green behind one load balancer.

Pure: a :class:`StackParams` goes in, a troposphere ``Template`` comes out; no AWS calls, no lookups,
no clock. What changes from release to release is not in the template but in its parameters, one
set per colour (image, instance type, virtualization, build id, capacity, traffic weight), described
by :class:`pipeline.aws.params.StackState`. Every change the pipeline makes is a stack update that
passes all of them.

Shape (see cfn/ for the rendered result):

- its own small VPC with two public subnets in two zones, or an existing VPC and subnets;
- a load balancer security group open on the listener port to the configured CIDRs only, and an
  instance security group that admits the app port from the load balancer's group and nothing else
  (no SSH port, no key pair; outbound traffic limited to loopback, since the guests call nothing);
- the load balancer (idle timeout ``deploy.idle_timeout_seconds``; in its own VPC it depends on the
  gateway attachment, see :mod:`pipeline.aws.network`) and its listener, whose default action answers
  503; the traffic goes through listener rules: one per colour for the health gate's probes, selected
  by the ``X-Pipeline-Color`` header together with the release's secret ``X-Pipeline-Probe`` token
  (:mod:`pipeline.aws.probe`), and a catch-all rule that forwards to both target groups by weight;
- per colour (:mod:`pipeline.aws.colors`): a target group checking the app's health path, a launch
  template (IMDSv2 required, the scratch volume deleted with the instance) and an Auto Scaling group
  with ELB health checks. (The 5xx watch during a rollout reads the target group's CloudWatch metric
  directly: an alarm resource would be the same check, and moto's CloudFormation cannot create one.)
  The groups' sizes and the live colour's scaling policy: :mod:`pipeline.aws.scaling`.

Logical ids are chosen so that each launch template sorts before its group (``BlueLaunchTemplate``,
``BlueServerGroup``): moto applies updates in template key order, and a group updated before its
launch template would launch the previous image there.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from troposphere import (
    Equals,
    GetAtt,
    If,
    Output,
    Parameter,
    Ref,
    Tags,
    Template,
    ec2,
)
from troposphere import elasticloadbalancingv2 as elb

from pipeline.aws import colors, listeners, probe, scaling, tags
from pipeline.aws.network import ingress_from, network
from pipeline.aws.probe import COLOR_HEADER as COLOR_HEADER  # where the health gate's header is named
from pipeline.aws.tags import COLORS, Color
from pipeline.config import Settings
from pipeline.manifest import write_atomic

HEALTH_PATH = "/health"


@dataclass(frozen=True)
class StackParams:
    """What shapes the template (not the release): from the settings of one environment."""

    app: str
    env: str
    target: str
    app_port: int
    listener_port: int
    allowed_cidrs: tuple[str, ...]
    scratch_size_gib: int
    existing_vpc: bool  # True: VpcId/SubnetIds parameters; False: the stack makes its own VPC
    storage: str = "auto"  # app.storage: a ling instance gets a scratch volume only for GooFS
    certificate_arn: str = ""  # "": HTTP only (see pipeline.aws.listeners)
    https_port: int = 443
    access_logs_bucket: str = ""
    health_path: str = HEALTH_PATH  # what the target groups check (app.health_path)
    idle_timeout_seconds: int = 60  # the load balancer's connection idle timeout (AWS's default)
    scale_on: str = "none"  # deploy.scale_on: none, requests or cpu (pipeline.aws.scaling)
    scale_target: int = 0  # the policy's target value

    @property
    def stack_name(self) -> str:
        return tags.stack_name(self.app, self.env)


def params_for(settings: Settings) -> StackParams:
    """The blueprint parameters of the environment ``settings`` describes."""
    return StackParams(
        app=settings.app.name,
        env=settings.env,
        target=settings.image.target,
        app_port=settings.app.port,
        listener_port=settings.deploy.listener_port,
        allowed_cidrs=settings.deploy.allowed_cidrs,
        scratch_size_gib=settings.deploy.scratch_size_gib,
        existing_vpc=bool(settings.deploy.vpc_id),
        storage=settings.app.storage,
        certificate_arn=settings.deploy.certificate_arn,
        https_port=settings.deploy.https_port,
        access_logs_bucket=settings.deploy.access_logs_bucket,
        health_path=settings.app.health_path,
        idle_timeout_seconds=settings.deploy.idle_timeout_seconds,
        scale_on=settings.deploy.scale_on,
        scale_target=scaling.target_value(settings.deploy.scale_on, settings.deploy.scale_target),
    )


# -- the template ----------------------------------------------------------------------------------------


def blueprint(p: StackParams) -> Template:
    """The stack's template for ``p``."""
    t = Template(
        Description=f"{p.app} ({p.env}): blue/green {p.target} unikernel instances behind one load balancer"
    )
    common = tags.scope(p.app, p.env, {tags.TARGET: p.target})

    color_params = {color: colors.parameters(t, color, p.target) for color in COLORS}
    scaling.add_parameters(t, policies=p.scale_on != scaling.NONE)
    token = t.add_parameter(
        Parameter(
            probe.PARAMETER,
            Type="String",
            AllowedPattern=probe.PATTERN,
            Description=f"the current release's secret: the {probe.HEADER} value the probe rules require",
        )
    )
    net = network(t, p.stack_name, p.existing_vpc, common)
    vpc, subnets = net.vpc, net.subnets

    alb_sg = t.add_resource(
        ec2.SecurityGroup(
            "LoadBalancerSecurityGroup",
            GroupDescription=f"{p.stack_name} load balancer: port "
            f"{' and '.join(map(str, listeners.ports(p)))} from allowed networks",
            VpcId=vpc,
            SecurityGroupIngress=[
                ingress_from(cidr, port) for port in listeners.ports(p) for cidr in p.allowed_cidrs
            ],
            SecurityGroupEgress=[
                ec2.SecurityGroupRule(
                    Description="to the instances' app port only",
                    IpProtocol="tcp",
                    FromPort=p.app_port,
                    ToPort=p.app_port,
                    DestinationSecurityGroupId=Ref("InstanceSecurityGroup"),
                )
            ],
            Tags=Tags(**common, Name=f"{p.stack_name}-lb"),
        )
    )
    t.add_resource(
        ec2.SecurityGroup(
            "InstanceSecurityGroup",
            GroupDescription=f"{p.stack_name} instances: app port {p.app_port} from the load balancer only",
            VpcId=vpc,
            # No inbound rule here (the one below admits the load balancer only) and no outbound
            # traffic: the guests serve HTTP and call nothing. A rule to 127.0.0.1/32 is how a
            # security group says "no egress" (without it EC2 adds allow-all).
            SecurityGroupEgress=[
                ec2.SecurityGroupRule(
                    Description="no outbound traffic", IpProtocol="-1", CidrIp="127.0.0.1/32"
                )
            ],
            Tags=Tags(**common, Name=f"{p.stack_name}-instances"),
        )
    )
    t.add_resource(
        ec2.SecurityGroupIngress(
            "InstanceIngressFromLoadBalancer",
            GroupId=GetAtt("InstanceSecurityGroup", "GroupId"),
            Description="app port from the load balancer",
            IpProtocol="tcp",
            FromPort=p.app_port,
            ToPort=p.app_port,
            SourceSecurityGroupId=GetAtt(alb_sg, "GroupId"),
        )
    )

    alb = t.add_resource(
        elb.LoadBalancer(
            "LoadBalancer",
            Type="application",
            Scheme="internet-facing",
            Subnets=subnets,
            SecurityGroups=[GetAtt(alb_sg, "GroupId")],
            LoadBalancerAttributes=[
                elb.LoadBalancerAttributes(
                    Key="routing.http.drop_invalid_header_fields.enabled", Value="true"
                ),
                *listeners.access_log_attributes(p),
                # The app must keep idle connections open longer than this, or the load balancer
                # reuses one the app is closing and answers 502 (config checks the two).
                elb.LoadBalancerAttributes(
                    Key="idle_timeout.timeout_seconds", Value=str(p.idle_timeout_seconds)
                ),
            ],
            Tags=Tags(**common),
            **net.depends(),
        )
    )
    listener = listeners.add(t, p, alb, common)  # the HTTPS listener with a certificate, else HTTP

    groups: dict[Color, Any] = {}
    for color in COLORS:
        groups[color], servers = colors.resources(t, p, color, color_params[color], net, common)
        if p.scale_on != scaling.NONE:
            scaling.add_policy(t, p.scale_on, p.scale_target, color, servers, groups[color], alb)

    for priority, color in enumerate(COLORS, start=1):
        t.add_resource(
            elb.ListenerRule(
                f"{color.capitalize()}ProbeRule",
                ListenerArn=Ref(listener),
                Priority=priority,
                Conditions=[
                    elb.Condition(
                        Field="http-header",
                        HttpHeaderConfig=elb.HttpHeaderConfig(HttpHeaderName=COLOR_HEADER, Values=[color]),
                    ),
                    elb.Condition(
                        Field="http-header",
                        HttpHeaderConfig=elb.HttpHeaderConfig(
                            HttpHeaderName=probe.HEADER, Values=[Ref(token)]
                        ),
                    ),
                ],
                Actions=[elb.ListenerRuleAction(Type="forward", TargetGroupArn=Ref(groups[color]))],
                Tags=Tags(**common),
            )
        )
    t.add_resource(
        elb.ListenerRule(
            "WeightedRule",
            ListenerArn=Ref(listener),
            Priority=10,
            Conditions=[
                elb.Condition(Field="path-pattern", PathPatternConfig=elb.PathPatternConfig(Values=["/*"]))
            ],
            Actions=[
                elb.ListenerRuleAction(
                    Type="forward",
                    ForwardConfig=elb.ForwardConfig(
                        TargetGroups=[
                            elb.TargetGroupTuple(
                                TargetGroupArn=Ref(groups[color]), Weight=Ref(color_params[color]["Weight"])
                            )
                            for color in COLORS
                        ]
                    ),
                )
            ],
            Tags=Tags(**common),
        )
    )

    history = _history_parameter(t)

    t.add_condition("BlueIsLive", Equals(Ref("BlueWeight"), "100"))
    t.add_condition("GreenIsLive", Equals(Ref("GreenWeight"), "100"))
    t.add_output(
        [
            Output("Url", Description="the app's address", Value=listeners.url(p, alb)),
            Output("LoadBalancerArn", Value=Ref(alb)),
            Output(
                "LiveColor",
                Description="the colour with all the traffic, or shifting",
                Value=If("BlueIsLive", "blue", If("GreenIsLive", "green", "shifting")),
            ),
            # The history is an output too: an update that changes only the history then changes
            # the stack's outputs, which CloudFormation performs (an unused parameter alone it may
            # report as "no updates").
            Output("ReleaseHistory", Description="the releases (see invoke history)", Value=Ref(history)),
        ]
    )
    return t


def _history_parameter(t: Template) -> Parameter:
    """The release history (:mod:`pipeline.aws.history`): written by the pipeline with every update."""
    return t.add_parameter(
        Parameter(
            "History",
            Type="String",
            Default="",
            MaxLength=4096,  # CloudFormation's limit for a parameter value
            Description="release history kept by the pipeline (invoke history shows it; do not edit)",
        )
    )


def render(p: StackParams) -> str:
    """The template as JSON with sorted keys (the form committed under cfn/)."""
    text: str = blueprint(p).to_json(indent=2, sort_keys=True)
    return text + "\n"


# -- cfn/ --------------------------------------------------------------------------------------------------

CFN_DIR = "cfn"


def committed_templates(root: Path) -> dict[Path, str]:
    """The templates ``invoke synth`` writes: per environment in pipeline.toml, the stack's (by stack
    name) and the bootstrap stack's with its CloudFormation service role (``<stack>-role.json``)."""
    from pipeline import config
    from pipeline.aws import service_role

    out: dict[Path, str] = {}
    for env in environments(root):
        settings = config.load(root, env=env)
        p = params_for(settings)
        out[root / CFN_DIR / f"{p.stack_name}.json"] = render(p)
        out[root / CFN_DIR / f"{service_role.bootstrap_stack_name(settings)}.json"] = service_role.template(
            settings
        )
    return out


def environments(root: Path) -> list[str]:
    """The environment names defined in ``root``'s pipeline.toml."""
    raw = tomllib.loads((root / "pipeline.toml").read_text(encoding="utf-8"))
    envs = raw.get("env", {})
    return sorted(envs) if isinstance(envs, dict) else []


def synth(root: Path) -> list[Path]:
    """Rewrite cfn/ from the blueprint; return the files that changed. Removes templates of stacks
    that no environment describes any more."""
    wanted = committed_templates(root)
    changed: list[Path] = []
    for path, text in wanted.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode())
            changed.append(path)
    for stale in sorted((root / CFN_DIR).glob("*.json")):
        if stale not in wanted:
            stale.unlink()
            changed.append(stale)
    return changed


def template_summary(text: str) -> dict[str, list[str]]:
    """Resource logical ids by type, for a plan of a stack that does not exist yet."""
    out: dict[str, list[str]] = {}
    for name, res in json.loads(text)["Resources"].items():
        out.setdefault(res["Type"], []).append(name)
    return out
