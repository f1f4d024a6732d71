"""CloudFormation calls: waiting with events (states moto never shows, through botocore's Stubber),
plans from change sets, and the classification of stack states and messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from awstest import FakeClock
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from pipeline.aws import calls, cfn
from pipeline.errors import AwsError, DeployError

STACK = "erlang-web-dev"
STACK_ID = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{STACK}/6a1b2c3d-0000-4000-8000-000000000001"
DIDNT_CONTAIN = (
    "The submitted information didn't contain changes. Submit different information to create a change set."
)
T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def client() -> Any:
    return boto3.client(
        "cloudformation",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def stack(status: str, reason: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {
        "StackId": STACK_ID,
        "StackName": STACK,
        "CreationTime": T0,
        "StackStatus": status,
        "Parameters": [{"ParameterKey": "BlueWeight", "ParameterValue": "100"}],
        "Outputs": [{"OutputKey": "Url", "OutputValue": "http://lb.example"}],
    }
    if reason:
        s["StackStatusReason"] = reason
    return s


def event(
    n: int, logical: str, status: str, reason: str = "", kind: str = "AWS::AutoScaling::AutoScalingGroup"
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "StackId": STACK_ID,
        "EventId": f"event-{n}",
        "StackName": STACK,
        "LogicalResourceId": logical,
        "ResourceType": kind,
        "Timestamp": T0 + timedelta(seconds=n),
        "ResourceStatus": status,
    }
    if reason:
        e["ResourceStatusReason"] = reason
    return e


# -- waiting ---------------------------------------------------------------------------------------


def test_wait_polls_until_the_update_completes_and_streams_new_events_oldest_first() -> None:
    cf = client()
    clock = FakeClock()
    lines: list[str] = []
    with Stubber(cf) as stub:
        old = event(1, STACK, "CREATE_COMPLETE", kind="AWS::CloudFormation::Stack")
        stub.add_response("describe_stack_events", {"StackEvents": [old]}, {"StackName": STACK_ID})
        events = cfn.EventStream(cf, STACK_ID, lines.append).open()
        e2 = event(2, STACK, "UPDATE_IN_PROGRESS", "User Initiated", kind="AWS::CloudFormation::Stack")
        e3 = event(3, "GreenServerGroup", "UPDATE_IN_PROGRESS")
        e4 = event(4, "GreenServerGroup", "UPDATE_COMPLETE")
        e5 = event(5, STACK, "UPDATE_COMPLETE", kind="AWS::CloudFormation::Stack")
        for status, newest in (
            ("UPDATE_IN_PROGRESS", [e2]),
            ("UPDATE_IN_PROGRESS", [e3, e2]),
            ("UPDATE_COMPLETE", [e5, e4, e3]),
        ):
            stub.add_response("describe_stacks", {"Stacks": [stack(status)]}, {"StackName": STACK_ID})
            stub.add_response(
                "describe_stack_events", {"StackEvents": [*newest, old]}, {"StackName": STACK_ID}
            )
        result = cfn.wait(cf, STACK_ID, events, cfn.Waiter(clock.sleep, clock.clock), "update")
        stub.assert_no_pending_responses()
    assert (result.status, result.outputs) == ("UPDATE_COMPLETE", {"Url": "http://lb.example"})
    assert lines == [
        "12:00:02 erlang-web-dev UPDATE_IN_PROGRESS: User Initiated",
        "12:00:03 GreenServerGroup UPDATE_IN_PROGRESS",
        "12:00:04 GreenServerGroup UPDATE_COMPLETE",
        "12:00:05 erlang-web-dev UPDATE_COMPLETE",
    ]
    assert clock.slept == [cfn.POLL_SECONDS, cfn.POLL_SECONDS]


def test_events_are_read_across_pages_until_one_already_seen() -> None:
    cf = client()
    lines: list[str] = []
    with Stubber(cf) as stub:
        stub.add_response(
            "describe_stack_events",
            {"StackEvents": [event(1, STACK, "CREATE_COMPLETE")]},
            {"StackName": STACK_ID},
        )
        events = cfn.EventStream(cf, STACK_ID, lines.append).open()
        stub.add_response(
            "describe_stack_events",
            {
                "StackEvents": [event(4, "A", "UPDATE_COMPLETE"), event(3, "B", "UPDATE_COMPLETE")],
                "NextToken": "t",
            },
            {"StackName": STACK_ID},
        )
        stub.add_response(
            "describe_stack_events",
            {"StackEvents": [event(2, "C", "UPDATE_IN_PROGRESS"), event(1, STACK, "CREATE_COMPLETE")]},
            {"StackName": STACK_ID, "NextToken": "t"},
        )
        fresh = events.pump()
    assert [e["EventId"] for e in fresh] == ["event-2", "event-3", "event-4"]
    assert [line.split()[1] for line in lines] == ["C", "B", "A"]


def test_a_failed_update_raises_with_the_first_failing_resource_and_its_reason() -> None:
    cf = client()
    clock = FakeClock()
    lines: list[str] = []
    with Stubber(cf) as stub:
        stub.add_response("describe_stack_events", {"StackEvents": []}, {"StackName": STACK_ID})
        events = cfn.EventStream(cf, STACK_ID, lines.append).open()
        stub.add_response(
            "describe_stacks", {"Stacks": [stack("UPDATE_ROLLBACK_COMPLETE")]}, {"StackName": STACK_ID}
        )
        stub.add_response(
            "describe_stack_events",
            {
                "StackEvents": [
                    event(4, STACK, "UPDATE_ROLLBACK_COMPLETE", kind="AWS::CloudFormation::Stack"),
                    event(3, "GreenLaunchTemplate", "UPDATE_FAILED", "Resource update cancelled"),
                    event(2, "GreenServerGroup", "UPDATE_FAILED", "Group did not stabilize."),
                ]
            },
            {"StackName": STACK_ID},
        )
        with pytest.raises(cfn.StackFailed) as err:
            cfn.wait(cf, STACK_ID, events, cfn.Waiter(clock.sleep, clock.clock), "update (shift 10%)")
    assert str(err.value) == (
        "stack erlang-web-dev: update (shift 10%) ended in UPDATE_ROLLBACK_COMPLETE: "
        "GreenServerGroup UPDATE_FAILED: Group did not stabilize."
    )
    assert "12:00:02 GreenServerGroup UPDATE_FAILED: Group did not stabilize." in lines


def test_a_stack_that_stays_in_progress_times_out_with_one_deadline() -> None:
    cf = client()
    clock = FakeClock()
    polls = int(cfn.STACK_TIMEOUT / cfn.POLL_SECONDS) + 1
    with Stubber(cf) as stub:
        stub.add_response("describe_stack_events", {"StackEvents": []}, {"StackName": STACK_ID})
        events = cfn.EventStream(cf, STACK_ID, lambda _line: None).open()
        for _ in range(polls):
            stub.add_response(
                "describe_stacks", {"Stacks": [stack("UPDATE_IN_PROGRESS")]}, {"StackName": STACK_ID}
            )
            stub.add_response("describe_stack_events", {"StackEvents": []}, {"StackName": STACK_ID})
        with pytest.raises(
            DeployError,
            match=r"update still UPDATE_IN_PROGRESS after 3600s \(hint: CloudFormation keeps going",
        ):
            cfn.wait(cf, STACK_ID, events, cfn.Waiter(clock.sleep, clock.clock), "update")
    assert sum(clock.slept) == pytest.approx(cfn.STACK_TIMEOUT)


def test_a_failed_create_reports_the_stack_reason_when_no_resource_failed() -> None:
    assert cfn.failure_message(
        STACK, "create", "ROLLBACK_COMPLETE", "The following resource(s) failed", []
    ) == ("stack erlang-web-dev: create ended in ROLLBACK_COMPLETE: The following resource(s) failed")


# -- plans -----------------------------------------------------------------------------------------


PARAMS = [
    {"ParameterKey": "BlueWeight", "ParameterValue": "90"},
    {"ParameterKey": "GreenWeight", "ParameterValue": "10"},
]


def test_a_plan_is_an_update_change_set_that_is_read_and_deleted() -> None:
    cf = client()
    clock = FakeClock()
    name = "plan-2222222222bb"
    with Stubber(cf) as stub:
        stub.add_response("list_change_sets", {"Summaries": []}, {"StackName": STACK})
        stub.add_response(
            "create_change_set",
            {"Id": "arn:cs", "StackId": STACK_ID},
            {
                "StackName": STACK,
                "ChangeSetName": name,
                "ChangeSetType": "UPDATE",
                "TemplateBody": "{}",
                "Parameters": PARAMS,
                "Description": ANY,
                "ClientToken": ANY,
            },
        )
        stub.add_response(
            "describe_change_set",
            {"Status": "CREATE_IN_PROGRESS", "ExecutionStatus": "UNAVAILABLE", "Changes": []},
            {"StackName": STACK, "ChangeSetName": name},
        )
        modify = {
            "Type": "Resource",
            "ResourceChange": {
                "Action": "Modify",
                "LogicalResourceId": "GreenLaunchTemplate",
                "ResourceType": "AWS::EC2::LaunchTemplate",
                "Replacement": "False",
                "Scope": ["Properties"],
            },
        }
        replace = {
            "Type": "Resource",
            "ResourceChange": {
                "Action": "Modify",
                "LogicalResourceId": "LoadBalancerSecurityGroup",
                "ResourceType": "AWS::EC2::SecurityGroup",
                "Replacement": "True",
            },
        }
        add = {
            "Type": "Resource",
            "ResourceChange": {
                "Action": "Add",
                "LogicalResourceId": "NewThing",
                "ResourceType": "AWS::EC2::Subnet",
            },
        }
        stub.add_response(
            "describe_change_set",
            {
                "Status": "CREATE_COMPLETE",
                "ExecutionStatus": "AVAILABLE",
                "Changes": [modify],
                "NextToken": "p2",
            },
            {"StackName": STACK, "ChangeSetName": name},
        )
        stub.add_response(
            "describe_change_set",
            {"Status": "CREATE_COMPLETE", "ExecutionStatus": "AVAILABLE", "Changes": [replace, add]},
            {"StackName": STACK, "ChangeSetName": name, "NextToken": "p2"},
        )
        stub.add_response("delete_change_set", {}, {"StackName": STACK, "ChangeSetName": name})
        changes = cfn.plan_update(cf, STACK, name, "{}", PARAMS, cfn.Waiter(clock.sleep, clock.clock))
        stub.assert_no_pending_responses()
    assert changes == [
        cfn.Change("NewThing", "AWS::EC2::Subnet", "Add", ""),
        cfn.Change("GreenLaunchTemplate", "AWS::EC2::LaunchTemplate", "Modify", "False"),
        cfn.Change("LoadBalancerSecurityGroup", "AWS::EC2::SecurityGroup", "Modify", "True"),
    ]


@pytest.mark.parametrize(
    "reason",
    [
        DIDNT_CONTAIN,
        "The submitted information does not contain changes.",
    ],
)
def test_a_plan_with_nothing_to_change_is_none_and_the_change_set_is_still_deleted(reason: str) -> None:
    cf = client()
    clock = FakeClock()
    with Stubber(cf) as stub:
        stub.add_response("list_change_sets", {"Summaries": [{"ChangeSetName": "p"}]}, {"StackName": STACK})
        stub.add_response("delete_change_set", {}, {"StackName": STACK, "ChangeSetName": "p"})  # a leftover
        stub.add_response("create_change_set", {"Id": "arn:cs"}, None)
        stub.add_response("describe_change_set", {"Status": "FAILED", "StatusReason": reason}, None)
        stub.add_response("delete_change_set", {}, {"StackName": STACK, "ChangeSetName": "p"})
        assert cfn.plan_update(cf, STACK, "p", "{}", PARAMS, cfn.Waiter(clock.sleep, clock.clock)) is None
        stub.assert_no_pending_responses()


# -- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "no_change"),
    [
        ("No updates are to be performed.", True),
        (
            DIDNT_CONTAIN,
            True,
        ),
        ("The submitted information does not contain changes.", True),
        ("Template format error: unsupported structure.", False),
        ("Stack:arn is in UPDATE_IN_PROGRESS state and can not be updated.", False),
    ],
)
def test_every_known_wording_of_nothing_to_change(text: str, no_change: bool) -> None:
    assert cfn.is_no_change(text) is no_change


def test_update_treats_no_updates_as_unchanged_and_raises_anything_else() -> None:
    cf = client()
    with Stubber(cf) as stub:
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")
        stub.add_client_error("update_stack", "ValidationError", "Parameter 'GreenWeight' must be a number.")
        assert cfn.update(cf, STACK, "{}", PARAMS, []) is False
        with pytest.raises(ClientError):
            cfn.update(cf, STACK, "{}", PARAMS, [])


def test_describe_of_a_missing_stack_is_none() -> None:
    cf = client()
    with Stubber(cf) as stub:
        stub.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
        stub.add_client_error("describe_stacks", "Throttling", "Rate exceeded")
        stub.add_response("describe_stacks", {"Stacks": [stack("DELETE_COMPLETE")]})
        assert cfn.describe(cf, STACK) is None
        with pytest.raises(ClientError):
            cfn.describe(cf, STACK)
        assert cfn.describe(cf, STACK) is None


@pytest.mark.parametrize(
    "status", ["CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "REVIEW_IN_PROGRESS"]
)
def test_stable_states_are_ready(status: str) -> None:
    cfn.check_ready(info(status), STACK)
    cfn.check_ready(None, STACK)


@pytest.mark.parametrize(
    ("status", "says"),
    [
        ("CREATE_IN_PROGRESS", "another deploy or change is in progress"),
        ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "another deploy or change is in progress"),
        ("DELETE_IN_PROGRESS", "another deploy or change is in progress"),
        ("ROLLBACK_FAILED", "its creation failed"),
        ("CREATE_FAILED", "its creation failed"),
        ("UPDATE_ROLLBACK_FAILED", "continue-update-rollback"),
        ("DELETE_FAILED", "a resource could not be deleted"),
        ("SOMETHING_NEW", "a state the pipeline does not know"),
    ],
)
def test_busy_or_stuck_states_are_refused_with_what_to_do(status: str, says: str) -> None:
    with pytest.raises(DeployError) as err:
        cfn.check_ready(info(status), STACK)
    line = str(err.value)
    assert line.startswith(f"stack {STACK} ") and status in line and says in line
    assert "(hint: " in line and "\n" not in line


def info(status: str) -> cfn.StackInfo:
    return cfn.StackInfo(STACK_ID, STACK, status, "", {}, {})


def test_access_denied_points_at_the_policy() -> None:
    denied = ClientError(
        {
            "Error": {
                "Code": "AccessDenied",
                "Message": "User: x is not authorized to perform: cloudformation:UpdateStack",
            }
        },
        "UpdateStack",
    )
    err = calls.describe(denied, "deploy")
    assert isinstance(err, AwsError)
    assert str(err) == (
        "deploy: AWS denied UpdateStack (AccessDenied): User: x is not authorized to perform: "
        "cloudformation:UpdateStack (hint: invoke iam-policy prints the policy the pipeline needs; "
        "attach it to these credentials)"
    )
    other = ClientError({"Error": {"Code": "Throttling", "Message": "Rate\nexceeded"}}, "DescribeStacks")
    assert (
        str(calls.describe(other, "status"))
        == "status: AWS DescribeStacks failed (Throttling): Rate exceeded"
    )
    expired = ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "DescribeImages")
    assert str(calls.describe(expired)) == (
        "AWS DescribeImages failed (ExpiredToken): expired "
        "(hint: the session has expired; log in again (aws sso login, or new credentials))"
    )
