"""The CloudFormation service role of an environment: the permissions for the stack's resources, held by
CloudFormation, not by the pipeline's credentials (pure, awacs and troposphere).

Why a role: the pipeline's credentials send a whole template with every stack update. Had they the
permissions for the stack's resources themselves (even only "through CloudFormation", which is all
``aws:CalledVia`` can say), any template sent with them could open any security group or add a rule
to any listener of the account. The role can change only what the stack made: resources that carry
the stack's tags (``ManagedBy``, ``App``, ``Env``: CloudFormation sets them as it creates each one),
with those keys set only as a resource is created and never changed after. It may launch only the
pipeline's own AMIs, and CloudFormation may not import foreign resources into the stack (the
pipeline's policy refuses change sets that import).

How the role comes to exist: it is the only resource of a small bootstrap stack, ``<stack>-role``,
whose template ``invoke synth`` writes to ``cfn/<stack>-role.json``. On AWS an administrator deploys
it once per environment (creating a role needs rights the pipeline must not have); the pipeline then
passes it with every stack call (``iam:PassRole`` for that one role). On the local AWS the pipeline
creates the bootstrap stack itself the first time it needs the role.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from awacs import autoscaling as asg
from awacs import cloudwatch, ec2, iam
from awacs import elasticloadbalancing as elb
from awacs.aws import Allow, PolicyDocument, Principal, Statement
from troposphere import Tags, Template
from troposphere import iam as tiam

from pipeline.aws import tags
from pipeline.aws.iam import condition
from pipeline.config import Settings

PROTECTED = (tags.MANAGED, tags.APP, tags.ENV)  # the keys that make a resource the stack's
CLOUDFORMATION = "cloudformation.amazonaws.com"
# The calls that create resources of the stack and tag them as they do (ec2:CreateAction).
EC2_CREATES = (
    "CreateVpc",
    "CreateInternetGateway",
    "CreateRouteTable",
    "CreateSubnet",
    "CreateSecurityGroup",
    "CreateLaunchTemplate",
    "RunInstances",
)
ELB_CREATES = ("CreateLoadBalancer", "CreateListener", "CreateRule", "CreateTargetGroup")


def role_name(settings: Settings) -> str:
    """``<stack>-cloudformation``, within IAM's 64 characters."""
    name = f"{tags.stack_name(settings.app.name, settings.env)}-cloudformation"
    if len(name) > 64:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:47]}-{digest}-cfn"
    return name


def role_arn(settings: Settings, account: str = "*") -> str:
    return f"arn:aws:iam::{account}:role/{role_name(settings)}"


def bootstrap_stack_name(settings: Settings) -> str:
    return f"{tags.stack_name(settings.app.name, settings.env)}-role"


# -- what the role may do ---------------------------------------------------------------------------------


def _scope(settings: Settings, kind: str) -> dict[str, str]:
    """The stack's tags as ``aws:ResourceTag`` (``kind="Resource"``) or ``aws:RequestTag`` keys."""
    values = {tags.MANAGED: tags.MANAGED_BY, tags.APP: settings.app.name, tags.ENV: settings.env}
    return {f"aws:{kind}Tag/{k}": v for k, v in values.items()}


def _arns(settings: Settings, account: str, service: str, *kinds: str) -> list[str]:
    region = settings.aws.region
    sep = "" if service == "autoscaling" else "/"
    return [f"arn:aws:{service}:{region}:{account}:{kind}{sep}*" for kind in kinds]


READS: tuple[Any, ...] = (
    ec2.DescribeAccountAttributes,
    ec2.DescribeAvailabilityZones,
    ec2.DescribeImages,
    ec2.DescribeInstances,
    ec2.DescribeInstanceTypes,
    ec2.DescribeInternetGateways,
    ec2.DescribeLaunchTemplates,
    ec2.DescribeLaunchTemplateVersions,
    ec2.DescribeNetworkAcls,
    ec2.DescribeNetworkInterfaces,
    ec2.DescribeRouteTables,
    ec2.DescribeSecurityGroupRules,
    ec2.DescribeSecurityGroups,
    ec2.DescribeSubnets,
    ec2.DescribeVpcs,
    elb.DescribeListenerAttributes,
    elb.DescribeListeners,
    elb.DescribeLoadBalancerAttributes,
    elb.DescribeLoadBalancers,
    elb.DescribeRules,
    elb.DescribeTags,
    elb.DescribeTargetGroupAttributes,
    elb.DescribeTargetGroups,
    elb.DescribeTargetHealth,
    asg.DescribeAutoScalingGroups,
    asg.DescribeScalingActivities,
    # the scaling policies' provider: it reads the policy back, and checks the metric exists
    asg.DescribePolicies,
    cloudwatch.GetMetricData,
)


