"""AMI registration: the requests sent (moto keeps almost none of RegisterImage's attributes) and
what moto does keep (ids, names, tags, copies, permissions)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from awstest import Recorder
from localaws import LocalAws
from synthetic import make_build

from pipeline.aws import access, ami, delta, images, provenance
from pipeline.aws import snapshot as snap
from pipeline.aws import tags as T
from pipeline.errors import ConfigError, ImageError, PipelineError
from pipeline.images.devices import root_device

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "true")
PV_SETTINGS = ("deploy.virtualization=pv", 'deploy.instance_type="m3.medium"')


def publish(aws: LocalAws, build, *overrides: str, rec: Recorder | None = None, **kw) -> ami.Publication:
    settings = aws.settings(*overrides)
    return ami.publish(settings, aws.clients(recorder=rec), build, progress=False, git=GIT, **kw)


def test_hvm_image_is_registered_uefi_ena_x86_64_imdsv2_from_the_uploaded_snapshot(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    result = publish(aws, build, rec=rec)
    (request,) = rec.named("RegisterImage")
    snapshot_id = result.snapshot.snapshot_id
    root = root_device("beam", "hvm")
    assert request["VirtualizationType"] == "hvm"
    assert request["BootMode"] == "uefi" and request["EnaSupport"] is True
    assert request["Architecture"] == "x86_64" and request["ImdsSupport"] == "v2.0"
    assert "KernelId" not in request
    assert request["RootDeviceName"] == root
    assert request["BlockDeviceMappings"] == [
        {
            "DeviceName": root,
            "Ebs": {
                "SnapshotId": snapshot_id,
                "VolumeSize": 1,
                "VolumeType": "gp3",
                "DeleteOnTermination": True,
            },
        }
    ]
    assert request["Name"] == f"erlang_web-dev-beam-hvm-{build.build_id}"
    (spec,) = request["TagSpecifications"]
    tags = T.from_aws(spec["Tags"])
    assert spec["ResourceType"] == "image"
    disk = build.disk("hvm-uefi")
    assert tags == {
        "ManagedBy": T.MANAGED_BY,
        "App": "erlang_web",
        "Env": "dev",
        "Target": "beam",
        "Virtualization": "hvm",
        "BuildId": build.build_id,
        "Version": "0.1.0",
        "ConfigDigest": build.manifest["config_digest"],
        "PipelineVersion": "0.1.0",
        "GitCommit": GIT.commit,
        "GitDirty": "true",
        "ConfigSource": "pipeline.toml",
        "OtpVersion": "25.3.2.8",
        "KernelVersion": "6.1.0-28-cloud-amd64",
        "ImageSha256": disk["sha256"],
        "Name": request["Name"],
        "SnapshotId": snapshot_id,
        "SnapshotChecksum": result.snapshot.checksum,
        "ParentSnapshot": "none",
    }
    # moto drops TagSpecifications; the pipeline noticed and tagged the image itself.
    image = ami.find_image(aws.clients(), aws.settings(), build.build_id, "hvm", "us-east-1")
    assert image is not None and image.image_id == result.images["us-east-1"].image_id
    assert image.tags == tags and not image.public


def test_pv_image_boots_the_regions_newest_x86_64_pv_grub_hd0_kernel(aws: LocalAws) -> None:
    build = make_build(aws.builds, seed="pv", disks=("pv",))
    rec = Recorder()
    publish(aws, build, *PV_SETTINGS, rec=rec)
    (request,) = rec.named("RegisterImage")
    # us-east-1 has pv-grub-hd0 1.05 and 1.04 for x86_64 and 1.05 for i386: the newest x86_64 one.
    assert request["KernelId"] == "aki-5c21674b"
    assert request["VirtualizationType"] == "paravirtual" and request["Architecture"] == "x86_64"
    assert request["RootDeviceName"] == "/dev/sda1" == request["BlockDeviceMappings"][0]["DeviceName"]
    assert "BootMode" not in request and "EnaSupport" not in request
    (aki_lookup,) = [p for p in rec.named("DescribeImages") if p.get("Owners") == ["amazon"]]
    assert {f["Name"]: f["Values"] for f in aki_lookup["Filters"]} == {
        "name": ["pv-grub-hd0_*"],
        "architecture": ["x86_64"],
        "image-type": ["kernel"],
    }


def test_pv_for_a_nitro_instance_type_is_refused_before_any_upload(aws: LocalAws) -> None:
    build = make_build(aws.builds, seed="pv", disks=("pv",))
    rec = Recorder()
    with pytest.raises(ConfigError) as err:
        publish(aws, build, "deploy.virtualization=pv", 'deploy.instance_type="t3.micro"', rec=rec)
    assert str(err.value).startswith(
        '--set deploy.instance_type: "t3.micro" cannot boot paravirtual (PV) images'
    )
    assert "C1, C3, M1, M2, M3 and T1 families" in str(err.value) and "\n" not in str(err.value)
    assert rec.mutating() == []


def test_pv_in_a_region_without_pv_grub_is_refused_before_any_upload(aws: LocalAws) -> None:
    build = make_build(aws.builds, seed="pv", disks=("pv",))
    rec = Recorder()
    with pytest.raises(PipelineError, match="region eu-west-2 has no PV-GRUB hd0 kernel") as err:
        publish(aws, build, *PV_SETTINGS, 'aws.region="eu-west-2"', rec=rec)
    assert "PV regions: us-east-1, us-west-1, us-west-2, eu-west-1" in str(err.value)
    assert rec.mutating() == []


def test_a_build_without_the_wanted_disk_is_a_one_line_error(aws: LocalAws) -> None:
    build = make_build(aws.builds)  # hvm-uefi only
    with pytest.raises(ImageError, match=r"has no pv disk image \(disks: hvm-uefi \(hvm\)\)"):
        publish(aws, build, *PV_SETTINGS)
    (build.directory / build.disk("hvm-uefi")["blocks_file"]).rename(build.directory / "moved")
    try:
        with pytest.raises(ImageError, match=r"disks/hvm-uefi\.blocks\.json is missing"):
            publish(aws, build)
    finally:
        (build.directory / "moved").rename(build.directory / build.disk("hvm-uefi")["blocks_file"])


FULL = (
    'ami.regions=["us-west-2", "eu-west-1"]',
    'ami.share_with=["111122223333", "444455556666"]',
    "ami.deprecate_after_days=30",
)


def test_the_second_run_makes_no_changing_call_at_all(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    first = publish(aws, build, *FULL)
    assert set(first.images) == {"us-east-1", "us-west-2", "eu-west-1"}
    rec = Recorder()
    second = publish(aws, build, *FULL, rec=rec)
    assert rec.mutating() == []
    assert {r: i.image_id for r, i in second.images.items()} == {
        r: i.image_id for r, i in first.images.items()
    }
    assert second.snapshot is None  # nothing looked at the disk again


def test_copies_go_to_every_region_in_parallel_with_client_tokens_and_their_own_tags(aws: LocalAws) -> None:
    import hashlib

    build = make_build(aws.builds)
    rec = Recorder()
    result = publish(aws, build, 'ami.regions=["us-west-2", "eu-west-1", "us-east-1"]', rec=rec)
    home = result.images["us-east-1"]
    copies = rec.named("CopyImage")
    assert sorted(c["SourceRegion"] for c in copies) == ["us-east-1", "us-east-1"]  # not to itself
    for c in copies:
        assert c["SourceImageId"] == home.image_id and c["Name"] == home.name
        assert len(c["ClientToken"]) == 64
    tokens = {c["ClientToken"] for c in copies}
    assert tokens == {
        hashlib.sha256(f"copy-image|{home.image_id}|{r}".encode()).hexdigest()
        for r in ("us-west-2", "eu-west-1")
    }
    for region in ("us-west-2", "eu-west-1"):
        copy = ami.find_image(aws.clients(region), aws.settings(), build.build_id, "hvm", region)
        assert copy is not None and copy.image_id == result.images[region].image_id
        assert copy.tags[T.SOURCE_IMAGE] == f"us-east-1/{home.image_id}"
        assert copy.tags[T.IMAGE_SHA256] == home.tags[T.IMAGE_SHA256]
        # Its snapshot is the region's own, and carries the tags gc selects by.
        (sid,) = copy.block_snapshots
        assert copy.tags[T.SNAPSHOT] == sid
        (s,) = aws.clients(region).ec2().describe_snapshots(SnapshotIds=[sid])["Snapshots"]
        assert T.from_aws(s["Tags"])[T.BUILD_ID] == build.build_id


def test_pv_images_are_copied_only_to_pv_regions(aws: LocalAws) -> None:
    build = make_build(aws.builds, seed="pv", disks=("pv",))
    rec = Recorder()
    result = publish(aws, build, *PV_SETTINGS, 'ami.regions=["eu-west-2", "sa-east-1"]', rec=rec)
    assert set(result.images) == {"us-east-1", "sa-east-1"} and result.skipped_regions == ["eu-west-2"]
    assert [c["SourceRegion"] for c in rec.named("CopyImage")] == ["us-east-1"]


def test_sharing_grants_launch_and_volume_permission_and_follows_the_setting(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    result = publish(aws, build, 'ami.share_with=["111122223333", "444455556666"]')
    image = result.images["us-east-1"]
    ec2 = aws.clients().ec2()

    def launch() -> set[str]:
        attr = ec2.describe_image_attribute(ImageId=image.image_id, Attribute="launchPermission")
        return {p.get("UserId", p.get("Group")) for p in attr["LaunchPermissions"]}

    def volume() -> set[str]:
        attr = ec2.describe_snapshot_attribute(
            SnapshotId=image.tags[T.SNAPSHOT], Attribute="createVolumePermission"
        )
        return {p.get("UserId", p.get("Group")) for p in attr["CreateVolumePermissions"]}

    assert launch() == volume() == {"111122223333", "444455556666"}
    # Someone made it public and the list shrank: the next run puts it back to exactly the list.
    ec2.modify_image_attribute(ImageId=image.image_id, LaunchPermission={"Add": [{"Group": "all"}]})
    rec = Recorder()
    publish(aws, build, 'ami.share_with=["111122223333"]', rec=rec)
    assert launch() == volume() == {"111122223333"}
    (change,) = rec.named("ModifyImageAttribute")
    assert {"Group": "all"} in change["LaunchPermission"]["Remove"]


def test_deprecation_is_requested_and_recorded_where_the_endpoint_cannot_do_it(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    result = publish(aws, build, "ami.deprecate_after_days=30", rec=rec)
    image = result.images["us-east-1"]
    (request,) = rec.named("EnableImageDeprecation")
    expected = (image.created_at() + timedelta(days=30)).replace(second=0, microsecond=0)
    assert request == {"ImageId": image.image_id, "DeprecateAt": expected}
    # The local AWS answers NotImplemented (moto lacks it): the intent is kept as a tag.
    again = ami.find_image(aws.clients(), aws.settings(), build.build_id, "hvm", "us-east-1")
    assert again.tags[T.DEPRECATE_AT] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert any("recorded as a tag only (NotImplemented)" in a for _, a in result.actions)


def test_deprecation_on_aws_is_enabled_once(aws: LocalAws) -> None:
    """Where EnableImageDeprecation works, DescribeImages then reports DeprecationTime: nothing to do."""
    import boto3
    from botocore.stub import Stubber

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    created = images.parse_time("2026-03-01T10:20:30.000Z")
    at = access.deprecation_time(created, 7)
    image = images.ImageRecord(
        "ami-0123456789abcdef0", "us-east-1", "n", "available", "2026-03-01T10:20:30.000Z", {}
    )
    with Stubber(ec2) as stub:
        stub.add_response(
            "enable_image_deprecation", {"Return": True}, {"ImageId": image.image_id, "DeprecateAt": at}
        )
        stub.add_response(
            "create_tags",
            {},
            {
                "Resources": [image.image_id],
                "Tags": [{"Key": "DeprecateAt", "Value": "2026-03-08T10:20:00Z"}],
            },
        )
        assert access.ensure_deprecation(ec2, image, at) == ["deprecation at 2026-03-08T10:20:00Z"]
        stub.assert_no_pending_responses()
    later = images.ImageRecord(
        image.image_id,
        "us-east-1",
        "n",
        "available",
        image.created,
        {},
        deprecation="2026-03-08T10:20:00.000Z",
    )
    with Stubber(ec2):
        assert access.ensure_deprecation(ec2, later, at) == []  # a call now would fail the Stubber


def test_an_image_registered_by_a_run_that_died_before_tagging_is_found_by_name(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    settings = aws.settings()
    clients = aws.clients()
    # A run that uploaded, registered (moto drops the TagSpecifications) and died.
    first = ami.publish(settings, clients, build, progress=False, git=GIT, dry_run=True)
    assert first.upload is not None and first.images == {}
    d = build.disk("hvm-uefi")
    up = snap.Uploader(clients.ebs(), clients.ec2(), aws.root / ".pipeline" / "uploads", progress=False)
    s = up.ensure(
        first.upload, {k: first.upload.tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.TARGET, T.VIRTUALIZATION)}
    )
    image_id = clients.ec2().register_image(Name=first.name, RootDeviceName="/dev/xvda")["ImageId"]
    assert ami.find_image(clients, settings, build.build_id, "hvm", "us-east-1") is None

    rec = Recorder()
    result = publish(aws, build, rec=rec)
    assert result.images["us-east-1"].image_id == image_id
    assert rec.named("RegisterImage") == [] and rec.named("StartSnapshot") == []
    found = ami.find_image(aws.clients(), settings, build.build_id, "hvm", "us-east-1")
    assert found.image_id == image_id and found.tags[T.SNAPSHOT] == s.snapshot_id
    assert found.tags[T.IMAGE_SHA256] == d["sha256"]


def test_dry_run_changes_nothing_and_says_what_it_would_do(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    result = publish(aws, build, 'ami.regions=["us-west-2"]', rec=rec, dry_run=True)
    assert rec.mutating() == []
    assert result.record()["dry_run"] is True
    (home, copy) = result.actions
    assert home[0] == "us-east-1" and home[1].startswith(f"upload {len(build.nonzero('hvm-uefi'))} blocks")
    assert copy == ("us-west-2", f"copy {result.name}")


def test_find_image_selects_by_build_virtualization_app_and_env(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    result = publish(aws, build)
    clients = aws.clients()
    dev = aws.settings()
    assert (
        ami.find_image(clients, dev, build.build_id, "hvm", "us-east-1").image_id
        == result.images["us-east-1"].image_id
    )
    assert ami.find_image(clients, dev, build.build_id, "pv", "us-east-1") is None
    assert ami.find_image(clients, dev, "0" * 16, "hvm", "us-east-1") is None
    assert ami.find_image(clients, aws.settings(env="prod"), build.build_id, "hvm", "us-east-1") is None
    assert ami.find_image(aws.clients("us-west-2"), dev, build.build_id, "hvm", "us-west-2") is None


def test_git_state_names_the_commit_and_whether_the_tree_was_dirty(tmp_path) -> None:
    import subprocess

    assert provenance.git_state(tmp_path) == provenance.GitState("unknown", "unknown")
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert provenance.git_state(tmp_path) == provenance.GitState(head, "false")
    (tmp_path / "f").write_text("2")
    assert provenance.git_state(tmp_path) == provenance.GitState(head, "true")


def test_a_kms_key_encrypts_the_snapshot_and_changes_its_client_token(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    key = aws.clients().client("kms").create_key()["KeyMetadata"]["Arn"]  # the pre-flight resolves it
    result = publish(aws, build, f'ami.kms_key_id="{key}"', rec=rec)
    (start,) = rec.named("StartSnapshot")
    assert start["Encrypted"] is True and start["KmsKeyArn"] == key
    plain = result.upload
    assert start["ClientToken"] == plain.client_token()
    unencrypted = delta.UploadPlan(**{**plain.__dict__, "kms_key_id": ""})
    assert unencrypted.client_token() != start["ClientToken"]


def test_an_unknown_region_is_refused_before_any_upload(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    rec = Recorder()
    with pytest.raises(PipelineError) as err:
        publish(aws, build, 'ami.regions=["eu-west-1", "zz-north-1"]', rec=rec)
    assert str(err.value).startswith('--set ami.regions: unknown AWS region "zz-north-1"')
    assert rec.mutating() == []


def test_an_aws_error_is_one_line_naming_the_call_and_code(aws: LocalAws) -> None:
    from botocore.stub import Stubber

    from pipeline.errors import AwsError

    clients = aws.clients()
    with Stubber(clients.ec2()) as stub:
        stub.add_client_error("describe_images", "UnauthorizedOperation", "You are not authorized.", 403)
        with pytest.raises(AwsError) as err:
            ami.find_image(clients, aws.settings(), "0" * 16, "hvm", "us-east-1")
    assert str(err.value) == (
        "AWS denied DescribeImages (UnauthorizedOperation): You are not authorized. "
        "(hint: invoke iam-policy prints the policy the pipeline needs; attach it to these credentials)"
    )
