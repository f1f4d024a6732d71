"""The pipeline's IAM policy: what it allows, that it covers what CloudFormation needs for the stack,
that every call the pipeline makes is allowed, and that the pipeline runs under it (moto enforcing
IAM) and fails with a clear line when a key action is missing."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import pytest
from awstest import FakeClock, Recorder, new_session

from pipeline import config
from pipeline.aws import ami, deploy, gc, iam, provenance, rollback, stack
from pipeline.aws import status as stack_status
from pipeline.aws.deploy import Runtime
from pipeline.config import Settings
from pipeline.errors import PipelineError
from tests.deploy_support import (
    REGION,
    TargetHealth,
    TwoReleases,
    make_clients,
    register_ami,
)

REPO = Path(__file__).resolve().parent.parent
STACK = "erlang-web-dev"
OVERRIDES = ["deploy.bake_seconds=20", "deploy.retention_seconds=30"]
GIT = provenance.GitState("unknown", "unknown")


def settings(*extra: str) -> Settings:
    return config.load(REPO, env="dev", overrides=[*OVERRIDES, *extra])


def document(s: Settings | None = None) -> dict[str, Any]:
    return json.loads(iam.policy_json(s or settings()))


def statements(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {st["Sid"]: st for st in doc["Statement"]}


def allows(doc: dict[str, Any], action: str, resource: str = "*", via_cloudformation: bool = False) -> bool:
    """Whether an Allow statement covers ``action`` on ``resource`` (IAM wildcard matching; a statement
    that requires aws:CalledVia only counts for calls CloudFormation makes)."""
    for st in doc["Statement"]:
        if st["Effect"] != "Allow":
            continue
        if "aws:CalledVia" in json.dumps(st.get("Condition", {})) and not via_cloudformation:
            continue
        if not any(fnmatchcase(action.lower(), a.lower()) for a in st["Action"]):
            continue
        if any(fnmatchcase(resource, r) for r in st["Resource"]):
            return True
    return False


# -- shape ---------------------------------------------------------------------------------------------


def test_policy_statements_are_scoped() -> None:
    doc = document()
    st = statements(doc)
    assert doc["Version"] == "2012-10-17"
    assert set(st) == {
        "ReadState",
        "Images",
        "RemoveOwnImages",
        "Stack",
        "StackResources",
        "ServiceLinkedRoles",
    }
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow"
        for action in s["Action"]:
            _, _, name = action.partition(":")
            assert name and name != "*", action  # never a whole service
    # the stack statement names only this app/env's stack in the configured region
    assert st["Stack"]["Resource"] == [f"arn:aws:cloudformation:{REGION}:*:stack/{STACK}/*"]
    assert allows(
        doc, "cloudformation:UpdateStack", f"arn:aws:cloudformation:{REGION}:123456789012:stack/{STACK}/x"
    )
    assert not allows(
        doc, "cloudformation:UpdateStack", f"arn:aws:cloudformation:{REGION}:1:stack/other-app/x"
    )
    assert not allows(
        doc, "cloudformation:DeleteStack", f"arn:aws:cloudformation:eu-west-1:1:stack/{STACK}/x"
    )
    # resources are changed only through CloudFormation, never directly
    assert st["StackResources"]["Condition"] == {
        "ForAnyValue:StringEquals": {"aws:CalledVia": ["cloudformation.amazonaws.com"]}
    }
    for direct in (
        "elasticloadbalancing:ModifyRule",
        "autoscaling:UpdateAutoScalingGroup",
        "ec2:RunInstances",
    ):
        assert not allows(doc, direct)
        assert allows(doc, direct, via_cloudformation=True)
    # only the pipeline's own images can be removed; service-linked roles only for two services
    assert st["RemoveOwnImages"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/ManagedBy": "erlang-unikernel-pipeline"}
    }
    assert st["ServiceLinkedRoles"]["Condition"]["StringEquals"]["iam:AWSServiceName"] == [
        "autoscaling.amazonaws.com",
        "elasticloadbalancing.amazonaws.com",
    ]
    for never in (
        "iam:PassRole",
        "ec2:TerminateInstances",
        "s3:PutObject",
        "ec2:ImportSnapshot",
        "iam:CreateRole",
    ):
        assert not allows(doc, never) and not allows(doc, never, via_cloudformation=True)
    assert "ImageKey" not in st


def test_a_kms_key_adds_a_statement_for_that_key_only() -> None:
    st = statements(document(settings('ami.kms_key_id="0f1e2d3c-aaaa-bbbb-cccc-000000000001"')))
    assert st["ImageKey"]["Resource"] == [f"arn:aws:kms:{REGION}:*:key/0f1e2d3c-aaaa-bbbb-cccc-000000000001"]
    alias = statements(document(settings('ami.kms_key_id="alias/images"')))
    assert alias["ImageKey"]["Resource"] == [f"arn:aws:kms:{REGION}:*:alias/images"]
    arn = "arn:aws:kms:us-east-1:123456789012:key/abc"
    assert statements(document(settings(f'ami.kms_key_id="{arn}"')))["ImageKey"]["Resource"] == [arn]


def test_account_pins_the_arns() -> None:
    st = statements(json.loads(iam.policy_json(settings(), account="123456789012")))
    assert st["Stack"]["Resource"] == [f"arn:aws:cloudformation:{REGION}:123456789012:stack/{STACK}/*"]


# -- what CloudFormation needs for the stack -------------------------------------------------------------

# Permissions the resource providers list that this template never needs, and why.
NOT_USED = {
    "cognito-idp:*": "no authenticate-cognito listener actions",
    "managed-fleets:*": "no managed fleets",
    "vpc-lattice:*": "no VPC Lattice traffic sources",
    "ssm:Get*": "ImageId is an AMI id, not an SSM parameter",
    "iam:PassRole": "the instances get no IAM role (no instance profile)",
    "cloudwatch:PutMetricAlarm": "no scaling policies",
    "ec2:AttachVpnGateway": "the VPC attaches an internet gateway, not a VPN gateway",
    "ec2:DetachVpnGateway": "the VPC attaches an internet gateway, not a VPN gateway",
    "ec2:CreateVpcEncryptionControl": "no VPC encryption control",
    "ec2:ModifyVpcTenancy": "default tenancy",
    "ec2:AssociateSubnetCidrBlock": "IPv4-only subnets",
    "ec2:DisassociateSubnetCidrBlock": "IPv4-only subnets",
    "autoscaling:AttachLoadBalancers": "no classic load balancers",
    "autoscaling:DetachLoadBalancers": "no classic load balancers",
    "autoscaling:AttachTrafficSources": "target groups are attached with TargetGroupARNs",
    "autoscaling:DetachTrafficSources": "target groups are attached with TargetGroupARNs",
    "autoscaling:PutLifecycleHook": "no lifecycle hooks",
    "autoscaling:DeleteLifecycleHook": "no lifecycle hooks",
    "autoscaling:PutNotificationConfiguration": "no notifications",
    "autoscaling:DeleteNotificationConfiguration": "no notifications",
    "autoscaling:EnableMetricsCollection": "no group metrics collection",
    "autoscaling:DisableMetricsCollection": "no group metrics collection",
    "autoscaling:StartInstanceRefresh": "a release is a new colour, never an instance refresh",
    "autoscaling:CancelInstanceRefresh": "a release is a new colour, never an instance refresh",
    "elasticloadbalancing:ModifyCapacityReservation": "no capacity reservation",
    "elasticloadbalancing:ModifyIpPools": "no IPAM pools",
    "elasticloadbalancing:SetIpAddressType": "IPv4 load balancer",
    "elasticloadbalancing:RegisterTargets": "no static targets (Auto Scaling registers instances itself)",
    "elasticloadbalancing:DeregisterTargets": "no static targets (Auto Scaling registers instances itself)",
}


def provider_permissions(template: dict[str, Any]) -> dict[str, set[str]]:
    """permission -> resource types needing it, from the CloudFormation resource provider schemas
    cfn-lint ships (create, update, delete and read handlers)."""
    import cfnlint.data.schemas

    base = Path(cfnlint.data.schemas.__file__).parent
    index = json.loads((base / "providers" / f"{REGION}.json").read_text())
    out: dict[str, set[str]] = {}
    for kind in {r["Type"] for r in template["Resources"].values()}:
        schema = json.loads((base / "resources" / f"{index[kind]}.json").read_text())
        for handler in ("create", "update", "delete", "read"):
            for permission in schema.get("handlers", {}).get(handler, {}).get("permissions", []):
                out.setdefault(permission, set()).add(kind)
    return out


def test_the_policy_covers_what_cloudformation_needs_for_every_variant_of_the_stack() -> None:
    doc = document()
    variants = [
        stack.params_for(settings()),
        stack.params_for(settings("deploy.vpc_id=vpc-1", "deploy.subnet_ids=['s-1','s-2']")),
    ]
    needed: dict[str, set[str]] = {}
    for p in variants:
        for permission, kinds in provider_permissions(json.loads(stack.render(p))).items():
            needed.setdefault(permission, set()).update(kinds)
    excluded = [p for p in needed if any(fnmatchcase(p, pattern) for pattern in NOT_USED)]
    missing = sorted(p for p in needed if p not in excluded and not allows(doc, p, via_cloudformation=True))
    assert missing == []
    # and nothing in StackResources is there without a resource type asking for it
    asked = {p.lower() for p in needed}
    extra = [a for a in statements(doc)["StackResources"]["Action"] if a.lower() not in asked]
    assert extra == []
    # every exclusion still names something the providers list (so stale ones get noticed)
    assert all(any(fnmatchcase(p, pattern) for p in needed) for pattern in NOT_USED)


# -- the pipeline under the policy ----------------------------------------------------------------------


def for_moto(doc: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto can enforce it.

    moto's IAM enforcement checks actions only: it passes every EC2, CloudFormation, ELBv2, Auto
    Scaling and CloudWatch request as resource ``*`` (so ARN-scoped statements would never match) and
    cannot evaluate resource-tag conditions (it treats an unmet condition as an explicit deny). It
    names CloudWatch actions after the signing name ``monitoring``. Resource scoping is checked against
    the recorded calls instead. The
    ``aws:CalledVia`` condition stays: calls the pipeline made directly would be denied by it.
    """
    out = copy.deepcopy(doc)
    for st in out["Statement"]:
        st["Resource"] = ["*"]
        if "aws:ResourceTag" in json.dumps(st.get("Condition", {})):
            del st["Condition"]
        st["Action"] = [a.replace("cloudwatch:", "monitoring:") for a in st["Action"]]
    return out