def _network(settings: Settings, account: str) -> list[Statement]:
    """The stack's own VPC (none when ``deploy.vpc_id`` names an existing one)."""
    own, new = _scope(settings, "Resource"), _scope(settings, "Request")

    def arn(*kinds: str) -> list[str]:
        return _arns(settings, account, "ec2", *kinds)

    if settings.deploy.vpc_id:
        return []
    return [
        Statement(
            Sid="CreateNetwork",
            Effect=Allow,
            Action=[ec2.CreateVpc, ec2.CreateInternetGateway, ec2.CreateRouteTable, ec2.CreateSubnet],
            Resource=arn("vpc", "internet-gateway", "route-table", "subnet"),
            Condition=condition(StringEquals=new),
        ),
        Statement(
            Sid="OwnNetwork",
            Effect=Allow,
            Action=[
                ec2.CreateRouteTable,
                ec2.CreateSubnet,
                ec2.DescribeVpcAttribute,
                ec2.DeleteVpc,
                ec2.ModifyVpcAttribute,
                ec2.DeleteInternetGateway,
                ec2.AttachInternetGateway,
                ec2.DetachInternetGateway,
                ec2.DeleteRouteTable,
                ec2.CreateRoute,
                ec2.ReplaceRoute,
                ec2.DeleteRoute,
                ec2.AssociateRouteTable,
                ec2.ReplaceRouteTableAssociation,
                ec2.DisassociateRouteTable,
                ec2.DeleteSubnet,
                ec2.ModifySubnetAttribute,
            ],
            Resource=arn("vpc", "internet-gateway", "route-table", "subnet"),
            Condition=condition(StringEquals=own),
        ),
    ]


def _vpc_and_subnets(settings: Settings, account: str) -> list[str]:
    """The VPC and subnets the stack's resources live in: its own (tagged), or the configured ones."""
    region = settings.aws.region
    if settings.deploy.vpc_id:
        return [f"arn:aws:ec2:{region}:{account}:vpc/{settings.deploy.vpc_id}"] + [
            f"arn:aws:ec2:{region}:{account}:subnet/{s}" for s in settings.deploy.subnet_ids
        ]
    return []


def _instances(settings: Settings, account: str) -> list[Statement]:
    own, new = _scope(settings, "Resource"), _scope(settings, "Request")

    def arn(*kinds: str) -> list[str]:
        return _arns(settings, account, "ec2", *kinds)

    existing = _vpc_and_subnets(settings, account)
    out = [
        Statement(
            Sid="CreateGroupsAndTemplates",
            Effect=Allow,
            Action=[ec2.CreateSecurityGroup, ec2.CreateLaunchTemplate],
            Resource=arn("security-group", "launch-template"),
            Condition=condition(StringEquals=new),
        ),
        Statement(
            Sid="OwnGroupsAndTemplates",
            Effect=Allow,
            Action=[
                ec2.CreateSecurityGroup,  # in the stack's own VPC
                ec2.DeleteSecurityGroup,
                ec2.AuthorizeSecurityGroupIngress,
                ec2.AuthorizeSecurityGroupEgress,
                ec2.RevokeSecurityGroupIngress,
                ec2.RevokeSecurityGroupEgress,
                ec2.UpdateSecurityGroupRuleDescriptionsIngress,
                ec2.UpdateSecurityGroupRuleDescriptionsEgress,
                ec2.CreateLaunchTemplateVersion,
                ec2.DeleteLaunchTemplate,
            ],
            Resource=arn("vpc", "security-group", "launch-template"),
            Condition=condition(StringEquals=own),
        ),
        Statement(
            # New rules of the stack's groups are resources of their own (security-group-rule).
            Sid="NewRules",
            Effect=Allow,
            Action=[ec2.AuthorizeSecurityGroupIngress, ec2.AuthorizeSecurityGroupEgress],
            Resource=arn("security-group-rule"),
        ),
        Statement(
            # Auto Scaling checks that whoever creates or updates a group may launch what its launch
            # template says: only the pipeline's AMIs and their snapshots, the stack's launch
            # templates, groups and subnets; the instances, volumes and interfaces are new.
            Sid="LaunchOwnImages",
            Effect=Allow,
            Action=[ec2.RunInstances],
            Resource=[
                f"arn:aws:ec2:{settings.aws.region}::image/*",
                f"arn:aws:ec2:{settings.aws.region}::snapshot/*",
            ],
            Condition=condition(StringEquals={f"aws:ResourceTag/{tags.MANAGED}": tags.MANAGED_BY}),
        ),
        Statement(
            Sid="LaunchInTheStack",
            Effect=Allow,
            Action=[ec2.RunInstances],
            Resource=arn("launch-template", "security-group", "subnet"),
            Condition=condition(StringEquals=own),
        ),
        Statement(
            Sid="LaunchNew",
            Effect=Allow,
            Action=[ec2.RunInstances],
            Resource=arn("instance", "volume", "network-interface"),
        ),
    ]
    if existing:
        out.append(
            Statement(
                Sid="ConfiguredNetwork",
                Effect=Allow,
                Action=[ec2.CreateSecurityGroup, ec2.RunInstances],
                Resource=existing,
            )
        )
    if settings.virtualization == "pv":
        out.append(
            Statement(
                # A PV image boots Amazon's PV-GRUB kernel (an AKI owned by Amazon).
                Sid="LaunchPvGrub",
                Effect=Allow,
                Action=[ec2.RunInstances],
                Resource=[f"arn:aws:ec2:{settings.aws.region}::image/*"],
                Condition=condition(StringEquals={"ec2:Owner": "amazon", "ec2:ImageType": "kernel"}),
            )
        )
    return out


