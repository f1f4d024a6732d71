"""invoke gc: what is kept (newest N, what stacks and launch templates use, running uploads) and what goes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from awstest import Recorder
from localaws import LocalAws
from synthetic import make_build

from pipeline.aws import ami, gc, provenance
from pipeline.aws import snapshot as snap
from pipeline.aws import tags as T
from pipeline.aws.images import ImageRecord, describe_images

GIT = provenance.GitState("unknown", "unknown")


def publish_series(aws: LocalAws, count: int, *overrides: str, env: str = "dev") -> list[ImageRecord]:
    """Publish ``count`` config-only rebuilds, one per clock second (CreationDate has 1 s resolution)."""
    settings = aws.settings(*overrides, env=env)
    published = []
    for n in range(count):
        second = int(time.time())
        deadline = time.monotonic() + 5
        while int(time.time()) == second and time.monotonic() < deadline:
            time.sleep(0.05)
        build = make_build(aws.builds, config=f"greeting=release {n}", env=env)
        result = ami.publish(settings, aws.clients(), build, progress=False, git=GIT)
        published.append(result.images[settings.aws.region])
    return published


def stack_using(aws: LocalAws, image_id: str, name: str = "erlang-web-dev") -> None:
    template = {
        "Parameters": {"BlueImageId": {"Type": "String"}, "GreenImageId": {"Type": "String"}},
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
    }
    aws.clients().cloudformation().create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": "BlueImageId", "ParameterValue": image_id},
            {"ParameterKey": "GreenImageId", "ParameterValue": ""},
        ],
    )


def exists(aws: LocalAws, image: ImageRecord) -> bool:
    ec2 = aws.clients(image.region).ec2()
    return bool(
        ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [image.image_id]}])[
            "Images"
        ]
    )


def snapshot_exists(aws: LocalAws, snapshot_id: str, region: str = "us-east-1") -> bool:
    ec2 = aws.clients(region).ec2()
    found = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])["Snapshots"]
    return bool(found)


def test_gc_keeps_the_newest_and_what_stacks_and_launch_templates_use(aws: LocalAws) -> None:
    i0, i1, i2, i3 = publish_series(aws, 4)
    stack_using(aws, i0.image_id)
    aws.clients().ec2().create_launch_template(
        LaunchTemplateName="green", LaunchTemplateData={"ImageId": i1.image_id}
    )
    settings = aws.settings("ami.keep=1")

    rec = Recorder()
    plan = gc.plan(aws.clients(recorder=rec), settings)
    assert rec.mutating() == []  # planning only reads
    removals = {(r.kind, r.resource_id): r for r in plan.removals}
    assert set(removals) == {("image", i2.image_id), ("snapshot", i2.tags[T.SNAPSHOT])}
    assert "older than the newest 1 beam/hvm images" in removals[("image", i2.image_id)].reason
    assert removals[("snapshot", i2.tags[T.SNAPSHOT])].reason == f"snapshot of {i2.image_id}, which goes"
    kept = {k[1]: k[2] for k in plan.kept}
    assert kept[i3.image_id] == "one of the newest 1 beam/hvm images"
    assert kept[i0.image_id] == "stack erlang-web-dev (BlueImageId)"
    assert kept[i1.image_id] == "launch template green"

    assert gc.apply(aws.clients(), settings, plan) == []
    assert [exists(aws, i) for i in (i0, i1, i2, i3)] == [True, True, False, True]
    assert not snapshot_exists(aws, i2.tags[T.SNAPSHOT])
    assert all(snapshot_exists(aws, i.tags[T.SNAPSHOT]) for i in (i0, i1, i3))
    # Nothing more to do.
    assert gc.plan(aws.clients(), settings).removals == []


def test_gc_collects_copies_in_every_region_and_leaves_other_envs_alone(aws: LocalAws) -> None:
    regions = 'ami.regions=["us-west-2"]'
    publish_series(aws, 1, regions, env="prod")
    dev = publish_series(aws, 2, regions)
    settings = aws.settings("ami.keep=1", regions)
    plan = gc.plan(aws.clients(), settings)
    assert sorted((r.region, r.kind) for r in plan.removals) == [
        ("us-east-1", "image"),
        ("us-east-1", "snapshot"),
        ("us-west-2", "image"),
        ("us-west-2", "snapshot"),
    ]
    old_copy = ami.find_image(aws.clients("us-west-2"), settings, dev[0].build_id, "hvm", "us-west-2")
    assert old_copy.image_id in {r.resource_id for r in plan.removals}
    assert gc.apply(aws.clients(), settings, plan) == []
    assert not exists(aws, old_copy) and not snapshot_exists(aws, old_copy.block_snapshots[0], "us-west-2")
    prod = aws.settings(regions, env="prod")
    assert gc.plan(aws.clients(), prod, keep=1).removals == []  # prod's single image was never a candidate
    assert len(describe_images(aws.clients().ec2(), "us-east-1", {T.ENV: "prod"})) == 1


def test_incomplete_uploads_go_after_the_grace_period_unless_still_running_here(aws: LocalAws) -> None:
    build = make_build(aws.builds)
    settings = aws.settings()
    clients = aws.clients()
    dry = ami.publish(settings, clients, build, progress=False, git=GIT, dry_run=True)
    uploads = settings.work_dir / "uploads"
    up = snap.Uploader(clients.ebs(), clients.ec2(), uploads, progress=False)
    orphan = up._start(dry.upload)  # a run that died right after StartSnapshot

    now = datetime.now(UTC)
    assert gc.plan(clients, settings, now=lambda: now).removals == []
    assert ("us-east-1", orphan, "incomplete upload younger than 2 h") in gc.plan(clients, settings).kept
    later = gc.plan(clients, settings, now=lambda: now + timedelta(hours=3))
    (removal,) = later.removals
    assert removal.resource_id == orphan and removal.reason.startswith("incomplete upload, started 3 h ago")
    with snap.upload_lock(uploads, dry.upload.image_sha256):
        running = gc.plan(clients, settings, now=lambda: now + timedelta(hours=3))
        assert (
            running.removals == [] and ("us-east-1", orphan, "upload running on this machine") in running.kept
        )
    assert gc.apply(clients, settings, later) == []
    assert not snapshot_exists(aws, orphan)


def test_gc_reads_tags_again_and_spares_what_is_no_longer_the_pipelines(aws: LocalAws) -> None:
    images = publish_series(aws, 2)
    settings = aws.settings("ami.keep=1")
    plan = gc.plan(aws.clients(), settings)
    doomed_snapshot = images[0].tags[T.SNAPSHOT]
    assert ("snapshot", doomed_snapshot) in {(r.kind, r.resource_id) for r in plan.removals}
    # Between plan and apply, someone claims the snapshot.
    aws.clients().ec2().delete_tags(Resources=[doomed_snapshot], Tags=[{"Key": T.MANAGED}])
    failures = gc.apply(aws.clients(), settings, plan)
    assert [(f[0].resource_id, f[1]) for f in failures] == [
        (doomed_snapshot, "its tags no longer say it is the pipeline's; left alone")
    ]
    assert snapshot_exists(aws, doomed_snapshot) and not exists(aws, images[0])


def test_invoke_gc_is_a_dry_run_without_yes(aws: LocalAws, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from invoke.context import MockContext

    import tasks

    images = publish_series(aws, 2)
    monkeypatch.chdir(aws.root)
    tasks.gc(MockContext(), set_=[f"local.port={aws.port}", "ami.keep=1"])
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == f"AWS: local AWS (moto) at {aws.url}, region us-east-1"
    assert "gc: would remove (dry run; --yes to remove)" in err
    would = json.loads(out)["would_remove"]
    assert {(w["kind"], w["id"]) for w in would} == {
        ("image", images[0].image_id),
        ("snapshot", images[0].tags[T.SNAPSHOT]),
    }
    assert exists(aws, images[0])
    tasks.gc(MockContext(), set_=[f"local.port={aws.port}"], keep="1", yes=True)
    out, err = capsys.readouterr()
    assert "gc: removed 2" in err and len(json.loads(out)["removed"]) == 2
    assert not exists(aws, images[0]) and exists(aws, images[1])


def test_invoke_gc_flags_are_checked(aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> None:
    from invoke.context import MockContext
    from invoke.exceptions import Exit

    import tasks

    monkeypatch.chdir(aws.root)
    with pytest.raises(Exit, match='--keep: expected a whole number, got "three"'):
        tasks.gc(MockContext(), set_=[f"local.port={aws.port}"], keep="three")
    with pytest.raises(Exit, match=r"--keep \(ami\.keep\): expected integer 1-100, got 0"):
        tasks.gc(MockContext(), set_=[f"local.port={aws.port}"], keep="0")
    with pytest.raises(Exit, match="--grace-minutes: expected 0 or more, got -5"):
        tasks.gc(MockContext(), set_=[f"local.port={aws.port}"], grace_minutes="-5")


def test_gc_keeps_the_images_of_the_last_live_releases_in_the_stack_history(aws: LocalAws) -> None:
    """ami.keep=2: the two newest images, and the last two releases that went live (from the stack's
    History parameter), not a release that never went live nor an older live one."""
    from pipeline.aws import history
    from pipeline.aws.params import Release

    i0, i1, i2, i3, i4 = publish_series(aws, 5)
    h: tuple[history.Entry, ...] = ()
    for image, outcome in ((i0, "baked"), (i1, "baked"), (i2, "rolled back"), (i1, "baked")):
        rel = Release(image.image_id, image.build_id, "t3.micro", "hvm")
        h, e = history.start(h, "deploy", rel, "blue", 1_800_000_000)
        h = history.finish(h, e.n, outcome, live_at=1_800_000_100 if outcome == "baked" else None)
    # i0 went live, then i1, i2 failed, i1 again: the last two live releases are i1 and i0
    template = {
        "Parameters": {"BlueImageId": {"Type": "String"}, "History": {"Type": "String"}},
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}},
    }
    aws.clients().cloudformation().create_stack(
        StackName="erlang-web-dev",
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": "BlueImageId", "ParameterValue": i1.image_id},
            {"ParameterKey": "History", "ParameterValue": history.encode(h)},
        ],
    )
    plan = gc.plan(aws.clients(), aws.settings("ami.keep=2"))
    assert {r.resource_id for r in plan.removals if r.kind == "image"} == {i2.image_id}
    kept = {k[1]: k[2] for k in plan.kept}
    assert kept[i0.image_id] == "stack erlang-web-dev: live release 2 of the last 2"
    assert kept[i1.image_id] == "stack erlang-web-dev (BlueImageId)"
    assert {kept[i3.image_id], kept[i4.image_id]} == {"one of the newest 2 beam/hvm images"}
    assert "not one of the last 2 live releases" in next(r.reason for r in plan.removals if r.kind == "image")
    # with ami.keep=1 only the newest live release (i1) counts, and i0 goes too
    narrow = gc.plan(aws.clients(), aws.settings("ami.keep=1"))
    assert {r.resource_id for r in narrow.removals if r.kind == "image"} == {
        i0.image_id,
        i2.image_id,
        i3.image_id,
    }
