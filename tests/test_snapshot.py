"""EBS direct upload: what is sent (checked on the requests: moto validates none of it) and what is stored."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from awstest import FakeClock, Recorder
from localaws import LocalAws
from synthetic import make_build

from pipeline.aws import delta, provenance
from pipeline.aws import snapshot as snap
from pipeline.aws import tags as T
from pipeline.blocks import BLOCK_SIZE


def test_block_checksum_is_base64_of_the_raw_sha256_not_hex() -> None:
    data = b"\x01" * BLOCK_SIZE
    digest = hashlib.sha256(data).digest()
    assert delta.block_checksum(data) == base64.b64encode(digest).decode()
    assert len(delta.block_checksum(data)) == 44  # base64 of 32 bytes; a hex digest would be 64


def test_aggregate_checksum_is_linear_over_raw_digests_in_index_order() -> None:
    d = [hashlib.sha256(bytes([i]) * 16).digest() for i in range(3)]
    expected = base64.b64encode(hashlib.sha256(d[0] + d[1] + d[2]).digest()).decode()
    assert delta.aggregate_checksum(d) == expected
    assert delta.aggregate_checksum(list(reversed(d))) != expected


GIT = provenance.GitState("0123456789abcdef0123456789abcdef01234567", "false")


def plan_for(aws: LocalAws, build, clients, disk: str = "hvm-uefi", kms: str = "") -> delta.UploadPlan:
    d = build.disk(disk)
    tags = provenance.image_tags(build.manifest, d, GIT)
    return delta.plan(
        clients.ec2(),
        region="us-east-1",
        image=build.image(disk),
        image_sha256=d["sha256"],
        blocks=delta.read_block_map(build.directory / d["blocks_file"]),
        identity=identity_of(build, d),
        tags=tags,
        description=f"test {build.build_id}",
        builds_dir=build.directory.parent,
        disk_name=disk,
        kms_key_id=kms,
    )


def identity_of(build, d) -> dict[str, str]:
    m = build.manifest
    return provenance.identity(m["app"]["name"], m["env"], m["target"], d["virtualization"])


def upload(
    aws: LocalAws, build, clients, disk: str = "hvm-uefi", workers: int = 4, **kw
) -> snap.SnapshotResult:
    p = plan_for(aws, build, clients, disk)
    up = snap.Uploader(
        clients.ebs(pool=workers),
        clients.ec2(),
        lock_dir=aws.root / ".pipeline" / "uploads",
        workers=workers,
        progress=False,
        **kw,
    )
    return up.ensure(p, identity_of(build, build.disk(disk)))


def stored_blocks(clients, snapshot_id: str) -> dict[int, bytes]:
    ebs = clients.ebs()
    out: dict[int, bytes] = {}
    token = None
    while True:
        kw = {"SnapshotId": snapshot_id, **({"NextToken": token} if token else {})}
        resp = ebs.list_snapshot_blocks(**kw)
        for b in resp["Blocks"]:
            got = ebs.get_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
            )
            out[b["BlockIndex"]] = got["BlockData"].read()
        token = resp.get("NextToken")
        if not token:
            return out


def test_full_upload_sends_each_nonzero_block_once_with_base64_checksums(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    clients = aws.clients(recorder=rec)
    result = upload(aws, build, clients)
    image = build.nonzero("hvm-uefi")

    # What moto stores: exactly the non-zero blocks, byte for byte; no zero block was sent.
    assert stored_blocks(clients, result.snapshot_id) == image
    puts = rec.named("PutSnapshotBlock")
    assert sorted(p["BlockIndex"] for p in puts) == sorted(image)
    assert result.blocks_sent == len(image) and result.bytes_sent == len(image) * BLOCK_SIZE
    for p in puts:  # the real API wants the base64 SHA-256 of the 512 KiB block
        assert p["Checksum"] == base64.b64encode(hashlib.sha256(p["BlockData"]).digest()).decode()
        assert p["ChecksumAlgorithm"] == "SHA256" and p["DataLength"] == BLOCK_SIZE == len(p["BlockData"])

    (start,) = rec.named("StartSnapshot")
    d = build.disk("hvm-uefi")
    assert start["VolumeSize"] == 1 and "ParentSnapshotId" not in start
    assert (
        start["ClientToken"]
        == hashlib.sha256(
            f"start-snapshot|{T.MANAGED_BY}/erlang_web/dev/beam/hvm|{d['sha256']}|none||1|".encode()
        ).hexdigest()
    )
    stags = T.from_aws(start["Tags"])
    assert stags[T.UPLOAD] == "incomplete" and stags[T.IMAGE_SHA256] == d["sha256"]
    assert stags[T.MANAGED] == T.MANAGED_BY and stags[T.PARENT_SNAPSHOT] == "none"

    (complete,) = rec.named("CompleteSnapshot")
    digests = [hashlib.sha256(image[i]).digest() for i in sorted(image)]
    assert complete == {
        "SnapshotId": result.snapshot_id,
        "ChangedBlocksCount": len(image),
        "Checksum": base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode(),
        "ChecksumAlgorithm": "SHA256",
        "ChecksumAggregationMethod": "LINEAR",
    }
    (snapshot,) = clients.ec2().describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"]
    tags = T.from_aws(snapshot["Tags"])
    assert tags[T.UPLOAD] == "complete" and tags[T.SNAPSHOT_CHECKSUM] == complete["Checksum"]


def test_a_config_change_uploads_a_delta_on_the_previous_snapshot(aws: LocalAws) -> None:
    from synthetic import MIB, Layout

    first = make_build(aws.builds, config="greeting=one", layout=Layout(extra={60 * MIB: b"old data"}))
    clients = aws.clients()
    parent = upload(aws, first, clients)
    # The second build changes the configuration area, no longer has the block at 60 MiB, and has a
    # new one at 70 MiB.
    second = make_build(aws.builds, config="greeting=two", layout=Layout(extra={70 * MIB: b"new"}))
    rec = Recorder()
    clients2 = aws.clients(recorder=rec)
    child = upload(aws, second, clients2)

    old, new = first.nonzero("hvm-uefi"), second.nonzero("hvm-uefi")
    changed = sorted(i for i in new if old.get(i) != new[i])
    zeroed = sorted(set(old) - set(new))
    assert zeroed == [60 * MIB // BLOCK_SIZE] and 70 * MIB // BLOCK_SIZE in changed
    assert len(changed) < len(new) // 5

    (start,) = rec.named("StartSnapshot")
    assert start["ParentSnapshotId"] == parent.snapshot_id
    puts = {p["BlockIndex"]: p for p in rec.named("PutSnapshotBlock")}
    assert sorted(puts) == sorted(changed + zeroed)
    zero = puts[zeroed[0]]
    assert zero["BlockData"] == bytes(BLOCK_SIZE)
    assert zero["Checksum"] == base64.b64encode(hashlib.sha256(bytes(BLOCK_SIZE)).digest()).decode()
    (complete,) = rec.named("CompleteSnapshot")
    assert complete["ChangedBlocksCount"] == len(changed) + len(zeroed)
    assert child.parent_id == parent.snapshot_id and child.blocks_sent == len(changed) + len(zeroed)

    # On AWS the child reads as the parent overlaid with its own blocks (moto lists only the child's):
    # that overlay, minus zero blocks, is exactly the new image.
    overlay = {**stored_blocks(clients, parent.snapshot_id), **stored_blocks(clients, child.snapshot_id)}
    assert {i: b for i, b in overlay.items() if b != bytes(BLOCK_SIZE)} == new


def test_without_the_parent_build_on_this_machine_the_upload_is_full(aws: LocalAws) -> None:
    import shutil

    first = make_build(aws.builds, seed="p1", config="a")
    clients = aws.clients()
    upload(aws, first, clients)
    shutil.rmtree(first.directory)
    second = make_build(aws.builds, seed="p1", config="b")
    p = plan_for(aws, second, clients)
    assert p.parent is None and "not built on this machine" in p.note
    rec = Recorder()
    result = upload(aws, second, aws.clients(recorder=rec))
    (start,) = rec.named("StartSnapshot")
    assert "ParentSnapshotId" not in start
    assert result.blocks_sent == len(second.nonzero("hvm-uefi"))


def test_an_existing_complete_snapshot_of_the_same_image_is_reused(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    clients = aws.clients()
    first = upload(aws, build, clients)
    rec = Recorder()
    again = upload(aws, build, aws.clients(recorder=rec))
    assert again.reused and again.snapshot_id == first.snapshot_id
    assert rec.mutating() == []


def test_a_changed_image_file_is_refused_before_its_block_is_sent(aws: LocalAws) -> None:
    from pipeline.errors import ImageError

    build = make_build(aws.builds, seed="tampered")
    index = max(build.nonzero("hvm-uefi"))
    with build.image("hvm-uefi").open("r+b") as f:
        f.seek(index * BLOCK_SIZE)
        f.write(b"tampered")
    rec = Recorder()
    with pytest.raises(ImageError, match=f"block {index} differs from the build's block map"):
        upload(aws, build, aws.clients(recorder=rec))
    assert index not in [p["BlockIndex"] for p in rec.named("PutSnapshotBlock")]
    assert rec.named("CompleteSnapshot") == []


def test_a_second_upload_of_the_same_image_on_this_machine_is_refused(aws: LocalAws, tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    build = make_build(aws.builds)
    d = build.disk("hvm-uefi")
    with snap.upload_lock(aws.root / ".pipeline" / "uploads", d["sha256"]):
        assert snap.upload_running(aws.root / ".pipeline" / "uploads", d["sha256"])
        with pytest.raises(PipelineError, match=r"another upload of image \w+ is running on this machine"):
            upload(aws, build, aws.clients())
    assert not snap.upload_running(aws.root / ".pipeline" / "uploads", d["sha256"])


def test_throttling_and_503s_on_a_third_of_the_calls_are_retried_and_each_block_stored_once(
    aws: LocalAws,
) -> None:
    from localaws import Faults

    build = make_build(aws.builds)
    faults = Faults(every=3)
    rec = Recorder()
    clients = aws.clients(recorder=rec, faults=faults)
    result = upload(aws, build, clients)
    image = build.nonzero("hvm-uefi")
    assert faults.injected["PutSnapshotBlock"] >= len(image) // 4  # the faults really happened
    assert sum(faults.injected.values()) > faults.injected["PutSnapshotBlock"]  # not only on blocks
    # Each block reached the server exactly once, and the snapshot holds exactly the image.
    assert dict(faults.delivered_blocks) == dict.fromkeys(image, 1)
    assert stored_blocks(aws.clients(), result.snapshot_id) == image
    assert len(rec.named("StartSnapshot")) == 1 and len(rec.named("CompleteSnapshot")) == 1
    snaps = delta.describe_snapshots(clients.ec2(), {T.IMAGE_SHA256: build.disk("hvm-uefi")["sha256"]})
    assert [s["SnapshotId"] for s in snaps] == [result.snapshot_id]


def test_an_interrupted_upload_is_resumed_into_the_same_snapshot(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    image = build.nonzero("hvm-uefi")
    sent = []

    def fail_midway(request, **_):  # the connection drops after a third of the blocks
        sent.append(request.url)
        if len(sent) == len(image) // 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload(aws, build, aws.clients(hooks=(("before-send.ebs.PutSnapshotBlock", fail_midway),)), workers=1)
    sha = build.disk("hvm-uefi")["sha256"]
    (orphan,) = delta.describe_snapshots(aws.clients().ec2(), {T.IMAGE_SHA256: sha})
    assert T.from_aws(orphan["Tags"])[T.UPLOAD] == "incomplete"

    rec = Recorder()
    clients = aws.clients(recorder=rec)
    result = upload(aws, build, clients)
    assert result.resumed and result.snapshot_id == orphan["SnapshotId"]
    assert rec.named("StartSnapshot") == []
    assert stored_blocks(clients, result.snapshot_id) == image
    (done,) = delta.describe_snapshots(clients.ec2(), {T.IMAGE_SHA256: sha})
    assert T.from_aws(done["Tags"])[T.UPLOAD] == "complete"


def test_an_interrupted_upload_that_no_longer_accepts_blocks_is_replaced(aws: LocalAws) -> None:
    """On AWS a pending snapshot idle for its Timeout ends in error; writing to it is refused."""
    from botocore.awsrequest import AWSResponse
    from localaws import _Raw

    build = make_build(aws.builds)
    p = plan_for(aws, build, aws.clients())
    ident = identity_of(build, build.disk("hvm-uefi"))
    up = snap.Uploader(
        aws.clients().ebs(), aws.clients().ec2(), aws.root / ".pipeline" / "uploads", progress=False
    )
    dead = up._start(p)  # an upload that was started and abandoned

    def refuse_dead(request, **_):
        if f"/snapshots/{dead}/" in request.url:
            body = b'{"message": "The snapshot is not in pending state", "Reason": "INVALID_SNAPSHOT_ID"}'
            return AWSResponse(request.url, 400, {"x-amzn-ErrorType": "ValidationException"}, _Raw(body))
        return None

    rec = Recorder()
    clients = aws.clients(recorder=rec, hooks=(("before-send.ebs.PutSnapshotBlock", refuse_dead),))
    result = upload(aws, build, clients)
    assert result.snapshot_id != dead
    (start,) = rec.named("StartSnapshot")
    assert start["ClientToken"] == p.client_token(salt=dead) != p.client_token()
    assert {"SnapshotId": dead} in rec.named("DeleteSnapshot")
    left = delta.describe_snapshots(clients.ec2(), {**ident, T.IMAGE_SHA256: p.image_sha256})
    assert [s["SnapshotId"] for s in left] == [result.snapshot_id]


def _snapshot_state(state: str, **extra) -> dict:
    return {"Snapshots": [{"SnapshotId": "snap-0123456789abcdef0", "State": state, **extra}]}


def test_waiting_for_completion_polls_with_backoff_until_completed() -> None:
    import boto3
    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = FakeClock()
    with Stubber(ec2) as stub:
        for state in ("pending", "pending", "pending", "completed"):
            stub.add_response(
                "describe_snapshots", _snapshot_state(state), {"SnapshotIds": ["snap-0123456789abcdef0"]}
            )
        snap.wait_completed(ec2, "snap-0123456789abcdef0", sleep=clock.sleep, clock=clock.clock)
        stub.assert_no_pending_responses()
    assert clock.slept == [2.0, 4.0, 8.0]


def test_a_snapshot_that_ends_in_error_stops_the_wait_with_its_reason() -> None:
    import boto3
    from botocore.stub import Stubber

    from pipeline.errors import AwsError

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = FakeClock()
    with Stubber(ec2) as stub:
        stub.add_response("describe_snapshots", _snapshot_state("pending"))
        stub.add_response("describe_snapshots", _snapshot_state("error", StateMessage="checksum mismatch"))
        with pytest.raises(AwsError, match="ended in state error: checksum mismatch"):
            snap.wait_completed(ec2, "snap-0123456789abcdef0", sleep=clock.sleep, clock=clock.clock)


def test_waiting_for_completion_gives_up_at_its_deadline() -> None:
    import boto3
    from botocore.stub import Stubber

    from pipeline.errors import AwsError

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    clock = FakeClock()
    with Stubber(ec2) as stub:
        for _ in range(400):
            stub.add_response("describe_snapshots", _snapshot_state("pending"))
        with pytest.raises(AwsError, match="still not done after 3600s"):
            snap.wait_completed(ec2, "snap-0123456789abcdef0", sleep=clock.sleep, clock=clock.clock)
    assert clock.now <= snap.COMPLETION_TIMEOUT and max(clock.slept) == 15.0


def test_a_new_snapshot_not_yet_writable_is_retried_until_it_is(aws: LocalAws) -> None:
    """Right after StartSnapshot, EBS may answer ResourceNotFound for a while (eventual consistency)."""
    from botocore.stub import ANY, Stubber

    build = make_build(aws.builds, seed="visibility", layout=_tiny())
    clients = aws.clients()
    p = plan_for(aws, build, clients)
    ebs = clients.ebs()
    clock = FakeClock()
    up = snap.Uploader(
        ebs,
        clients.ec2(),
        aws.root / ".pipeline" / "uploads",
        workers=1,
        progress=False,
        sleep=clock.sleep,
        clock=clock.clock,
    )
    first = sorted(p.write)[0]
    with Stubber(ebs) as stub:
        for _ in range(3):
            stub.add_client_error(
                "put_snapshot_block", "ResourceNotFoundException", "snapshot not found", 404
            )
        stub.add_response(
            "put_snapshot_block",
            {"Checksum": "x", "ChecksumAlgorithm": "SHA256"},
            {
                "SnapshotId": "snap-0123456789abcdef0",
                "BlockIndex": first,
                "BlockData": ANY,
                "DataLength": BLOCK_SIZE,
                "Checksum": ANY,
                "ChecksumAlgorithm": "SHA256",
            },
        )
        with open(p.image, "rb") as f:
            assert up._put_first(p, "snap-0123456789abcdef0", f.fileno(), (first, False), resumed=False)
        stub.assert_no_pending_responses()
    assert clock.slept == [1.0, 2.0, 4.0]


def test_a_new_snapshot_that_never_becomes_writable_is_given_up_after_two_minutes(aws: LocalAws) -> None:
    from botocore.stub import Stubber

    build = make_build(aws.builds, seed="visibility", layout=_tiny())
    clients = aws.clients()
    p = plan_for(aws, build, clients)
    ebs = clients.ebs()
    clock = FakeClock()
    up = snap.Uploader(
        ebs,
        clients.ec2(),
        aws.root / ".pipeline" / "uploads",
        workers=1,
        progress=False,
        sleep=clock.sleep,
        clock=clock.clock,
    )
    with Stubber(ebs) as stub:
        for _ in range(30):
            stub.add_client_error(
                "put_snapshot_block", "ResourceNotFoundException", "snapshot not found", 404
            )
        with open(p.image, "rb") as f:
            assert not up._put_first(
                p, "snap-0123456789abcdef0", f.fileno(), (sorted(p.write)[0], False), False
            )
    assert sum(clock.slept) <= snap.WRITABLE_TIMEOUT < sum(clock.slept) + 15


def _tiny():
    from synthetic import Layout

    return Layout(kernel_bytes=1 << 19, initramfs_bytes=1 << 19, config_bytes=1 << 19)
