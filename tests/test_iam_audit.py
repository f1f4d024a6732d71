"""parliament and cloudsplaining (PyPI) on the IAM policies of every environment: the pipeline's own and
its CloudFormation service role's. Every finding must be accepted, with its reason, in
pipeline/aws/iam_findings.toml, and every entry there must still be needed."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import config
from pipeline.aws import iam, service_role, stack

REPO = Path(__file__).resolve().parent.parent
ALLOW_LIST = REPO / "pipeline" / "aws" / "iam_findings.toml"
ACCOUNT = "123456789012"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/0f1e2d3c-aaaa-bbbb-cccc-000000000001"
# Besides each environment of pipeline.toml as it is: the settings that add statements.
VARIANTS = {
    "shared, copied, encrypted": [
        'ami.share_with=["111122223333"]',
        'ami.regions=["us-west-2"]',
        f'ami.kms_key_id="{KEY}"',
    ],
    "existing VPC, ling on PV": [
        "deploy.vpc_id=vpc-11111111",
        "deploy.subnet_ids=['subnet-11111111','subnet-22222222']",
        'image.target="ling"',
        'deploy.instance_type="m3.medium"',
    ],
}
RISKY = (
    "PrivilegeEscalation",
    "ResourceExposure",
    "DataExfiltration",
    "CredentialsExposure",
    "ServiceWildcard",
)


@dataclass(frozen=True)
class Finding:
    tool: str
    policy: str
    issue: str
    details: str


def policies() -> dict[str, dict[str, dict[str, Any]]]:
    """label -> {"pipeline": policy, "service-role": policy}, for every environment and variant."""
    out = {}
    cases = [(env, []) for env in stack.environments(REPO)] + [("dev", v) for v in VARIANTS.values()]
    for (env, overrides), label in zip(cases, [*stack.environments(REPO), *VARIANTS], strict=True):
        s = config.load(REPO, env=env, overrides=overrides)
        out[label] = {
            "pipeline": json.loads(iam.to_json(iam.policy(s, ACCOUNT))),
            "service-role": json.loads(iam.to_json(service_role.policy(s, ACCOUNT))),
        }
    return out


def findings(name: str, document: dict[str, Any]) -> list[Finding]:
    from cloudsplaining.command.scan_policy_file import scan_policy
    from parliament import analyze_policy_string

    out = []
    for f in analyze_policy_string(json.dumps(document), include_community_auditors=True).findings:
        where = {k: v for k, v in (f.location or {}).items() if k not in ("line", "column", "filepath")}
        out.append(Finding("parliament", name, f.issue, json.dumps([f.detail, where], sort_keys=True)))
    # every statement, with conditions and ARNs or not: what is left after them is what we accept
    scanned = scan_policy(document, {}, flag_conditional_statements=True, flag_resource_arn_statements=True)
    for category in RISKY:
        for item in scanned[category]["findings"]:
            out.append(Finding("cloudsplaining", name, category, json.dumps(item, sort_keys=True)))
    # and as cloudsplaining reports by default: statements without conditions or resource ARNs
    plain = scan_policy(document, {})
    for category, result in plain.items():
        for item in result.get("findings", []) if isinstance(result, dict) else []:
            out.append(Finding("cloudsplaining", name, f"{category} (unconstrained)", json.dumps(item)))
    return out


def accepted() -> list[dict[str, str]]:
    entries: list[dict[str, str]] = tomllib.loads(ALLOW_LIST.read_text())["accepted"]
    return entries


def accepting(f: Finding, entries: list[dict[str, str]]) -> list[int]:
    return [
        i
        for i, e in enumerate(entries)
        if (e["tool"], e["policy"], e["issue"]) == (f.tool, f.policy, f.issue) and e["match"] in f.details
    ]


@pytest.fixture(scope="module")
def audited() -> list[tuple[str, Finding]]:
    return [
        (label, f)
        for label, docs in policies().items()
        for name, doc in docs.items()
        for f in findings(name, doc)
    ]


def test_every_finding_on_every_environments_policies_is_accepted_with_a_reason(
    audited: list[tuple[str, Finding]],
) -> None:
    entries = accepted()
    assert all(len(e["reason"].split()) >= 8 for e in entries)  # a reason, not a word
    unexplained = [(label, f) for label, f in audited if not accepting(f, entries)]
    assert unexplained == []


def test_every_accepted_finding_is_still_found(audited: list[tuple[str, Finding]]) -> None:
    entries = accepted()
    used = {i for _label, f in audited for i in accepting(f, entries)}
    assert [e["match"] for i, e in enumerate(entries) if i not in used] == []


def test_nothing_is_unconstrained_and_nothing_returns_credentials(audited: list[tuple[str, Finding]]) -> None:
    """What the issue's own cloudsplaining run reported is gone: no statement without a condition or
    a resource ARN is risky, and nothing returns credentials (GetPasswordData) or reads data."""
    assert [f for _l, f in audited if f.issue.endswith("(unconstrained)")] == []
    assert [
        f for _l, f in audited if f.issue in ("CredentialsExposure", "DataExfiltration", "ServiceWildcard")
    ] == []


def test_the_audit_fails_on_what_the_earlier_policy_allowed() -> None:
    """The statements an earlier version of the policy had are reported, and no entry accepts them."""
    earlier = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:Get*", "ec2:Describe*"], "Resource": ["*"]},
            {
                "Effect": "Allow",
                "Action": ["ec2:CreateTags", "ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"],
                "Resource": ["*"],
            },
        ],
    }
    found = findings("pipeline", earlier)
    issues = {f.issue for f in found}
    assert {"CredentialsExposure", "ResourceExposure (unconstrained)"} <= issues
    assert any("ec2:GetPasswordData" in f.details for f in found)
    assert all(not accepting(f, accepted()) for f in found if f.issue.endswith("(unconstrained)"))