def _tags(settings: Settings, account: str) -> list[Statement]:
    own, new = _scope(settings, "Resource"), _scope(settings, "Request")
    kinds = ("vpc", "internet-gateway", "route-table", "subnet", "security-group", "launch-template")
    ec2_arns = _arns(settings, account, "ec2", *kinds, "instance", "volume", "security-group-rule")
    lb_arns = _arns(
        settings, account, "elasticloadbalancing", "loadbalancer/app", "listener/app", "listener-rule/app"
    ) + _arns(settings, account, "elasticloadbalancing", "targetgroup")
    keep_keys = {"aws:TagKeys": list(PROTECTED)}
    return [
        Statement(
            Sid="TagOnCreate",
            Effect=Allow,
            Action=[ec2.CreateTags],
            Resource=ec2_arns,
            Condition=condition(StringEquals={"ec2:CreateAction": list(EC2_CREATES), **new}),
        ),
        Statement(
            Sid="TagOnCreateBalancing",
            Effect=Allow,
            Action=[elb.AddTags],
            Resource=lb_arns,
            Condition=condition(StringEquals={"elasticloadbalancing:CreateAction": list(ELB_CREATES), **new}),
        ),
        Statement(
            Sid="RetagOwn",
            Effect=Allow,
            Action=[ec2.CreateTags, ec2.DeleteTags, elb.AddTags, elb.RemoveTags],
            Resource=ec2_arns + lb_arns,
            Condition=condition(StringEquals=own, ForAllValues_StringNotEquals=keep_keys),
        ),
    ]


def _balancing(settings: Settings, account: str) -> list[Statement]:
    own, new = _scope(settings, "Resource"), _scope(settings, "Request")

    def arn(*kinds: str) -> list[str]:
        return _arns(settings, account, "elasticloadbalancing", *kinds)

    return [
        Statement(
            Sid="CreateBalancing",
            Effect=Allow,
            Action=[elb.CreateLoadBalancer, elb.CreateTargetGroup],
            Resource=arn("loadbalancer/app", "targetgroup"),
            Condition=condition(StringEquals=new),
        ),
        Statement(
            # A listener or a rule is added only to the stack's own load balancer or listener.
            Sid="OwnBalancing",
            Effect=Allow,
            Action=[
                elb.DeleteLoadBalancer,
                elb.ModifyLoadBalancerAttributes,
                elb.SetSecurityGroups,
                elb.SetSubnets,
                elb.CreateListener,
                elb.DeleteListener,
                elb.ModifyListener,
                elb.ModifyListenerAttributes,
                elb.CreateRule,
                elb.DeleteRule,
                elb.ModifyRule,
                elb.DeleteTargetGroup,
                elb.ModifyTargetGroup,
                elb.ModifyTargetGroupAttributes,
            ],
            Resource=arn("loadbalancer/app", "listener/app", "listener-rule/app", "targetgroup"),
            Condition=condition(StringEquals=own),
        ),
    ]


