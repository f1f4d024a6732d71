"""The least-privilege IAM policy the pipeline needs for ``ami``, ``deploy`` and ``gc`` (pure, awacs).

``invoke iam-policy`` prints it. It has one statement per purpose:

- ``ReadState``: the read-only calls (describe images, snapshots, stacks, target health, metrics);
- ``Images``: make AMIs from EBS snapshots written through the EBS direct APIs, tag, copy and share
  them (nothing else: no instances, no S3, no import role);
- ``RemoveOwnImages``: deregister AMIs and delete snapshots, only those tagged ``ManagedBy`` by the
  pipeline;
- ``Stack``: create, update, plan and delete the one stack of this app and environment;
- ``StackResources``: what CloudFormation needs to build that stack's resources with the caller's
  credentials, allowed only through CloudFormation (``aws:CalledVia``), so these credentials cannot
  change a load balancer or an Auto Scaling group directly and the stack cannot drift;
- ``ServiceLinkedRoles``: the first Auto Scaling group or load balancer of an account creates its
  service-linked role;
- ``ImageKey`` (only with ``ami.kms_key_id``): use that key for encrypted snapshots.

Each action comes from awacs' catalogue of real IAM actions, so a misspelt one fails at import.
"""

from __future__ import annotations

import json
from typing import Any

from awacs import acm, cloudwatch, ebs, ec2, iam, kms
from awacs import autoscaling as asg
from awacs import cloudformation as cf
from awacs import elasticloadbalancing as elb
from awacs.aws import Allow, Condition, ForAnyValueStringEquals, PolicyDocument, Statement, StringEquals

from pipeline.aws import tags
from pipeline.config import Settings

CALLED_VIA_CLOUDFORMATION = "cloudformation.amazonaws.com"


def _read_state() -> Statement:
    return Statement(
        Sid="ReadState",
        Effect=Allow,
        Action=[
            ec2.Action("Describe*"),
            ec2.Action("Get*"),
            ec2.GetConsoleOutput,  # invoke logs (with Latest=true); named so it outlives Get*
            acm.DescribeCertificate,  # deploy checks deploy.certificate_arn before any change
            elb.Action("Describe*"),
            asg.Action("Describe*"),
            cloudwatch.GetMetricStatistics,
            # gc checks the image parameters of every stack in the account before removing an AMI
            cf.DescribeStacks,
            ebs.ListSnapshotBlocks,
            ebs.ListChangedBlocks,
            ebs.GetSnapshotBlock,
        ],
        Resource=["*"],
    )


def _images() -> Statement:
    return Statement(
        Sid="Images",
        Effect=Allow,
        Action=[
            ebs.StartSnapshot,
            ebs.PutSnapshotBlock,
            ebs.CompleteSnapshot,
            ec2.RegisterImage,
            ec2.CopyImage,
            ec2.CopySnapshot,
            ec2.CreateTags,
            ec2.ModifyImageAttribute,
            ec2.ModifySnapshotAttribute,
            ec2.EnableImageDeprecation,
        ],
        Resource=["*"],
    )


def _remove_own_images() -> Statement:
    return Statement(
        Sid="RemoveOwnImages",
        Effect=Allow,
        Action=[ec2.DeregisterImage, ec2.DeleteSnapshot],
        Resource=["*"],
        Condition=Condition(StringEquals(f"aws:ResourceTag/{tags.MANAGED}", tags.MANAGED_BY)),
    )


def _stack(stack_arn: str) -> Statement:
    return Statement(
        Sid="Stack",
        Effect=Allow,
        Action=[
            cf.CreateStack,
            cf.UpdateStack,
            cf.DeleteStack,
            cf.DescribeStackEvents,
            cf.GetTemplate,
            cf.CreateChangeSet,
            cf.DescribeChangeSet,
            cf.DeleteChangeSet,
            cf.ListChangeSets,
        ],
        Resource=[stack_arn],
    )


