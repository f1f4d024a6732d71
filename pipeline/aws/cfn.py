"""CloudFormation calls of the deploy stage: read a stack, plan a change, apply it, wait for it.

Every change is ``CreateStack``/``UpdateStack`` with the whole template and every parameter given
explicitly (never ``UsePreviousValue``). A plan is a change set of type UPDATE that is described and
then deleted: CloudFormation's own account of what an update would add, modify or replace.

(Change sets are used for planning only, not executed: moto, which stands in for AWS offline, does not
refresh a stack's outputs after executing one, so the pipeline would read stale target group and
group names. ``UpdateStack`` with the same template and parameters makes the same change.)

Waiting is a poll with injected ``sleep``/``clock`` and one overall deadline; the stack's events are
printed as they arrive, and a failed operation raises :class:`StackFailed` naming the first resource
that failed and why.

**Retries.** Every changing call carries an idempotency token (``ClientRequestToken``; CreateChangeSet's
``ClientToken``), new for each operation and the same for the SDK's retries of it: when a request was
applied but its answer lost, the retry is recognised as the same operation instead of failing
(CreateStack: AlreadyExistsException; UpdateStack: "is in UPDATE_IN_PROGRESS state and can not be
updated"). A token is never derived from the parameters alone: returning to an earlier parameter set
(a rollback) is a new operation that must run.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from pipeline.aws.calls import error_code
from pipeline.aws.wait import poll
from pipeline.errors import DeployError, PipelineError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient

log = logging.getLogger(__name__)
T = TypeVar("T")

# DescribeStacks is rate limited (aws-cli polls every 30 s while executing); 10 s keeps the event
# stream lively without coming near the limit.
POLL_SECONDS = 10.0
# One stack operation may take this long: creating a load balancer takes minutes, and an update waits
# for new instances to launch and register.
STACK_TIMEOUT = 3600.0
CHANGE_SET_TIMEOUT = 600.0

SUCCEEDED = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_COMPLETE"}
# States a stack can be changed from (UPDATE_ROLLBACK_COMPLETE: a failed update was undone cleanly).
GOOD = {
    "CREATE_COMPLETE",
    "UPDATE_COMPLETE",
    "UPDATE_ROLLBACK_COMPLETE",
    "IMPORT_COMPLETE",
    "IMPORT_ROLLBACK_COMPLETE",
}


class StackFailed(DeployError):
    """A stack operation ended in a failed or rolled-back state."""


@dataclass(frozen=True)
class StackInfo:
    stack_id: str
    name: str
    status: str
    reason: str
    parameters: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class Change:
    """One row of a plan: a resource and what the change does to it."""

    resource: str
    resource_type: str
    action: str  # Add | Modify | Remove | Import | Dynamic
    replacement: str  # True | False | Conditional | "" (not applicable)


# -- error classification (the only place that reads CloudFormation message texts) -----------------------


def is_missing(err: ClientError) -> bool:
    """``DescribeStacks`` of a stack that does not exist: ValidationError "Stack with id X does not exist"."""
    message = err.response.get("Error", {}).get("Message", "")
    return error_code(err) == "ValidationError" and "does not exist" in message


NO_CHANGE_TEXTS = (
    "No updates are to be performed",  # UpdateStack
    "didn't contain changes",  # a change set's StatusReason
    "does not contain changes",  # an older wording of the same
)


def is_no_change(text: str) -> bool:
    """Whether a CloudFormation message says that the request changes nothing."""
    return any(t in text for t in NO_CHANGE_TEXTS)


# -- reading -----------------------------------------------------------------------------------------------


def describe(cf: CloudFormationClient, stack: str) -> StackInfo | None:
    """The stack by name or id, or None when there is none (deleted stacks count as none)."""
    try:
        resp = cf.describe_stacks(StackName=stack)
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    s = resp["Stacks"][0]
    if s["StackStatus"] == "DELETE_COMPLETE":
        return None
    return _info(s)


def _info(s: Mapping[str, Any]) -> StackInfo:
    return StackInfo(
        stack_id=s["StackId"],
        name=s["StackName"],
        status=s["StackStatus"],
        reason=s.get("StackStatusReason", ""),
        parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in s.get("Parameters", [])},
        outputs={o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])},
    )


def check_ready(info: StackInfo | None, stack: str) -> None:
    """Refuse to change a stack that is busy or stuck, saying what to do instead."""
    if info is None or info.status in GOOD or info.status == "REVIEW_IN_PROGRESS":
        return
    status = info.status
    if status.endswith("_IN_PROGRESS"):
        raise DeployError(
            f"stack {stack} is {status}: another deploy or change is in progress",
            hint="wait until it finishes (invoke status shows it), then run this again",
        )
    if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED"):
        raise DeployError(
            f"stack {stack} is {status}: its creation failed and it cannot be updated",
            hint="remove it with invoke destroy, then deploy again",
        )
    if status in ("UPDATE_ROLLBACK_FAILED", "UPDATE_FAILED"):
        raise DeployError(
            f"stack {stack} is {status}: CloudFormation could not roll back an update",
            hint=f"fix the resource its events name, run aws cloudformation continue-update-rollback "
            f"--stack-name {stack}, then deploy again",
        )
    if status == "DELETE_FAILED":
        raise DeployError(
            f"stack {stack} is DELETE_FAILED: a resource could not be deleted",
            hint="its events name the resource; fix it and run invoke destroy again",
        )
    raise DeployError(
        f"stack {stack} is in a state the pipeline does not know: {status}",
        hint="stopping without changes; inspect the stack in the CloudFormation console",
    )


# -- events ------------------------------------------------------------------------------------------------


@dataclass
class EventStream:
    """The stack's events that arrive after it was opened, oldest first."""

    cf: CloudFormationClient
    stack_id: str
    report: Callable[[str], None]
    seen: set[str] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def open(self) -> EventStream:
        """Mark the events that already exist as seen."""
        for event in self._newest_first(limit_pages=1):
            self.seen.add(event["EventId"])
        return self

    def pump(self) -> list[dict[str, Any]]:
        """Report the events that arrived since the last call; return them."""
        fresh: list[dict[str, Any]] = []
        for event in self._newest_first():
            if event["EventId"] in self.seen:
                break
            fresh.append(event)
        fresh.reverse()
        for event in fresh:
            self.seen.add(event["EventId"])
            if event["ResourceStatus"].endswith("_FAILED"):
                self.failures.append(event)
            self.report(event_line(event))
        return fresh

    def _newest_first(self, limit_pages: int | None = None) -> Any:
        kwargs: dict[str, Any] = {"StackName": self.stack_id}
        pages = 0
        while True:
            resp = self.cf.describe_stack_events(**kwargs)
            yield from resp["StackEvents"]
            pages += 1
            token = resp.get("NextToken")
            if not token or (limit_pages is not None and pages >= limit_pages):
                return
            kwargs["NextToken"] = token


