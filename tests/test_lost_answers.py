"""Calls whose first attempt the server applied but whose answer was lost (``LostAnswers``): the SDK
retries them, and the retry must find the work done rather than fail or do it twice.

What AWS does with such a retry is documented per call, and the local AWS does the same
(``pipeline.local.aws_rules``): RegisterImage takes no token and refuses a second image of the same name
(InvalidAMIName.Duplicate; "AMI names must be unique within a Region", EC2 RegisterImage reference);
StartSnapshot and CopyImage return the first request's result for the same ClientToken (EBS
StartSnapshot and EC2 CopyImage references, "Ensuring idempotency"); CloudFormation recognises a retried
CreateStack/UpdateStack/DeleteStack by its ClientRequestToken (CloudFormation API reference) and
otherwise fails it; DeregisterImage and DeleteSnapshot of what is gone answer NotFound/Unavailable.
"""

from __future__ import annotations

import json

import pytest
from awstest import FakeClock, Recorder
from botocore.exceptions import ClientError
from localaws import LocalAws, LostAnswers
from synthetic import make_build

from pipeline.aws import ami, cfn, gc, provenance
from pipeline.aws import tags as T

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")


def publish(aws: LocalAws, build, *overrides: str, lost: LostAnswers | None = None, rec=None):  # type: ignore[no-untyped-def]
    clients = aws.clients(recorder=rec, faults=lost)
    return ami.publish(aws.settings(*overrides), clients, build, progress=False, git=GIT)


def test_a_retried_register_image_adopts_the_image_it_made_instead_of_failing(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    lost = LostAnswers(("RegisterImage",))
    rec = Recorder()
    result = publish(aws, build, lost=lost, rec=rec)
    assert lost.attempts["RegisterImage"] == 2 and len(rec.named("RegisterImage")) == 1
    name = f"erlang_web-dev-beam-hvm-{build.build_id}"
    images = (
        aws.clients().ec2().describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    )
    (image,) = images["Images"]  # one image, not a second untagged one gc never sees
    assert image["ImageId"] == result.images["us-east-1"].image_id
    assert T.from_aws(image["Tags"])[T.BUILD_ID] == build.build_id


def test_a_register_image_of_a_name_another_build_holds_is_not_adopted(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    name = f"erlang_web-dev-beam-hvm-{build.build_id}"
    ec2 = aws.clients().ec2()
    other = ec2.register_image(Name=name, RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[other], Tags=T.to_aws(T.scope("erlang_web", "dev", {T.BUILD_ID: "0" * 16})))
    with pytest.raises(Exception, match=f"image {other} in us-east-1 is named {name} but is tagged"):
        publish(aws, build)


def test_a_retried_start_snapshot_leaves_no_empty_duplicate(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    lost = LostAnswers(("StartSnapshot",))
    result = publish(aws, build, lost=lost)
    assert lost.attempts["StartSnapshot"] == 2
    ours = (
        aws.clients()
        .ec2()
        .describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{T.BUILD_ID}", "Values": [build.build_id]}]
        )["Snapshots"]
    )
    assert result.snapshot is not None
    assert [s["SnapshotId"] for s in ours] == [result.snapshot.snapshot_id]
    assert T.from_aws(ours[0]["Tags"])[T.UPLOAD] == T.UPLOAD_COMPLETE


def test_a_retried_copy_image_makes_one_copy(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    lost = LostAnswers(("CopyImage",))
    result = publish(aws, build, 'ami.regions=["us-west-2"]', lost=lost)
    assert lost.attempts["CopyImage"] == 2
    copies = aws.clients("us-west-2").ec2().describe_images(Owners=["self"])["Images"]
    assert [c["ImageId"] for c in copies] == [result.images["us-west-2"].image_id]


TEMPLATE = json.dumps(
    {
        "Parameters": {"Weight": {"Type": "String"}},
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"Weight": {"Value": {"Ref": "Weight"}}},
    }
)


def parameters(weight: str) -> list[dict[str, str]]:
    return [{"ParameterKey": "Weight", "ParameterValue": weight}]


def test_retried_stack_operations_are_recognised_by_their_request_token(aws: LocalAws) -> None:
    lost = LostAnswers(("CreateStack", "UpdateStack", "DeleteStack"))
    rec = Recorder()
    cf = aws.clients(recorder=rec, faults=lost).cloudformation()
    clock = FakeClock()
    waiter = cfn.Waiter(clock.sleep, clock.clock)

    stack_id = cfn.create(cf, "lost-answers", TEMPLATE, parameters("0"), [])
    assert cfn.update(cf, "lost-answers", TEMPLATE, parameters("100"), []) is True
    info = cfn.wait(cf, stack_id, cfn.EventStream(cf, stack_id, lambda _: None), waiter, "update")
    assert info.outputs == {"Weight": "100"}
    cfn.delete(cf, stack_id)
    assert cfn.describe(cf, "lost-answers") is None
    assert lost.attempts == {"CreateStack": 2, "UpdateStack": 2, "DeleteStack": 2}
    tokens = [c.params["ClientRequestToken"] for c in rec.calls if c.operation.endswith("Stack")]
    assert len(tokens) == len(set(tokens)) == 3  # one per operation, the same for its retry


def test_without_a_request_token_a_retried_create_stack_fails(aws: LocalAws) -> None:
    """The control: the same lost answer without a token is what AWS refuses (AlreadyExistsException)."""
    lost = LostAnswers(("CreateStack",))
    cf = aws.clients(faults=lost).cloudformation()
    with pytest.raises(ClientError) as err:
        cf.create_stack(StackName="no-token", TemplateBody=TEMPLATE, Parameters=parameters("0"))
    assert err.value.response["Error"]["Code"] == "AlreadyExistsException"


def test_gc_counts_what_a_retried_delete_found_gone_as_removed(aws: LocalAws) -> None:
    first, second = make_build(aws.builds, config="greeting=a"), make_build(aws.builds, config="greeting=b")
    publish(aws, first)
    publish(aws, second)
    settings = aws.settings("ami.keep=1")
    plan = gc.plan(aws.clients(), settings, grace=gc.timedelta(0))
    assert {r.kind for r in plan.removals} == {"image", "snapshot"}
    lost = LostAnswers(("DeregisterImage", "DeleteSnapshot"))
    assert gc.apply(aws.clients(faults=lost), settings, plan) == []  # no "removal failed"
    assert lost.attempts == {"DeregisterImage": 2, "DeleteSnapshot": 2 * (len(plan.removals) - 1)}
    assert gc.plan(aws.clients(), settings, grace=gc.timedelta(0)).removals == []
