"""The embedded local AWS: Amazon's PV-GRUB kernels, state that survives a restart, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from awstest import Recorder
from botocore.exceptions import ClientError
from localaws import LocalAws, free_port, write_project

from pipeline import config
from pipeline.aws import pv
from pipeline.errors import PipelineError
from pipeline.local import amazon_images, server
from pipeline.local.moto_app import Journal, is_mutating


def test_pv_grub_kernels_are_amazon_images_of_the_pv_regions_only(aws: LocalAws) -> None:
    ec2 = aws.clients().ec2()
    found = ec2.describe_images(
        Owners=["amazon"],
        Filters=[{"Name": "name", "Values": ["pv-grub-hd0_*"]}, {"Name": "image-type", "Values": ["kernel"]}],
    )["Images"]
    by_id = {i["ImageId"]: (i["Name"], i["Architecture"], i["ImageOwnerAlias"], i["Public"]) for i in found}
    assert by_id == {
        "aki-5c21674b": ("pv-grub-hd0_1.05-x86_64.gz", "x86_64", "amazon", True),
        "aki-04206613": ("pv-grub-hd0_1.05-i386.gz", "i386", "amazon", True),
        "aki-919dcaf8": ("pv-grub-hd0_1.04-x86_64.gz", "x86_64", "amazon", True),
    }
    assert ec2.describe_images(Owners=["self"])["Images"] == []  # they are not the account's own
    assert set(amazon_images.PV_GRUB) == set(pv.PV_REGIONS)
    for region in pv.PV_REGIONS:
        newest = amazon_images.PV_GRUB[region][0]
        assert pv.find_aki(aws.clients(region).ec2(), region) == newest.image_id
    for region in ("eu-west-2", "us-east-2", "ap-south-1"):
        assert pv.find_aki(aws.clients(region).ec2(), region) is None


def test_an_action_moto_lacks_is_a_501_client_error_without_retries(aws: LocalAws) -> None:
    ec2 = aws.clients().ec2()
    with pytest.raises(ClientError) as err:
        ec2.enable_image_deprecation(ImageId="ami-0123456789abcdef0", DeprecateAt="2030-01-01T00:00:00Z")
    assert err.value.response["Error"]["Code"] == "NotImplemented"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_reset_empties_the_local_aws_and_its_journal_and_seeds_amazon_images_again(aws: LocalAws) -> None:
    ec2 = aws.clients().ec2()
    ec2.register_image(Name="to-be-forgotten", RootDeviceName="/dev/xvda")
    assert server.status(aws.settings())["journal_entries"] == 1
    aws.reset()
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    assert server.status(aws.settings())["journal_entries"] == 0
    assert pv.find_aki(ec2, "us-east-1") == "aki-5c21674b"


def test_a_port_served_by_another_checkout_or_another_program_is_refused(
    aws: LocalAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    write_project(other)
    settings = config.load(root=other, overrides=[f"local.port={aws.port}"])
    with pytest.raises(PipelineError, match=r"port \d+ is served by the local AWS of another checkout"):
        server.ensure_running(settings)

    import http.server
    import threading

    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.chdir(tmp_path)  # the handler serves files from the cwd
        (tmp_path / "moto-api").mkdir()  # so that /moto-api/ answers 200, like a plain moto server
        settings = config.load(root=other, overrides=[f"local.port={httpd.server_address[1]}"])
        assert server.status(settings) is None
        with pytest.raises(PipelineError, match="served by something that is not this pipeline's local AWS"):
            server.ensure_running(settings)
    finally:
        httpd.shutdown()


def test_state_survives_a_restart_with_the_same_ids_times_and_blocks(tmp_path: Path, monkeypatch) -> None:
    from invoke.context import MockContext

    from pipeline.cli.local import local_down

    root = tmp_path / "project"
    write_project(root)
    port = free_port()
    settings = config.load(root=root, overrides=[f"local.port={port}"])
    url = server.ensure_running(settings)
    local = LocalAws(url, port, root)
    try:
        rec = Recorder()
        clients = local.clients(recorder=rec)
        ec2, ebs = clients.ec2(), clients.ebs()
        snapshot_id = ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "k", "Value": "v"}])["SnapshotId"]
        blocks = {3: os.urandom(512 * 1024), 9: os.urandom(512 * 1024)}
        for index, data in blocks.items():
            ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=len(data),
                Checksum="unchecked",
                ChecksumAlgorithm="SHA256",
            )
        ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=2)
        image_id = ec2.register_image(
            Name="kept",
            RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot_id}}],
        )["ImageId"]
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": "BuildId", "Value": "b1"}])
        copy_id = (
            local.clients("eu-west-1")
            .ec2()
            .copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="kept")["ImageId"]
        )
        before = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        # Only the changing requests were journaled (reads were not), each large block once as a blob.
        journal = (root / ".pipeline" / "local" / "journal.jsonl").read_text().splitlines()
        assert len(journal) - 1 == len(rec.mutating()) + 1  # + the copy, made by another client
        assert len(list((root / ".pipeline" / "local" / "blobs").iterdir())) == 2

        monkeypatch.chdir(root)
        local_down(MockContext())
        assert server.status(settings) is None and not (root / ".pipeline" / "local" / "server.json").exists()

        assert server.ensure_running(settings) == url
        assert server.status(settings)["replayed"] == len(journal) - 1
        assert server.status(settings)["replay_failures"] == 0
        again = local.clients()
        after = again.ec2().describe_images(ImageIds=[image_id])["Images"][0]
        assert after["CreationDate"] == before["CreationDate"] and after["Tags"] == before["Tags"]
        assert after["BlockDeviceMappings"] == before["BlockDeviceMappings"]
        assert local.clients("eu-west-1").ec2().describe_images(ImageIds=[copy_id])["Images"]
        listed = again.ebs().list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
        assert sorted(b["BlockIndex"] for b in listed) == [3, 9]
        for b in listed:
            got = again.ebs().get_snapshot_block(
                SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
            )
            assert got["BlockData"].read() == blocks[b["BlockIndex"]]
        new_id = again.ec2().register_image(Name="after restart", RootDeviceName="/dev/xvda")["ImageId"]
        assert new_id not in (image_id, copy_id)

        local_down(MockContext(), wipe=True)
        server.ensure_running(settings)
        assert local.clients().ec2().describe_images(Owners=["self"])["Images"] == []
        assert pv.find_aki(local.clients().ec2(), "us-east-1") == "aki-5c21674b"
    finally:
        server.stop(settings)


def test_a_torn_last_journal_line_is_skipped_and_an_earlier_one_is_an_error(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.load()
    good = {
        "n": 1,
        "at": "2026-01-01T00:00:00+00:00",
        "method": "POST",
        "path": "/",
        "headers": {},
        "body": "",
    }
    (tmp_path / "journal.jsonl").write_text(
        (tmp_path / "journal.jsonl").read_text() + json.dumps(good) + "\n" + '{"n": 2, "at": "20'
    )
    assert [e["n"] for e in Journal(tmp_path).load()] == [1]
    assert (tmp_path / "journal.jsonl").read_text().endswith(json.dumps(good) + "\n")  # dropped for good
    (tmp_path / "journal.jsonl").write_text((tmp_path / "journal.jsonl").read_text() + '{"n": 2, "at": "20')
    (tmp_path / "journal.jsonl").write_text(
        (tmp_path / "journal.jsonl").read_text().replace('{"n": 2, "at": "20', '{"n": 2\n' + json.dumps(good))
    )
    with pytest.raises(json.JSONDecodeError):
        Journal(tmp_path).load()


@pytest.mark.parametrize(
    ("method", "headers", "body", "query", "mutating"),
    [
        (
            "POST",
            {"CONTENT_TYPE": "application/x-www-form-urlencoded"},
            b"Action=DescribeImages&Version=2016-11-15",
            "",
            False,
        ),
        (
            "POST",
            {"CONTENT_TYPE": "application/x-www-form-urlencoded"},
            b"Action=RegisterImage&Version=2016-11-15",
            "",
            True,
        ),
        ("POST", {"CONTENT_TYPE": "application/x-www-form-urlencoded"}, b"Action=ListStacks", "", False),
        ("POST", {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.GetItem"}, b"{}", "", False),
        ("POST", {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.PutItem"}, b"{}", "", True),
        ("GET", {}, b"", "", False),  # EBS ListSnapshotBlocks / GetSnapshotBlock
        ("PUT", {}, b"block", "", True),  # EBS PutSnapshotBlock
        ("POST", {}, b"{}", "", True),  # EBS StartSnapshot
        ("POST", {}, b"", "Action=ValidateTemplate", False),
    ],
)
def test_which_requests_are_journaled(method, headers, body, query, mutating) -> None:
    environ = {"REQUEST_METHOD": method, "QUERY_STRING": query, **headers}
    assert is_mutating(environ, body) is mutating


def test_a_stack_with_its_own_vpc_is_deleted_also_after_a_reset_and_a_restart(tmp_path: Path) -> None:
    """moto cannot delete a stack's route table by itself; the local AWS can, and the DeleteStack in its
    journal replays without failing."""
    from pipeline.aws import probe, rollout, stack
    from pipeline.aws.params import Release

    root = tmp_path / "project"
    write_project(root)
    port = free_port()
    settings = config.load(root=root, overrides=[f"local.port={port}"])
    local = LocalAws(server.ensure_running(settings), port, root)
    params = stack.params_for(settings)
    assert not params.existing_vpc  # the stack makes its own VPC, route table included

    def create_and_delete() -> None:
        cf, ec2 = local.clients().cloudformation(), local.clients().ec2()
        image = ec2.register_image(Name="app", RootDeviceName="/dev/xvda")["ImageId"]
        state = rollout.first_state(Release(image, "1111111111aa", "t3.micro", "hvm"), 1)
        stack_id = cf.create_stack(
            StackName="erlang-web-dev",
            TemplateBody=stack.render(params),
            Parameters=probe.with_token(state.parameters(), None),
        )["StackId"]
        assert cf.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
        assert len(ec2.describe_vpcs()["Vpcs"]) == 2  # the default VPC and the stack's
        cf.delete_stack(StackName=stack_id)
        assert cf.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"] == "DELETE_COMPLETE"
        (default,) = ec2.describe_vpcs()["Vpcs"]
        assert default["IsDefault"]
        assert {t["VpcId"] for t in ec2.describe_route_tables()["RouteTables"]} == {default["VpcId"]}

    try:
        create_and_delete()
        local.reset()
        create_and_delete()
        entries = server.status(settings)["journal_entries"]
        server.stop(settings)
        server.ensure_running(settings)
        assert (server.status(settings)["replayed"], server.status(settings)["replay_failures"]) == (
            entries,
            0,
        )
        cf = local.clients().cloudformation()
        assert [s["StackStatus"] for s in cf.list_stacks()["StackSummaries"]] == ["DELETE_COMPLETE"]
        assert [v["IsDefault"] for v in local.clients().ec2().describe_vpcs()["Vpcs"]] == [True]
    finally:
        server.stop(settings)