def event_line(event: Mapping[str, Any]) -> str:
    when = event.get("Timestamp")
    stamp = when.strftime("%H:%M:%S") if isinstance(when, datetime) else ""
    reason = event.get("ResourceStatusReason") or ""
    line = f"{stamp} {event['LogicalResourceId']} {event['ResourceStatus']}"
    return f"{line}: {reason}" if reason else line


def request_token(operation: str) -> str:
    """A new idempotency token for one stack operation (``update-5f0c...``): CloudFormation's pattern
    ``[a-zA-Z0-9][-a-zA-Z0-9]*``, at most 128 characters; it shows in the stack's events."""
    return f"{operation}-{secrets.token_hex(16)}"


# -- changing ----------------------------------------------------------------------------------------------


@dataclass
class Waiter:
    """How stack operations are waited for: a fixed poll rate on the injected clock."""

    sleep: Callable[[float], None]
    clock: Callable[[], float]
    poll: float = POLL_SECONDS

    def until(
        self,
        check: Callable[[], T | None],
        what: str,
        timeout: float,
        expired: Callable[[], PipelineError],
        every: float | None = None,
    ) -> T:
        rate = every or self.poll
        return poll(
            check,
            what=what,
            timeout=timeout,
            sleep=self.sleep,
            clock=self.clock,
            first=rate,
            most=rate,
            expired=expired,
        )


def create(
    cf: CloudFormationClient,
    stack: str,
    template: str,
    parameters: Sequence[Mapping[str, str]],
    tags: Sequence[Mapping[str, Any]],
    role_arn: str = "",
) -> str:
    """Start creating the stack (CloudFormation acting with ``role_arn``); return its id."""
    resp = cf.create_stack(
        StackName=stack,
        TemplateBody=template,
        Parameters=[dict(p) for p in parameters],  # type: ignore[misc]
        Tags=[dict(t) for t in tags],  # type: ignore[misc]
        OnFailure="ROLLBACK",
        **_role(role_arn),
        ClientRequestToken=request_token("create"),
    )
    return resp["StackId"]


def _role(role_arn: str) -> dict[str, Any]:
    """The service role CloudFormation acts with (its permissions, not the caller's, build the stack)."""
    return {"RoleARN": role_arn} if role_arn else {}


def update(
    cf: CloudFormationClient,
    stack: str,
    template: str,
    parameters: Sequence[Mapping[str, str]],
    tags: Sequence[Mapping[str, Any]],
    role_arn: str = "",
) -> bool:
    """Start updating the stack; False when CloudFormation says there is nothing to change."""
    try:
        cf.update_stack(
            StackName=stack,
            TemplateBody=template,
            Parameters=[dict(p) for p in parameters],  # type: ignore[misc]
            Tags=[dict(t) for t in tags],  # type: ignore[misc]
            **_role(role_arn),
            ClientRequestToken=request_token("update"),
        )
    except ClientError as err:
        if error_code(err) == "ValidationError" and is_no_change(err.response["Error"].get("Message", "")):
            return False
        raise
    return True