@contextmanager
def enforce(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto checking every request's signature and the caller's IAM policy.

    One correction to moto (5.2): when it recomputes the signature of an EBS request without a body
    (CompleteSnapshot is a POST with everything in headers) it signs the request's headers as if they
    were the body, so the signature never matches. The correction signs the empty body, as AWS does.
    """
    from moto.core import enable_iam_authentication
    from moto.iam.access_control import IAMRequestBase

    original = IAMRequestBase._create_aws_request

    def signed_as_sent(self: Any) -> Any:
        request = original(self)
        if self._service == "ebs" and not self._body:  # REST: no form data stands for the body
            request.data = b""
        return request

    monkeypatch.setattr(IAMRequestBase, "_create_aws_request", signed_as_sent)
    with enable_iam_authentication():
        yield


def iam_user(policy: dict[str, Any]) -> boto3.Session:
    """An IAM user with ``policy`` and a session with its keys (made while moto does not enforce)."""
    client = new_session(REGION).client("iam")
    client.create_user(UserName="pipeline")
    client.put_user_policy(UserName="pipeline", PolicyName="pipeline", PolicyDocument=json.dumps(policy))
    key = client.create_access_key(UserName="pipeline")["AccessKey"]
    return new_session(
        REGION, aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )


@pytest.fixture
def cycle(aws_in_process: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """AMIs for two builds, registered with the test's own (unrestricted) credentials."""
    s = settings()
    TargetHealth(monkeypatch)
    admin = make_clients()
    return {
        "settings": s,
        "v1": register_ami(admin, s, "1111111111aa"),
        "v2": register_ami(admin, s, "2222222222bb"),
    }


def run_cycle(releases: TwoReleases, user: boto3.Session, rec: Recorder | None = None) -> None:
    """build -> ami -> deploy v1 -> ami, deploy v2 -> status -> rollback -> destroy -> gc, with the
    real ami stage (the builds are made beforehand: they need no AWS)."""
    s1, s2 = (
        releases.settings("v1", *OVERRIDES, "ami.keep=1"),
        releases.settings("v2", *OVERRIDES, "ami.keep=1"),
    )
    clients = make_clients(rec, user)
    clock = FakeClock()
    rt = Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda q: True)
    wait = {"sleep": clock.sleep, "clock": clock.clock}
    ami.publish(s1, clients, releases.v1, progress=False, git=GIT, **wait)
    deploy.deploy(s1, clients, rt)
    ami.publish(s2, clients, releases.v2, progress=False, git=GIT, **wait)
    deploy.deploy(s2, clients, rt)
    deploy.deploy(s2, clients, rt)
    assert stack_status.status(s2, clients) is not None
    rollback.rollback(s2, clients, rt)
    gone = stack_status.destroy(s2, clients, rt)
    assert gone.collectable is not None and len(gone.collectable.removals) == 2  # v1's image and snapshot
    assert gc.apply(clients, s2, gone.collectable) == []


