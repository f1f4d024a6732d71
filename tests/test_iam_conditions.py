"""What the policies allow once their conditions are evaluated (tests/iam_eval.py, the documented IAM
evaluation rules; moto's enforcement cannot evaluate them): each call the pipeline makes, as AWS
authorizes it, is allowed; what whoever holds the credentials could turn against the account is
denied: tagging a foreign snapshot so that it looks like the pipeline's, deleting or sharing it,
making a foreign AMI public, reading credentials or snapshot blocks, a stack call without the service
role, and, for the service role, any change to a security group, listener or group the stack did not
make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from iam_eval import Request, decide, tags_context

from pipeline import config
from pipeline.aws import iam, service_role
from pipeline.config import Settings

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"
OWN = {"ManagedBy": "erlang-unikernel-pipeline", "App": "erlang_web", "Env": "dev"}
FOREIGN: dict[str, str] = {"Team": "databases"}
ROLE = f"arn:aws:iam::{ACCOUNT}:role/erlang-web-dev-cloudformation"
STACK = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/erlang-web-dev/6a1b2c3d"
SHARE = "111122223333"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0f1e2d3c-aaaa-bbbb-cccc-000000000001"


def image(n: str = "0123456789abcdef0", region: str = REGION) -> str:
    return f"arn:aws:ec2:{region}::image/ami-{n}"


def snapshot(n: str = "0123456789abcdef0", region: str = REGION) -> str:
    return f"arn:aws:ec2:{region}::snapshot/snap-{n}"


def ec2(kind: str, n: str = "0123456789abcdef0") -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{kind[:3]}-{n}"


def settings(*overrides: str) -> Settings:
    return config.load(REPO, env="dev", overrides=list(overrides))


def pipeline_policy(s: Settings | None = None) -> dict[str, Any]:
    return json.loads(iam.policy_json(s or settings(), ACCOUNT))


def role_policy(s: Settings | None = None) -> dict[str, Any]:
    return json.loads(iam.to_json(service_role.policy(s or settings(), ACCOUNT)))


def req(
    action: str,
    resource: str,
    own: dict[str, str] | None = None,
    sets: dict[str, str] | None = None,
    **extra: Any,
) -> Request:
    keys = {k.replace("__", ":").replace("_", "/"): v for k, v in extra.items()}
    return Request(action, resource, tags_context(own, sets, keys))


UPLOAD_TAGS = {**OWN, "Upload": "incomplete"}
SHARING = ('ami.share_with=["111122223333"]', 'ami.regions=["us-west-2"]', f'ami.kms_key_id="{KEY}"')

# Every call the pipeline makes (each resource it touches is one request), as AWS authorizes it.
PIPELINE_CALLS: list[tuple[str, Request]] = [
    # ami: the EBS direct upload
    ("start a snapshot, tagged", req("ebs:StartSnapshot", snapshot("new"), sets=UPLOAD_TAGS)),
    (
        "its tags, as it starts",
        req("ec2:CreateTags", snapshot("new"), sets=UPLOAD_TAGS, ec2__CreateAction="StartSnapshot"),
    ),
    ("write a block", req("ebs:PutSnapshotBlock", snapshot(), own=UPLOAD_TAGS)),
    ("complete it", req("ebs:CompleteSnapshot", snapshot(), own=UPLOAD_TAGS)),
    ("mark it complete", req("ec2:CreateTags", snapshot(), own=UPLOAD_TAGS, sets={"Upload": "complete"})),
    ("delete an abandoned upload", req("ec2:DeleteSnapshot", snapshot(), own=UPLOAD_TAGS)),
    # ami: register, tag, copy, share, deprecate
    ("register: the image", req("ec2:RegisterImage", image("new"), sets=OWN)),
    ("register: its snapshot", req("ec2:RegisterImage", snapshot(), own=OWN)),
    ("register: its tags", req("ec2:CreateTags", image("new"), sets=OWN, ec2__CreateAction="RegisterImage")),
    (
        "add a missing tag",
        req("ec2:CreateTags", image(), own=OWN, sets={"DeprecateAt": "2027-01-01T00:00:00Z"}),
    ),
    ("read who may launch", req("ec2:DescribeImageAttribute", image(), own=OWN)),
    ("make an own image private", req("ec2:ModifyImageAttribute", image(), own=OWN, ec2__Remove_group="all")),
    ("deprecate", req("ec2:EnableImageDeprecation", image(), own=OWN)),
    ("read a snapshot's permissions", req("ec2:DescribeSnapshotAttribute", snapshot(), own=OWN)),
    ("withdraw a share", req("ec2:ModifySnapshotAttribute", snapshot(), own=OWN, ec2__Remove_userId=[SHARE])),
    # gc
    ("deregister an own image", req("ec2:DeregisterImage", image(), own=OWN)),
    ("delete an own snapshot", req("ec2:DeleteSnapshot", snapshot(), own=OWN)),
    ("which images stacks use", req("cloudformation:DescribeStacks", "*")),
    ("which launch templates there are", req("ec2:DescribeLaunchTemplates", "*")),
    ("which images templates use", req("ec2:DescribeLaunchTemplateVersions", "*")),
    ("find images", req("ec2:DescribeImages", "*")),
    ("find snapshots", req("ec2:DescribeSnapshots", "*")),
    # deploy, rollback, status, destroy
    ("create the stack", req("cloudformation:CreateStack", STACK, cloudformation__RoleArn=ROLE)),
    ("update it", req("cloudformation:UpdateStack", STACK, cloudformation__RoleArn=ROLE)),
    ("plan it", req("cloudformation:CreateChangeSet", STACK, cloudformation__RoleArn=ROLE)),
    ("delete it", req("cloudformation:DeleteStack", STACK, cloudformation__RoleArn=ROLE)),
    ("read the plan", req("cloudformation:DescribeChangeSet", STACK)),
    ("drop the plan", req("cloudformation:DeleteChangeSet", STACK)),
    ("find old plans", req("cloudformation:ListChangeSets", STACK)),
    ("events", req("cloudformation:DescribeStackEvents", STACK)),
    ("template", req("cloudformation:GetTemplate", STACK)),
    ("pass the role", req("iam:PassRole", ROLE, iam__PassedToService="cloudformation.amazonaws.com")),
    ("see the role", req("iam:GetRole", ROLE)),
    ("target health", req("elasticloadbalancing:DescribeTargetHealth", "*")),
    ("groups", req("autoscaling:DescribeAutoScalingGroups", "*")),
    ("5xx", req("cloudwatch:GetMetricStatistics", "*")),
    # the pre-flight checks before any change (network, instance type)
    ("the VPC", req("ec2:DescribeVpcs", "*")),
    ("its subnets", req("ec2:DescribeSubnets", "*")),
    ("the instance type", req("ec2:DescribeInstanceTypes", "*")),
    ("where it is offered", req("ec2:DescribeInstanceTypeOfferings", "*")),
    # invoke logs, and the console a failed deploy prints
    (
        "an own instance's console",
        req("ec2:GetConsoleOutput", ec2("instance"), own={**OWN, "App": "erlang_web", "Env": "dev"}),
    ),
]
# With ami.share_with, ami.regions and ami.kms_key_id.
SHARING_CALLS: list[tuple[str, Request]] = [
    ("copy: the image", req("ec2:CopyImage", image("new", "us-west-2"), sets=OWN)),
    ("copy: its snapshot", req("ec2:CopyImage", snapshot("new", "us-west-2"), sets=OWN)),
    (
        "copy: its tags",
        req("ec2:CreateTags", image("new", "us-west-2"), sets=OWN, ec2__CreateAction="CopyImage"),
    ),
    (
        "share an own snapshot",
        req("ec2:ModifySnapshotAttribute", snapshot(), own=OWN, ec2__Add_userId=[SHARE]),
    ),
    ("share an own image", req("ec2:ModifyImageAttribute", image(), own=OWN)),
    (
        "encrypt through EBS",
        req("kms:GenerateDataKeyWithoutPlaintext", KEY, kms__ViaService=f"ebs.{REGION}.amazonaws.com"),
    ),
    ("grant EC2 the key", req("kms:CreateGrant", KEY, kms__ViaService=f"ec2.{REGION}.amazonaws.com")),
    ("decrypt for a copy", req("kms:Decrypt", KEY, kms__ViaService="ec2.us-west-2.amazonaws.com")),
]
# What the credentials must not do.
ABUSES: list[tuple[str, Request]] = [
    ("tag a foreign snapshot as the pipeline's", req("ec2:CreateTags", snapshot(), own=FOREIGN, sets=OWN)),
    ("tag a foreign image as the pipeline's", req("ec2:CreateTags", image(), own=FOREIGN, sets=OWN)),
    (
        "tag an untagged snapshot",
        req("ec2:CreateTags", snapshot(), sets={"ManagedBy": "erlang-unikernel-pipeline"}),
    ),
    (
        "change ManagedBy on an own snapshot",
        req("ec2:CreateTags", snapshot(), own=OWN, sets={"ManagedBy": "x"}),
    ),
    ("delete a foreign snapshot", req("ec2:DeleteSnapshot", snapshot(), own=FOREIGN)),
    ("deregister a foreign image", req("ec2:DeregisterImage", image(), own=FOREIGN)),
    (
        "share a foreign snapshot",
        req("ec2:ModifySnapshotAttribute", snapshot(), own=FOREIGN, ec2__Add_userId=[SHARE]),
    ),
    (
        "make an own snapshot public",
        req("ec2:ModifySnapshotAttribute", snapshot(), own=OWN, ec2__Add_group=["all"]),
    ),
    (
        "share an own snapshot elsewhere",
        req("ec2:ModifySnapshotAttribute", snapshot(), own=OWN, ec2__Add_userId=["444455556666"]),
    ),
    (
        "make a foreign AMI public",
        req("ec2:ModifyImageAttribute", image(), own=FOREIGN, ec2__Add_group=["all"]),
    ),
    ("register from a foreign snapshot", req("ec2:RegisterImage", snapshot(), own=FOREIGN)),
    ("register an untagged image", req("ec2:RegisterImage", image("new"))),
    ("write into a foreign snapshot", req("ebs:PutSnapshotBlock", snapshot(), own=FOREIGN)),
    ("read snapshot blocks", req("ebs:GetSnapshotBlock", snapshot(), own=OWN)),
    ("list snapshot blocks", req("ebs:ListSnapshotBlocks", snapshot(), own=FOREIGN)),
    ("read an instance's password", req("ec2:GetPasswordData", ec2("instance"))),
    ("read a console screenshot", req("ec2:GetConsoleScreenshot", ec2("instance"))),
    ("read a console", req("ec2:GetConsoleOutput", ec2("instance"))),
    ("create the stack without the role", req("cloudformation:CreateStack", STACK)),
    (
        "update it with another role",
        req("cloudformation:UpdateStack", STACK, cloudformation__RoleArn=ROLE + "-admin"),
    ),
    (
        "import resources into it",
        req(
            "cloudformation:CreateChangeSet",
            STACK,
            cloudformation__RoleArn=ROLE,
            cloudformation__ImportResourceTypes=["AWS::EC2::SecurityGroup"],
        ),
    ),
    (
        "another stack",
        req(
            "cloudformation:UpdateStack",
            STACK.replace("erlang-web-dev", "payments"),
            cloudformation__RoleArn=ROLE,
        ),
    ),
    (
        "pass another role",
        req(
            "iam:PassRole",
            ROLE.replace("erlang-web-dev", "admin"),
            iam__PassedToService="cloudformation.amazonaws.com",
        ),
    ),
    ("pass the role to EC2", req("iam:PassRole", ROLE, iam__PassedToService="ec2.amazonaws.com")),
    # resources the stack holds are CloudFormation's business, through the role only
    ("open a security group", req("ec2:AuthorizeSecurityGroupIngress", ec2("security-group"), own=OWN)),
    (
        "open one through CloudFormation",
        req(
            "ec2:AuthorizeSecurityGroupIngress",
            ec2("security-group"),
            own=OWN,
            aws__CalledVia=["cloudformation.amazonaws.com"],
        ),
    ),
    (
        "add a listener rule",
        req(
            "elasticloadbalancing:CreateRule",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/lb/1/2",
        ),
    ),
    ("scale a group", req("autoscaling:UpdateAutoScalingGroup", "*", own=OWN)),
    ("launch an instance", req("ec2:RunInstances", ec2("instance"))),
    ("read a foreign instance's console", req("ec2:GetConsoleOutput", ec2("instance"), own=FOREIGN)),
    (
        "read the console of another environment's instance",
        req("ec2:GetConsoleOutput", ec2("instance"), own={**OWN, "App": "erlang_web", "Env": "prod"}),
    ),
]
KEY_ABUSES: list[tuple[str, Request]] = [
    ("decrypt directly", req("kms:Decrypt", KEY)),
    (
        "decrypt through another service",
        req("kms:Decrypt", KEY, kms__ViaService=f"s3.{REGION}.amazonaws.com"),
    ),
    (
        "another key",
        req("kms:Decrypt", KEY.replace("0f1e", "9f1e"), kms__ViaService=f"ec2.{REGION}.amazonaws.com"),
    ),
]


@pytest.mark.parametrize(("what", "request_"), PIPELINE_CALLS, ids=[c[0] for c in PIPELINE_CALLS])
def test_each_call_of_the_pipeline_is_allowed(what: str, request_: Request) -> None:
    assert decide(pipeline_policy(), request_) == "allowed"


@pytest.mark.parametrize(("what", "request_"), SHARING_CALLS, ids=[c[0] for c in SHARING_CALLS])
def test_each_call_that_shares_copies_or_encrypts_is_allowed_when_configured(
    what: str, request_: Request
) -> None:
    assert decide(pipeline_policy(settings(*SHARING)), request_) == "allowed"
    if not request_.action.startswith("kms:") and request_.action != "ec2:ModifyImageAttribute":
        assert decide(pipeline_policy(), request_) == "denied"  # not without the settings


@pytest.mark.parametrize(("what", "request_"), ABUSES + KEY_ABUSES, ids=[c[0] for c in ABUSES + KEY_ABUSES])
def test_what_would_turn_the_credentials_against_the_account_is_denied(what: str, request_: Request) -> None:
    assert decide(pipeline_policy(settings(*SHARING)), request_) == "denied"
    assert decide(pipeline_policy(), request_) == "denied"


# -- the service role ------------------------------------------------------------------------------------

SCOPE = {"ManagedBy": "erlang-unikernel-pipeline", "App": "erlang_web", "Env": "dev"}
PROD = {**SCOPE, "Env": "prod"}
LISTENER = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:listener/app/erlang-Load-1ABC/50dc6c49/f2f7dc8e"
RULE = LISTENER.replace("listener/", "listener-rule/") + "/9683b2d0"
GROUP = (
    f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:1b2c:autoScalingGroupName/erlang-web-dev-Blue"
)

ROLE_CALLS: list[tuple[str, Request]] = [
    ("create a security group", req("ec2:CreateSecurityGroup", ec2("security-group", "new"), sets=SCOPE)),
    ("in the stack's VPC", req("ec2:CreateSecurityGroup", ec2("vpc"), own=SCOPE)),
    (
        "tag it as it is made",
        req(
            "ec2:CreateTags",
            ec2("security-group", "new"),
            sets=SCOPE,
            ec2__CreateAction="CreateSecurityGroup",
        ),
    ),
    ("add a rule to it", req("ec2:AuthorizeSecurityGroupIngress", ec2("security-group"), own=SCOPE)),
    ("the rule itself", req("ec2:AuthorizeSecurityGroupIngress", ec2("security-group-rule", "new"))),
    ("add a listener rule", req("elasticloadbalancing:CreateRule", LISTENER, own=SCOPE)),
    ("change it", req("elasticloadbalancing:ModifyRule", RULE, own=SCOPE)),
    (
        "tag the rule as it is made",
        req(
            "elasticloadbalancing:AddTags", RULE, sets=SCOPE, elasticloadbalancing__CreateAction="CreateRule"
        ),
    ),
    ("resize a group", req("autoscaling:UpdateAutoScalingGroup", GROUP, own=SCOPE)),
    ("launch: the AMI", req("ec2:RunInstances", image(), own=OWN)),
    ("launch: its snapshot", req("ec2:RunInstances", snapshot(), own=OWN)),
    ("launch: the template", req("ec2:RunInstances", ec2("launch-template"), own=SCOPE)),
    ("launch: the subnet", req("ec2:RunInstances", ec2("subnet"), own=SCOPE)),
    ("launch: the instance", req("ec2:RunInstances", ec2("instance", "new"))),
    (
        "retag a group",
        req("autoscaling:CreateOrUpdateTags", GROUP, own=SCOPE, sets={"BuildId": "2222222222bb"}),
    ),
    ("give the live colour its scaling policy", req("autoscaling:PutScalingPolicy", GROUP, own=SCOPE)),
    ("take it from the old colour", req("autoscaling:DeletePolicy", GROUP, own=SCOPE)),
]
ROLE_ABUSES: list[tuple[str, Request]] = [
    (
        "open a foreign security group",
        req("ec2:AuthorizeSecurityGroupIngress", ec2("security-group"), own=FOREIGN),
    ),
    ("open another environment's", req("ec2:AuthorizeSecurityGroupIngress", ec2("security-group"), own=PROD)),
    (
        "make a foreign group the stack's",
        req("ec2:CreateTags", ec2("security-group"), own=FOREIGN, sets=SCOPE),
    ),
    (
        "move an own group to prod",
        req("ec2:CreateTags", ec2("security-group"), own=SCOPE, sets={"Env": "prod"}),
    ),
    ("a rule on a foreign listener", req("elasticloadbalancing:CreateRule", LISTENER, own=FOREIGN)),
    ("change a foreign rule", req("elasticloadbalancing:ModifyRule", RULE)),
    ("reorder rules", req("elasticloadbalancing:SetRulePriorities", RULE, own=SCOPE)),
    ("resize a foreign group", req("autoscaling:UpdateAutoScalingGroup", GROUP, own=FOREIGN)),
    ("scale a foreign group", req("autoscaling:PutScalingPolicy", GROUP, own=FOREIGN)),
    ("scale another environment's", req("autoscaling:PutScalingPolicy", GROUP, own=PROD)),
    ("drop a foreign group's policy", req("autoscaling:DeletePolicy", GROUP, own=FOREIGN)),
    ("launch a foreign AMI", req("ec2:RunInstances", image(), own=FOREIGN)),
    ("launch into a foreign subnet", req("ec2:RunInstances", ec2("subnet"), own=FOREIGN)),
    ("delete a foreign VPC", req("ec2:DeleteVpc", ec2("vpc"), own=FOREIGN)),
    ("read a password", req("ec2:GetPasswordData", ec2("instance"))),
    ("pass a role", req("iam:PassRole", ROLE)),
    ("create a role", req("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/x")),
]


@pytest.mark.parametrize(("what", "request_"), ROLE_CALLS, ids=[c[0] for c in ROLE_CALLS])
def test_the_service_role_may_build_the_stacks_own_resources(what: str, request_: Request) -> None:
    assert decide(role_policy(), request_) == "allowed"


@pytest.mark.parametrize(("what", "request_"), ROLE_ABUSES, ids=[c[0] for c in ROLE_ABUSES])
def test_no_template_can_make_the_service_role_touch_what_the_stack_did_not_make(
    what: str, request_: Request
) -> None:
    assert decide(role_policy(), request_) == "denied"


def test_with_an_existing_vpc_the_role_creates_groups_there_and_launches_into_its_subnets_only() -> None:
    s = settings("deploy.vpc_id=vpc-0aaa0aaa", "deploy.subnet_ids=['subnet-0a0a0a0a','subnet-0b0b0b0b']")
    vpc = f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0aaa0aaa"
    assert decide(role_policy(s), req("ec2:CreateSecurityGroup", vpc)) == "allowed"
    assert decide(role_policy(s), req("ec2:CreateSecurityGroup", vpc.replace("0aaa", "0bbb"))) == "denied"
    subnet = f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/subnet-0b0b0b0b"
    assert decide(role_policy(s), req("ec2:RunInstances", subnet)) == "allowed"
    assert decide(role_policy(s), req("ec2:RunInstances", subnet.replace("0b", "0c"))) == "denied"
    assert (
        decide(role_policy(s), req("ec2:CreateVpc", ec2("vpc", "new"), sets=SCOPE)) == "denied"
    )  # none made


def test_a_pv_release_may_boot_amazons_pv_grub_kernel_only() -> None:
    s = settings('image.target="ling"', 'deploy.instance_type="m3.medium"')
    aki = image("919dcaf8")
    assert (
        decide(role_policy(s), req("ec2:RunInstances", aki, ec2__Owner="amazon", ec2__ImageType="kernel"))
        == "allowed"
    )
    assert (
        decide(role_policy(s), req("ec2:RunInstances", aki, ec2__Owner="amazon", ec2__ImageType="machine"))
        == "denied"
    )
    assert (
        decide(role_policy(), req("ec2:RunInstances", aki, ec2__Owner="amazon", ec2__ImageType="kernel"))
        == "denied"
    )