def wait(
    cf: CloudFormationClient, stack_id: str, events: EventStream, waiter: Waiter, doing: str
) -> StackInfo:
    """Poll until the stack leaves its ``*_IN_PROGRESS`` state; return the stack as it ended.

    Raises :class:`StackFailed` (after printing the failing resources' events) unless it ends in a
    good state or is deleted, and :class:`DeployError` when :data:`STACK_TIMEOUT` passes first.
    """
    seen: dict[str, Any] = {"StackName": stack_id, "StackStatus": "unknown"}

    def ended() -> dict[str, Any] | None:
        stack: dict[str, Any] = dict(cf.describe_stacks(StackName=stack_id)["Stacks"][0])
        events.pump()
        seen.update(stack)
        return None if str(stack["StackStatus"]).endswith("_IN_PROGRESS") else stack

    stack = waiter.until(
        ended,
        f"stack {stack_id}: {doing}",
        STACK_TIMEOUT,
        lambda: DeployError(
            f"stack {seen['StackName']}: {doing} still {seen['StackStatus']} after {STACK_TIMEOUT:g}s",
            hint="CloudFormation keeps going; invoke status shows when it ends",
        ),
    )
    status = stack["StackStatus"]
    if status in SUCCEEDED:
        return _info(stack)
    raise StackFailed(
        failure_message(
            stack["StackName"], doing, status, stack.get("StackStatusReason", ""), events.failures
        )
    )


def failure_message(
    stack: str, doing: str, status: str, reason: str, failures: Sequence[Mapping[str, Any]]
) -> str:
    """One line: the operation, where it ended and the first resource that failed with its reason."""
    first = next((e for e in failures if e["LogicalResourceId"] != stack), None)
    if first is not None:
        cause = (
            f"{first['LogicalResourceId']} {first['ResourceStatus']}: {first.get('ResourceStatusReason', '')}"
        )
    else:
        cause = reason or "no failure event was reported"
    return f"stack {stack}: {doing} ended in {status}: {cause}"


def plan_update(
    cf: CloudFormationClient,
    stack: str,
    name: str,
    template: str,
    parameters: Sequence[Mapping[str, str]],
    waiter: Waiter,
    role_arn: str = "",
) -> list[Change] | None:
    """What an update to ``parameters`` would change, from a change set of type UPDATE that is deleted
    again; None when CloudFormation finds nothing to change."""
    _delete_change_set(cf, stack, name)
    cf.create_change_set(
        StackName=stack,
        ChangeSetName=name,
        ChangeSetType="UPDATE",  # moto's default is CREATE, AWS's is UPDATE: always say it
        TemplateBody=template,
        Parameters=[dict(p) for p in parameters],  # type: ignore[misc]
        Description="plan made by the pipeline; deleted after it is read",
        **_role(role_arn),
        ClientToken=request_token("plan"),
    )
    try:

        def made() -> dict[str, Any] | None:
            desc = dict(cf.describe_change_set(StackName=stack, ChangeSetName=name))
            return None if desc["Status"] in ("CREATE_PENDING", "CREATE_IN_PROGRESS") else desc

        desc = waiter.until(
            made,
            f"stack {stack}: change set {name}",
            CHANGE_SET_TIMEOUT,
            lambda: DeployError(f"stack {stack}: change set {name} not ready after {CHANGE_SET_TIMEOUT:g}s"),
            every=min(waiter.poll, 5.0),  # a change set is usually ready within seconds
        )
        if desc["Status"] == "FAILED":
            reason = desc.get("StatusReason", "")
            if is_no_change(reason):
                return None
            raise DeployError(f"stack {stack}: change set {name} failed: {reason}")
        changes = list(desc.get("Changes", []))
        token = desc.get("NextToken")
        while token:
            more = cf.describe_change_set(StackName=stack, ChangeSetName=name, NextToken=token)
            changes.extend(more.get("Changes", []))
            token = more.get("NextToken")
        return summarise(changes)
    finally:
        cf.delete_change_set(StackName=stack, ChangeSetName=name)


def _delete_change_set(cf: CloudFormationClient, stack: str, name: str) -> None:
    """Delete the change set ``name`` if the stack has one (left by a run that was killed)."""
    kwargs: dict[str, Any] = {"StackName": stack}
    while True:
        resp = cf.list_change_sets(**kwargs)
        if any(c.get("ChangeSetName") == name for c in resp.get("Summaries", [])):
            cf.delete_change_set(StackName=stack, ChangeSetName=name)
            return
        token = resp.get("NextToken")
        if not token:
            return
        kwargs["NextToken"] = token


def summarise(changes: Sequence[Mapping[str, Any]]) -> list[Change]:
    """Rows of resource, type, action and replacement from a change set's ``Changes`` (pure)."""
    rows: list[Change] = []
    for change in changes:
        rc = change.get("ResourceChange", {})
        rows.append(
            Change(
                resource=rc.get("LogicalResourceId", "?"),
                resource_type=rc.get("ResourceType", ""),
                action=rc.get("Action", ""),
                replacement=rc.get("Replacement", "") if rc.get("Action") == "Modify" else "",
            )
        )
    return sorted(rows, key=lambda c: (c.action, c.resource))


def delete(cf: CloudFormationClient, stack_id: str, role_arn: str = "") -> None:
    cf.delete_stack(StackName=stack_id, ClientRequestToken=request_token("delete"), **_role(role_arn))