# What the template's resource types need for create, update and delete (the CloudFormation resource
# providers' handler permissions, minus features the template does not use; tests/test_iam.py checks
# this list against the provider schemas).
STACK_RESOURCE_ACTIONS: tuple[Any, ...] = (
    # the VPC of the stack's own (when no existing VPC is configured)
    ec2.CreateVpc,
    ec2.DeleteVpc,
    ec2.ModifyVpcAttribute,
    ec2.CreateInternetGateway,
    ec2.DeleteInternetGateway,
    ec2.AttachInternetGateway,
    ec2.DetachInternetGateway,
    ec2.CreateRouteTable,
    ec2.DeleteRouteTable,
    ec2.CreateRoute,
    ec2.ReplaceRoute,
    ec2.DeleteRoute,
    ec2.AssociateRouteTable,
    ec2.ReplaceRouteTableAssociation,
    ec2.DisassociateRouteTable,
    ec2.CreateSubnet,
    ec2.DeleteSubnet,
    ec2.ModifySubnetAttribute,
    # security groups
    ec2.CreateSecurityGroup,
    ec2.DeleteSecurityGroup,
    ec2.AuthorizeSecurityGroupIngress,
    ec2.AuthorizeSecurityGroupEgress,
    ec2.RevokeSecurityGroupIngress,
    ec2.RevokeSecurityGroupEgress,
    ec2.UpdateSecurityGroupRuleDescriptionsIngress,
    ec2.UpdateSecurityGroupRuleDescriptionsEgress,
    # launch templates, and launching from them (checked when a group is created or updated)
    ec2.CreateLaunchTemplate,
    ec2.CreateLaunchTemplateVersion,
    ec2.DeleteLaunchTemplate,
    ec2.RunInstances,
    ec2.CreateTags,
    ec2.DeleteTags,
    # the load balancer, listener, rules and target groups
    elb.CreateLoadBalancer,
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
    elb.SetRulePriorities,
    elb.CreateTargetGroup,
    elb.DeleteTargetGroup,
    elb.ModifyTargetGroup,
    elb.ModifyTargetGroupAttributes,
    elb.AddTags,
    elb.RemoveTags,
    # the Auto Scaling groups
    asg.CreateAutoScalingGroup,
    asg.UpdateAutoScalingGroup,
    asg.DeleteAutoScalingGroup,
    asg.CreateOrUpdateTags,
    asg.DeleteTags,
    asg.AttachLoadBalancerTargetGroups,
    asg.DetachLoadBalancerTargetGroups,
    asg.SuspendProcesses,
    asg.ResumeProcesses,
)


def _stack_resources() -> Statement:
    return Statement(
        Sid="StackResources",
        Effect=Allow,
        Action=list(STACK_RESOURCE_ACTIONS),
        Resource=["*"],
        Condition=Condition(ForAnyValueStringEquals("aws:CalledVia", [CALLED_VIA_CLOUDFORMATION])),
    )


def _service_linked_roles() -> Statement:
    return Statement(
        Sid="ServiceLinkedRoles",
        Effect=Allow,
        Action=[iam.CreateServiceLinkedRole],
        Resource=["*"],
        Condition=Condition(
            StringEquals(
                "iam:AWSServiceName", ["autoscaling.amazonaws.com", "elasticloadbalancing.amazonaws.com"]
            )
        ),
    )


def _image_key(key: str) -> Statement:
    return Statement(
        Sid="ImageKey",
        Effect=Allow,
        Action=[
            kms.DescribeKey,
            kms.GenerateDataKeyWithoutPlaintext,
            kms.Decrypt,
            kms.Action("ReEncrypt*"),
            kms.CreateGrant,
        ],
        Resource=[key],
    )


def stack_arn(settings: Settings, account: str = "*") -> str:
    """The ARN pattern of the app/env stack (any stack id: a deleted and recreated stack gets a new one)."""
    name = tags.stack_name(settings.app.name, settings.env)
    return f"arn:aws:cloudformation:{settings.aws.region}:{account}:stack/{name}/*"


def policy(settings: Settings, account: str = "*") -> PolicyDocument:
    """The pipeline's policy for the environment ``settings`` describes."""
    statements = [
        _read_state(),
        _images(),
        _remove_own_images(),
        _stack(stack_arn(settings, account)),
        _stack_resources(),
        _service_linked_roles(),
    ]
    if settings.ami.kms_key_id:
        key = settings.ami.kms_key_id
        if not key.startswith("arn:"):
            kind = "" if key.startswith("alias/") else "key/"
            key = f"arn:aws:kms:{settings.aws.region}:{account}:{kind}{key}"
        statements.append(_image_key(key))
    return PolicyDocument(Version="2012-10-17", Statement=statements)


def policy_json(settings: Settings, account: str = "*") -> str:
    """The policy as the JSON document IAM takes (sorted keys)."""
    return json.dumps(json.loads(policy(settings, account).to_json()), indent=2, sort_keys=True)
