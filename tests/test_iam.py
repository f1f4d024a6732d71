"""The pipeline's IAM policy and its CloudFormation service role's: their shape, that the role covers
what CloudFormation's resource providers need for every variant of the stack, and that the pipeline
runs under its policy (moto enforcing IAM) and fails with a clear line when a key action is missing.
(What the conditions allow and deny: test_iam_conditions.py; parliament and cloudsplaining:
test_iam_audit.py.)"""

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
from iam_eval import Request, decide

from pipeline import config
from pipeline.aws import ami, deploy, gc, iam, provenance, rollback, service_role, stack
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
ACCOUNT = "123456789012"
OVERRIDES = ["deploy.bake_seconds=20", "deploy.retention_seconds=30"]
GIT = provenance.GitState("unknown", "unknown")


def settings(*extra: str) -> Settings:
    return config.load(REPO, env="dev", overrides=[*OVERRIDES, *extra])


def document(s: Settings | None = None, account: str = "*", key: str | None = None) -> dict[str, Any]:
    return json.loads(iam.policy_json(s or settings(), account, key))


def statements(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {st["Sid"]: st for st in doc["Statement"]}


# -- shape ---------------------------------------------------------------------------------------------


def test_every_action_is_named_and_scoped() -> None:
    doc = document()
    st = statements(doc)
    assert doc["Version"] == "2012-10-17"
    assert set(st) == {
        "Read",
        "ReadOwnConsoles",
        "UploadSnapshots",
        "WriteOwnSnapshots",
        "RegisterImages",
        "FromOwnSnapshots",
        "TagOnCreate",
        "TagOwn",
        "OwnImages",
        "SeeOwnSnapshots",
        "ShareOwnSnapshots",
        "RemoveOwnImages",
        "StackChanges",
        "StackReads",
        "PassServiceRole",
        "SeeServiceRole",
    }
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow"
        for action in s["Action"]:
            assert "*" not in action and "?" not in action, action  # every action by its name
        if s["Resource"] == ["*"]:  # only reads that no resource can scope
            assert all(a.split(":")[1].startswith(("Describe", "Get", "List")) for a in s["Action"]), s
    # the stack statement names only this app/env's stack in the configured region, with the role
    assert st["StackChanges"]["Resource"] == [f"arn:aws:cloudformation:{REGION}:*:stack/{STACK}/*"]
    assert st["StackChanges"]["Condition"] == {
        "ArnEquals": {"cloudformation:RoleArn": f"arn:aws:iam::*:role/{STACK}-cloudformation"},
        "Null": {"cloudformation:ImportResourceTypes": "true"},
    }
    assert st["PassServiceRole"]["Resource"] == [f"arn:aws:iam::*:role/{STACK}-cloudformation"]
    # nothing of the stack's resources, nothing that reads credentials or data
    actions = {a.lower() for a in iam.actions(iam.policy(settings()))}
    for never in (
        "ec2:runinstances",
        "ec2:authorizesecuritygroupingress",
        "elasticloadbalancing:createrule",
        "autoscaling:updateautoscalinggroup",
        "ec2:getpassworddata",
        "ec2:getconsolescreenshot",
        "ebs:getsnapshotblock",
        "ec2:deletetags",
        "iam:createrole",
        "s3:putobject",
    ):
        assert never not in actions


def test_a_kms_key_is_named_by_its_arn_and_used_only_through_ec2_and_ebs() -> None:
    key_id = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    st = statements(document(settings(f'ami.kms_key_id="{key_id}"', 'ami.regions=["us-west-2"]'), ACCOUNT))
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"
    assert st["ImageKey"]["Resource"] == [arn] and st["SeeImageKey"]["Resource"] == [arn]
    assert st["ImageKey"]["Condition"] == {
        "StringEquals": {
            "kms:ViaService": [
                "ec2.us-east-1.amazonaws.com",
                "ebs.us-east-1.amazonaws.com",
                "ec2.us-west-2.amazonaws.com",
                "ebs.us-west-2.amazonaws.com",
            ]
        }
    }
    given = "arn:aws:kms:us-east-1:123456789012:key/abc"
    assert statements(document(settings(f'ami.kms_key_id="{given}"')))["ImageKey"]["Resource"] == [given]
    # an alias grants nothing on the key: it is resolved to the key's ARN, or refused
    alias = settings('ami.kms_key_id="alias/images"')
    with pytest.raises(ValueError, match="alias/images must be resolved"):
        document(alias)
    assert statements(document(alias, ACCOUNT, key=arn))["ImageKey"]["Resource"] == [arn]
    assert "ImageKey" not in statements(document())


def test_kms_aliases_are_resolved_through_kms(aws_in_process: None) -> None:
    from pipeline.aws import bootstrap
    from pipeline.errors import ConfigError

    kms = make_clients().client("kms")
    key = kms.create_key(Description="images")["KeyMetadata"]
    kms.create_alias(AliasName="alias/images", TargetKeyId=key["KeyId"])
    assert bootstrap.resolve_key(settings('ami.kms_key_id="alias/images"'), make_clients()) == key["Arn"]
    assert bootstrap.resolve_key(settings(f'ami.kms_key_id="{key["Arn"]}"'), make_clients()) is None
    with pytest.raises(ConfigError, match=r'ami\.kms_key_id: KMS has no key "alias/other" in us-east-1'):
        bootstrap.resolve_key(settings('ami.kms_key_id="alias/other"'), make_clients())


def test_account_pins_the_arns() -> None:
    st = statements(document(account=ACCOUNT))
    assert st["StackChanges"]["Resource"] == [f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/*"]
    assert st["PassServiceRole"]["Resource"] == [f"arn:aws:iam::{ACCOUNT}:role/{STACK}-cloudformation"]


# -- what CloudFormation needs for the stack: the service role ---------------------------------------------

# Permissions the resource providers list that this template never needs, and why.
NOT_USED = {
    "cognito-idp:*": "no authenticate-cognito listener actions",
    "managed-fleets:*": "no managed fleets",
    "vpc-lattice:*": "no VPC Lattice traffic sources",
    "ssm:Get*": "ImageId is an AMI id, not an SSM parameter",
    "iam:PassRole": "the instances get no IAM role (no instance profile)",
    "ec2:Get*": "the groups' provider lists every EC2 Get* for features the template does not use "
    "(instance requirements); the role reads nothing that way, and GetPasswordData must never be granted",
    "ec2:DescribeIpamPools": "no IPAM pools",
    "ec2:DescribeVpcEncryptionControls": "no VPC encryption control",
    "ec2:DescribeVpnGateways": "the VPC attaches an internet gateway, not a VPN gateway",
    "elasticloadbalancing:DescribeCapacityReservation": "no capacity reservation",
    "elasticloadbalancing:SetRulePriorities": "rule priorities are fixed in the template (a template that "
    "reorders rules fails, and rolls back)",
    "cloudwatch:PutMetricAlarm": "the groups' provider lists it for alarms of step and simple policies; the "
    "stack's target tracking policies get theirs from Auto Scaling, made with its own service-linked role "
    "(AutoScalingServiceRolePolicy)",
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


def test_the_service_role_covers_what_cloudformation_needs_for_every_variant_of_the_stack() -> None:
    """Every permission the resource providers list for the template's resource types is in the role's
    policy (a wildcard the providers ask for, like ``ec2:Describe*``, by the reads the role names),
    except those excluded above with a reason; and the role has nothing no provider asks for."""
    needed: dict[str, set[str]] = {}
    granted: set[str] = set()
    for extra in (
        [],
        ["deploy.vpc_id=vpc-11111111", "deploy.subnet_ids=['subnet-11111111','subnet-22222222']"],
        ['image.target="ling"'],
        ['deploy.scale_on="requests"'],
    ):
        s = settings(*extra)
        granted |= {a.lower() for a in iam.actions(service_role.policy(s))}
        for permission, kinds in provider_permissions(json.loads(stack.render(stack.params_for(s)))).items():
            needed.setdefault(permission, set()).update(kinds)
    excluded = {p for p in needed if any(fnmatchcase(p, pattern) for pattern in NOT_USED)}
    missing = sorted(
        p
        for p in needed
        if p not in excluded
        and p.lower() not in granted
        and not ("*" in p and any(fnmatchcase(g, p.lower()) for g in granted))
    )
    assert missing == []
    asked = [p.lower() for p in needed]
    extra = sorted(g for g in granted if not any(fnmatchcase(g, a) for a in asked))
    assert extra == []
    # every exclusion still names something the providers list (so stale ones get noticed)
    assert all(any(fnmatchcase(p, pattern) for p in needed) for pattern in NOT_USED)


def test_the_bootstrap_template_makes_the_role_with_that_policy_for_cloudformation_only(
    tmp_path: Path,
) -> None:
    s = settings()
    t = json.loads(service_role.template(s))
    (role,) = t["Resources"].values()
    assert role["Type"] == "AWS::IAM::Role"
    props = role["Properties"]
    assert props["RoleName"] == f"{STACK}-cloudformation"
    assert props["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": ["sts:AssumeRole"],
            "Effect": "Allow",
            "Principal": {"Service": ["cloudformation.amazonaws.com"]},
        }
    ]

    # the ARNs name the account and region it is deployed in; there, it is the role's policy
    def deployed_in(value: Any, region: str) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
            return value["Fn::Sub"].replace("${AWS::Region}", region).replace("${AWS::AccountId}", ACCOUNT)
        if isinstance(value, list):
            return [deployed_in(v, region) for v in value]
        if isinstance(value, dict):
            return {k: deployed_in(v, region) for k, v in value.items()}
        return value

    document = props["Policies"][0]["PolicyDocument"]
    assert deployed_in(document, REGION) == json.loads(service_role.policy(s, ACCOUNT).to_json())
    elsewhere = config.load(REPO, env="dev", overrides=[*OVERRIDES, 'aws.region="eu-west-1"'])
    assert deployed_in(document, "eu-west-1") == json.loads(service_role.policy(elsewhere, ACCOUNT).to_json())
    elsewhere_root = tmp_path / "long"  # an app of a 60-character name, not checked out here
    elsewhere_root.mkdir()
    (elsewhere_root / "pipeline.toml").write_text(f'[app]\nname = "{"x" * 60}"\n[env.dev]\n')
    long = config.load(elsewhere_root, env="dev")
    assert len(service_role.role_name(long)) <= 64


# -- the pipeline under the policy ----------------------------------------------------------------------


def for_moto(doc: dict[str, Any]) -> dict[str, Any]:
    """The policy as moto can enforce it: actions only. moto passes every EC2, CloudFormation, ELBv2,
    Auto Scaling and CloudWatch request as resource ``*`` and cannot evaluate conditions (it treats an
    unmet one as a deny); it names CloudWatch actions after the signing name ``monitoring``. Resources
    and conditions are checked by test_iam_conditions.py and, for the calls recorded here, below."""
    out = copy.deepcopy(doc)
    for st in out["Statement"]:
        st["Resource"] = ["*"]
        st.pop("Condition", None)
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


def with_role(admin: Any, s: Settings) -> None:
    """The service role, made as an administrator makes it (the bootstrap template), before the
    pipeline runs with its own credentials."""
    from pipeline.aws import bootstrap, cfn

    clock = FakeClock()
    bootstrap.ensure_role(s, admin, cfn.Waiter(clock.sleep, clock.clock), create=True)


@pytest.fixture
def cycle(aws_in_process: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """AMIs for two builds, registered with the test's own (unrestricted) credentials; the role."""
    s = settings()
    TargetHealth(monkeypatch)
    admin = make_clients()
    with_role(admin, s)
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
    """The whole cycle under moto's IAM enforcement; then every stack call recorded, with the stack it
    names and the role it passes, against the real policy; and every action recorded is one of the
    calls test_iam_conditions.py evaluates with its conditions."""
    from test_iam_conditions import PIPELINE_CALLS

    TargetHealth(monkeypatch)
    with_role(make_clients(), settings())
    session = iam_user(for_moto(document()))
    rec = Recorder()
    with enforce(monkeypatch):
        run_cycle(two_releases, session, rec)
    doc = document(account=ACCOUNT)
    denied = []
    for call in rec.calls:
        if (
            call.service != "cloudformation"
            or "StackName" not in call.params
            or call.operation == "DescribeStacks"
        ):
            continue
        name = call.params["StackName"]
        arn = (
            name if name.startswith("arn:") else f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{name}/id"
        )
        context = {"cloudformation:RoleArn": call.params["RoleARN"]} if "RoleARN" in call.params else {}
        if decide(doc, Request(call.action, arn, context)) != "allowed":
            denied.append((call.action, arn, context))
    assert denied == []
    evaluated = {r.action for _what, r in PIPELINE_CALLS}
    recorded = {c.action.replace("monitoring:", "cloudwatch:") for c in rec.calls}
    recorded -= {"sts:GetCallerIdentity"}  # always allowed: no policy can deny it
    assert recorded - evaluated == set()
    assert {
        "ebs:StartSnapshot",
        "ec2:RegisterImage",
        "cloudformation:UpdateStack",
        "ec2:DeregisterImage",
    } <= recorded


@pytest.mark.parametrize(
    ("removed", "fails_at"),
    [
        ("cloudformation:UpdateStack", "AWS denied UpdateStack"),
        ("elasticloadbalancing:DescribeTargetHealth", "AWS denied DescribeTargetHealth"),
        ("iam:GetRole", "AWS denied GetRole"),
    ],
)
def test_without_a_key_action_the_pipeline_stops_with_a_clear_line(
    cycle: dict[str, Any], removed: str, fails_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = for_moto(document())
    for st in doc["Statement"]:
        st["Action"] = [a for a in st["Action"] if a != removed]
    doc["Statement"] = [st for st in doc["Statement"] if st["Action"]]
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


def test_the_policies_fit_what_iam_holds() -> None:
    """IAM quotas (IAM and STS quotas, "IAM object quotas"; whitespace does not count): a managed policy
    holds 6,144 characters, the inline policies of a role 10,240."""
    big = settings(
        'ami.share_with=["111122223333","444455556666"]',
        'ami.regions=["us-west-2","eu-west-1","ap-southeast-2"]',
        'ami.kms_key_id="arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-aaaa-bbbb-cccc-000000000001"',
    )
    for s in (settings(), big):
        assert len(json.dumps(document(s, ACCOUNT), separators=(",", ":"))) <= 6144
        role = json.loads(service_role.policy(s, ACCOUNT).to_json())
        assert len(json.dumps(role, separators=(",", ":"))) <= 10240
