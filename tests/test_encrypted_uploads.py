"""Encrypted snapshots (``ami.kms_key_id``): a delta names only its parent and inherits its key; a key
change uploads in full with the new key. The rules are AWS's ("Encryption outcomes for EBS direct APIs",
https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-encryption.html, and StartSnapshot in the
EBS API reference: "You can't specify ParentSnapshotId and Encrypted in the same request"); the local
AWS enforces them (``pipeline.local.aws_rules``), and the requests are checked as sent."""

from __future__ import annotations

from typing import Any

import pytest
from awstest import Recorder
from botocore.awsrequest import AWSResponse
from localaws import LocalAws, _Raw
from synthetic import make_build

from pipeline.aws import ami, provenance
from pipeline.errors import ConfigError

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")


@pytest.fixture
def keys(aws: LocalAws) -> tuple[str, str]:
    """The ARNs of two symmetric keys of the local AWS's KMS (the pre-flight checks they exist)."""
    kms = aws.clients().kms()
    a, b = (kms.create_key(Description=f"images {n}")["KeyMetadata"]["Arn"] for n in "ab")
    return a, b


def publish(aws: LocalAws, build: Any, key: str, rec: Recorder, **kw: Any) -> ami.Publication:
    settings = aws.settings(f'ami.kms_key_id="{key}"')
    return ami.publish(settings, aws.clients(recorder=rec, **kw), build, progress=False, git=GIT)


def snapshot_of(aws: LocalAws, result: ami.Publication) -> dict[str, Any]:
    assert result.snapshot is not None
    (snap,) = aws.clients().ec2().describe_snapshots(SnapshotIds=[result.snapshot.snapshot_id])["Snapshots"]
    return dict(snap)


def test_a_config_only_rebuild_uploads_a_delta_that_inherits_the_parents_key(
    aws: LocalAws, keys: tuple[str, str]
) -> None:
    key_a, _ = keys
    rec = Recorder()
    first = publish(aws, make_build(aws.builds, config="greeting=one"), key_a, rec)
    (start,) = rec.named("StartSnapshot")
    assert start["Encrypted"] is True and start["KmsKeyArn"] == key_a and "ParentSnapshotId" not in start
    assert snapshot_of(aws, first)["KmsKeyId"] == key_a

    rec.clear()
    second = publish(aws, make_build(aws.builds, config="greeting=two"), key_a, rec)
    (start,) = rec.named("StartSnapshot")
    assert first.snapshot is not None and second.snapshot is not None
    assert start["ParentSnapshotId"] == first.snapshot.snapshot_id
    assert "Encrypted" not in start and "KmsKeyArn" not in start  # refused beside a parent
    assert second.snapshot.blocks_sent < first.snapshot.blocks_sent  # a delta
    snap = snapshot_of(aws, second)
    assert snap["Encrypted"] is True and snap["KmsKeyId"] == key_a


def test_a_key_change_uploads_in_full_with_the_new_key_and_says_so(
    aws: LocalAws, keys: tuple[str, str]
) -> None:
    key_a, key_b = keys
    rec = Recorder()
    first = publish(aws, make_build(aws.builds, config="greeting=one"), key_a, rec)
    rec.clear()
    second = publish(aws, make_build(aws.builds, config="greeting=two"), key_b, rec)
    (start,) = rec.named("StartSnapshot")
    assert "ParentSnapshotId" not in start and start["KmsKeyArn"] == key_b and start["Encrypted"] is True
    assert first.snapshot is not None and second.snapshot is not None
    assert second.snapshot.parent_id == "none"
    assert second.snapshot.blocks_sent == first.snapshot.blocks_sent  # every non-zero block again
    assert snapshot_of(aws, second)["KmsKeyId"] == key_b
    # the line of the ami task's table says why
    (line,) = [a for _, a in second.actions if a.startswith("snapshot ")]
    assert f"is encrypted with key {key_a}; ami.kms_key_id is now {key_b}" in line and "full upload" in line


def test_a_parent_qualifies_only_with_the_encryption_the_new_snapshot_needs(
    aws: LocalAws, keys: tuple[str, str]
) -> None:
    key_a, _ = keys
    rec = Recorder()
    first = publish(aws, make_build(aws.builds, config="greeting=one"), "", rec)
    rec.clear()
    second = publish(aws, make_build(aws.builds, config="greeting=two"), key_a, rec)
    (start,) = rec.named("StartSnapshot")
    assert "ParentSnapshotId" not in start and start["KmsKeyArn"] == key_a  # not on the plain one
    assert second.upload is not None and "is not encrypted" in second.upload.note
    rec.clear()
    publish(aws, make_build(aws.builds, config="greeting=three"), "", rec)
    (start,) = rec.named("StartSnapshot")
    # the newest (encrypted) one does not qualify; the older plain one does
    assert first.snapshot is not None and start["ParentSnapshotId"] == first.snapshot.snapshot_id
    assert "Encrypted" not in start and "KmsKeyArn" not in start


def test_an_alias_is_resolved_to_the_key_arn_startsnapshot_takes(aws: LocalAws) -> None:
    kms = aws.clients().kms()
    key = kms.create_key(Description="images")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/images", TargetKeyId=key)
    rec = Recorder()
    publish(aws, make_build(aws.builds), "alias/images", rec)
    (start,) = rec.named("StartSnapshot")
    assert start["KmsKeyArn"] == key and key.split(":")[5].startswith("key/")
    with pytest.raises(ConfigError, match=r"ami\.kms_key_id: KMS has no key \"alias/none-such\""):
        publish(aws, make_build(aws.builds), "alias/none-such", Recorder())


def test_the_local_aws_refuses_a_parent_with_encrypted_as_aws_does(
    aws: LocalAws, keys: tuple[str, str]
) -> None:
    key_a, key_b = keys
    rec = Recorder()
    first = publish(aws, make_build(aws.builds, config="greeting=one"), key_a, rec)
    assert first.snapshot is not None
    ebs = aws.clients().ebs()
    for extra in ({"Encrypted": True}, {"Encrypted": False}, {"KmsKeyArn": key_b}):
        with pytest.raises(ebs.exceptions.ValidationException):
            ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=first.snapshot.snapshot_id, **extra)


class RefuseParents:
    """Stands in for an account that turned on EBS encryption by default after the parent was made:
    EBS then refuses an unencrypted parent with ValidationException (the encryption outcomes table)."""

    def __call__(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        if event_name.endswith("StartSnapshot") and b"ParentSnapshotId" in (request.body or b""):
            body = b'{"message": "The parent snapshot is unencrypted", "Reason": "INVALID_PARAMETER_VALUE"}'
            headers = {"x-amzn-ErrorType": "ValidationException", "Content-Type": "application/json"}
            return AWSResponse(request.url, 400, headers, _Raw(body))
        return None


def test_a_parent_ebs_refuses_turns_the_upload_into_a_full_one(aws: LocalAws) -> None:
    rec = Recorder()
    publish(aws, make_build(aws.builds, config="greeting=one"), "", rec)
    rec.clear()
    second = publish(
        aws,
        make_build(aws.builds, config="greeting=two"),
        "",
        rec,
        hooks=(("before-send", RefuseParents()),),
    )
    starts = rec.named("StartSnapshot")
    assert "ParentSnapshotId" in starts[0] and "ParentSnapshotId" not in starts[1]
    assert second.snapshot is not None and second.snapshot.parent_id == "none"
    assert "refused" in second.snapshot.note and "full upload" in second.snapshot.note