@pytest.mark.slow  # two real beam builds (once per session), uploaded and registered
def test_the_pipeline_runs_under_the_policy_and_every_call_it_makes_is_allowed(
    aws_in_process: None, two_releases: TwoReleases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole cycle under moto's IAM enforcement, then each recorded call against the real policy,
    with resources: each CloudFormation call names the app/env stack the policy is scoped to."""
    TargetHealth(monkeypatch)
    session = iam_user(for_moto(document()))
    rec = Recorder()
    with enforce(monkeypatch):
        run_cycle(two_releases, session, rec)
    doc = document()
    denied = []
    for call in rec.calls:
        resource = "*"
        if call.service == "cloudformation" and "StackName" in call.params:  # gc reads every stack
            name = call.params["StackName"]
            resource = (
                name
                if name.startswith("arn:")
                else f"arn:aws:cloudformation:{REGION}:123456789012:stack/{name}/id"
            )
        if not allows(doc, call.action, resource):
            denied.append((call.action, resource))
    assert denied == []
    assert {c.action for c in rec.calls} >= {
        # ami
        "ebs:StartSnapshot",
        "ebs:PutSnapshotBlock",
        "ebs:CompleteSnapshot",
        "ec2:RegisterImage",
        "ec2:CreateTags",
        # deploy, status, rollback, destroy
        "cloudformation:CreateStack",
        "cloudformation:UpdateStack",
        "cloudformation:DeleteStack",
        "cloudformation:CreateChangeSet",
        "cloudformation:DescribeStackEvents",
        "cloudformation:GetTemplate",
        "ec2:DescribeImages",
        "elasticloadbalancing:DescribeTargetHealth",
        "cloudwatch:GetMetricStatistics",
        "autoscaling:DescribeAutoScalingGroups",
        # gc
        "cloudformation:DescribeStacks",
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeSnapshots",
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
    }


@pytest.mark.parametrize(
    ("removed", "fails_at"),
    [
        ("cloudformation:UpdateStack", "AWS denied UpdateStack"),
        ("elasticloadbalancing:Describe*", "AWS denied DescribeTargetHealth"),
    ],
)
def test_without_a_key_action_the_pipeline_stops_with_a_clear_line(
    cycle: dict[str, Any], removed: str, fails_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = for_moto(document())
    for st in doc["Statement"]:
        st["Action"] = [a for a in st["Action"] if a != removed]
    session = iam_user(doc)
    clients = make_clients(None, session)
    clock = FakeClock()
    rt = Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda q: True)
    s = cycle["settings"]
    with enforce(monkeypatch), pytest.raises(PipelineError) as err:
        deploy.deploy(s, clients, rt, "1111111111aa")
        deploy.deploy(s, clients, rt, "2222222222bb")
    line = str(err.value)
    assert fails_at in line and "(hint: invoke iam-policy prints the policy the pipeline needs" in line
    assert "\n" not in line
    # the live release is untouched: v1 live on blue, or no stack at all
    st = stack_status.status(s, make_clients())
    assert st is None or (
        st.live == "blue" and {c.color: c.image_id for c in st.colors}["blue"] == cycle["v1"]
    )


@pytest.mark.slow  # a real beam build (once per session)
def test_without_put_snapshot_block_the_ami_stage_stops_with_a_clear_line(
    aws_in_process: None, two_releases: TwoReleases, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = for_moto(document())
    for st in doc["Statement"]:
        st["Action"] = [a for a in st["Action"] if a != "ebs:PutSnapshotBlock"]
    clients = make_clients(None, iam_user(doc))
    clock = FakeClock()
    s = two_releases.settings("v1", *OVERRIDES)
    with enforce(monkeypatch), pytest.raises(PipelineError) as err:
        ami.publish(
            s, clients, two_releases.v1, progress=False, git=GIT, sleep=clock.sleep, clock=clock.clock
        )
    line = str(err.value)
    assert "\n" not in line
    assert "AWS denied PutSnapshotBlock" in line, line
    assert "(hint: invoke iam-policy prints the policy the pipeline needs" in line
    assert make_clients().ec2().describe_images(Owners=["self"])["Images"] == []  # nothing registered
