"""The test's IAM evaluator against the documented rules it follows (tests/iam_eval.py)."""

from __future__ import annotations

from typing import Any

from iam_eval import Request, decide


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(
    condition: dict[str, Any] | None = None, action: str = "ec2:CreateTags", resource: str = "*"
) -> dict[str, Any]:
    st: dict[str, Any] = {"Effect": "Allow", "Action": [action], "Resource": [resource]}
    if condition:
        st["Condition"] = condition
    return st


def test_an_explicit_deny_wins_and_nothing_is_allowed_by_default() -> None:
    r = Request("ec2:CreateTags", "arn:aws:ec2:us-east-1::snapshot/snap-1")
    assert decide(policy(), r) == "denied"
    assert decide(policy(allow()), r) == "allowed"
    assert decide(policy(allow(), {**allow(), "Effect": "Deny"}), r) == "explicitly denied"


def test_actions_match_case_insensitively_with_wildcards_and_resources_case_sensitively() -> None:
    assert decide(policy(allow(action="EC2:create*")), Request("ec2:CreateTags", "x")) == "allowed"
    assert decide(policy(allow(action="ec2:Get*")), Request("ec2:GetPasswordData", "x")) == "allowed"
    snap = "arn:aws:ec2:us-east-1::snapshot/*"
    assert (
        decide(policy(allow(resource=snap)), Request("ec2:CreateTags", "arn:aws:ec2:us-east-1::snapshot/s"))
        == "allowed"
    )
    assert (
        decide(policy(allow(resource=snap)), Request("ec2:CreateTags", "arn:aws:ec2:us-east-1::Snapshot/s"))
        == "denied"
    )
    assert (
        decide(policy(allow(resource=snap)), Request("ec2:CreateTags", "arn:aws:ec2:us-west-2::snapshot/s"))
        == "denied"
    )


def test_a_missing_key_fails_a_condition_except_a_negated_one() -> None:
    eq = allow({"StringEquals": {"aws:ResourceTag/ManagedBy": "p"}})
    ne = allow({"StringNotEquals": {"aws:ResourceTag/ManagedBy": "p"}})
    r = Request("ec2:CreateTags", "x")
    assert (decide(policy(eq), r), decide(policy(ne), r)) == ("denied", "allowed")
    tagged = Request("ec2:CreateTags", "x", {"aws:resourcetag/managedby": "p"})  # key names: any case
    assert (decide(policy(eq), tagged), decide(policy(ne), tagged)) == ("allowed", "denied")
    assert decide(policy(allow({"StringEqualsIfExists": {"aws:ResourceTag/ManagedBy": "q"}})), r) == "allowed"


def test_several_values_are_alternatives_and_several_keys_must_all_hold() -> None:
    st = allow(
        {"StringEquals": {"ec2:CreateAction": ["RegisterImage", "CopyImage"], "aws:RequestTag/A": "1"}}
    )
    assert (
        decide(policy(st), Request("a", "x", {"ec2:CreateAction": "CopyImage", "aws:RequestTag/A": "1"}))
        == "denied"
    )
    st["Action"] = ["a"]
    assert (
        decide(policy(st), Request("a", "x", {"ec2:CreateAction": "CopyImage", "aws:RequestTag/A": "1"}))
        == "allowed"
    )
    assert (
        decide(policy(st), Request("a", "x", {"ec2:CreateAction": "CopyImage", "aws:RequestTag/A": "2"}))
        == "denied"
    )
    assert decide(policy(st), Request("a", "x", {"aws:RequestTag/A": "1"})) == "denied"


def test_for_all_values_holds_for_a_missing_key_and_for_any_value_does_not() -> None:
    no_managed_by = allow({"ForAllValues:StringNotEquals": {"aws:TagKeys": ["ManagedBy"]}})
    assert decide(policy(no_managed_by), Request("ec2:CreateTags", "x")) == "allowed"
    assert (
        decide(policy(no_managed_by), Request("ec2:CreateTags", "x", {"aws:TagKeys": ["Upload"]}))
        == "allowed"
    )
    assert (
        decide(
            policy(no_managed_by), Request("ec2:CreateTags", "x", {"aws:TagKeys": ["Upload", "ManagedBy"]})
        )
        == "denied"
    )
    only = allow({"ForAllValues:StringEquals": {"ec2:Add/userId": ["111122223333"]}})
    assert (
        decide(policy(only), Request("ec2:CreateTags", "x", {"ec2:Add/userId": ["111122223333", "4"]}))
        == "denied"
    )


def test_called_via_names_the_services_a_request_went_through() -> None:
    """An aws:CalledVia condition (ForAnyValue: the request went through CloudFormation at some hop)."""
    via = allow({"ForAnyValue:StringEquals": {"aws:CalledVia": ["cloudformation.amazonaws.com"]}})
    direct = Request("ec2:CreateTags", "x")
    through = Request("ec2:CreateTags", "x", {"aws:CalledVia": ["cloudformation.amazonaws.com"]})
    assert (decide(policy(via), direct), decide(policy(via), through)) == ("denied", "allowed")


def test_null_tests_whether_a_key_is_there() -> None:
    no_group = allow({"Null": {"ec2:Add/group": "true"}})
    assert decide(policy(no_group), Request("ec2:CreateTags", "x")) == "allowed"
    assert decide(policy(no_group), Request("ec2:CreateTags", "x", {"ec2:Add/group": ["all"]})) == "denied"


def test_arn_conditions_match_with_wildcards() -> None:
    st = allow({"ArnEquals": {"cloudformation:RoleArn": "arn:aws:iam::*:role/r"}})
    assert (
        decide(
            policy(st), Request("ec2:CreateTags", "x", {"cloudformation:RoleArn": "arn:aws:iam::1:role/r"})
        )
        == "allowed"
    )
    assert (
        decide(
            policy(st), Request("ec2:CreateTags", "x", {"cloudformation:RoleArn": "arn:aws:iam::1:role/rr"})
        )
        == "denied"
    )