def _groups(settings: Settings, account: str) -> list[Statement]:
    own, new = _scope(settings, "Resource"), _scope(settings, "Request")
    arn = _arns(settings, account, "autoscaling", "autoScalingGroup:")
    return [
        Statement(
            Sid="CreateGroups",
            Effect=Allow,
            Action=[asg.CreateAutoScalingGroup, asg.CreateOrUpdateTags],
            Resource=arn,
            Condition=condition(StringEquals=new),
        ),
        Statement(
            Sid="OwnGroups",
            Effect=Allow,
            Action=[
                asg.UpdateAutoScalingGroup,
                asg.DeleteAutoScalingGroup,
                asg.CreateOrUpdateTags,
                asg.DeleteTags,
                asg.AttachLoadBalancerTargetGroups,
                asg.DetachLoadBalancerTargetGroups,
                asg.SuspendProcesses,
                asg.ResumeProcesses,
                # the live colour's target tracking policy, moved with the release (its alarms are
                # made by Auto Scaling's own service-linked role, not by this one)
                asg.PutScalingPolicy,
                asg.DeletePolicy,
            ],
            Resource=arn,
            Condition=condition(
                StringEquals=own, ForAllValues_StringNotEquals={"aws:TagKeys": list(PROTECTED)}
            ),
        ),
        Statement(
            # The first group or load balancer of an account creates the service's linked role.
            Sid="ServiceLinkedRoles",
            Effect=Allow,
            Action=[iam.CreateServiceLinkedRole],
            Resource=[
                f"arn:aws:iam::{account}:role/aws-service-role/{service}/*"
                for service in ("autoscaling.amazonaws.com", "elasticloadbalancing.amazonaws.com")
            ],
            Condition=condition(
                StringEquals={
                    "iam:AWSServiceName": ["autoscaling.amazonaws.com", "elasticloadbalancing.amazonaws.com"]
                }
            ),
        ),
    ]


def policy(settings: Settings, account: str = "*") -> PolicyDocument:
    """What CloudFormation may do with the role, for the stack of ``settings``' environment."""
    return PolicyDocument(
        Version="2012-10-17",
        Statement=[
            Statement(Sid="Read", Effect=Allow, Action=list(READS), Resource=["*"]),
            *_network(settings, account),
            *_instances(settings, account),
            *_tags(settings, account),
            *_balancing(settings, account),
            *_groups(settings, account),
        ],
    )


def trust_policy() -> PolicyDocument:
    from awacs.sts import AssumeRole

    return PolicyDocument(
        Version="2012-10-17",
        Statement=[
            Statement(Effect=Allow, Principal=Principal("Service", [CLOUDFORMATION]), Action=[AssumeRole])
        ],
    )


# -- the bootstrap stack ----------------------------------------------------------------------------------


def template(settings: Settings) -> str:
    """The bootstrap stack's template: the role, with its policy inline (JSON, sorted keys). The ARNs
    name the account and region the stack is deployed in (``Fn::Sub``), so one template serves any."""
    t = Template(
        Description=f"{tags.stack_name(settings.app.name, settings.env)}: the role CloudFormation uses "
        "for the pipeline's stack (deploy once: see the README)"
    )
    t.add_resource(
        tiam.Role(
            "ServiceRole",
            RoleName=role_name(settings),
            Description="CloudFormation's permissions for the resources of one pipeline stack",
            AssumeRolePolicyDocument=json.loads(trust_policy().to_json()),
            Policies=[tiam.Policy(PolicyName="stack-resources", PolicyDocument=_deployed_policy(settings))],
            Tags=Tags(**tags.scope(settings.app.name, settings.env)),
        )
    )
    text: str = t.to_json(indent=2, sort_keys=True)
    return text + "\n"


def _deployed_policy(settings: Settings) -> Any:
    """The role's policy with ``${AWS::AccountId}`` and ``${AWS::Region}`` in its ARNs."""
    anywhere = replace(settings, aws=replace(settings.aws, region="${AWS::Region}"))
    doc = json.loads(policy(anywhere, "${AWS::AccountId}").to_json())

    def sub(value: Any) -> Any:
        if isinstance(value, str) and "${AWS::" in value:
            return {"Fn::Sub": value}
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    return sub(doc)
