"""An upload killed with SIGKILL (no cleanup runs) is completed by the next run, with nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from awstest import Recorder
from localaws import LocalAws
from synthetic import MIB, Layout, make_build

import pipeline
from pipeline.aws import ami, delta, gc, provenance
from pipeline.aws import tags as T


def test_an_upload_killed_mid_way_completes_on_the_next_run_and_gc_finds_no_orphan(
    aws: LocalAws, tmp_path: Path
) -> None:
    build = make_build(aws.builds, seed="sigkill", layout=Layout(kernel_bytes=40 * MIB))
    total = len(build.nonzero("hvm-uefi"))
    marker = tmp_path / "sent"
    env = dict(os.environ, PYTHONPATH=str(Path(pipeline.__file__).resolve().parent.parent))
    child = Path(__file__).with_name("upload_child.py")
    argv = [
        sys.executable,
        str(child),
        aws.url,
        str(aws.port),
        str(aws.root),
        str(build.directory),
        str(marker),
    ]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.is_file() and len(marker.read_text().split()) >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the upload ended before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    sent_before = len(marker.read_text().split())
    assert 20 <= sent_before < total

    settings = aws.settings()
    clients = aws.clients()
    sha = build.disk("hvm-uefi")["sha256"]
    (orphan,) = delta.describe_snapshots(clients.ec2(), {T.IMAGE_SHA256: sha})
    assert T.from_aws(orphan["Tags"])[T.UPLOAD] == "incomplete"
    assert ami.find_image(clients, settings, build.build_id, "hvm", "us-east-1") is None

    rec = Recorder()
    clients = aws.clients(recorder=rec)
    result = ami.publish(
        settings, clients, build, progress=False, git=provenance.GitState("unknown", "unknown")
    )

    assert result.snapshot is not None and result.snapshot.resumed
    assert result.snapshot.snapshot_id == orphan["SnapshotId"]
    assert rec.named("StartSnapshot") == [] and len(rec.named("RegisterImage")) == 1
    (only,) = delta.describe_snapshots(clients.ec2(), {T.IMAGE_SHA256: sha})
    assert only["SnapshotId"] == orphan["SnapshotId"]
    assert T.from_aws(only["Tags"])[T.UPLOAD] == "complete"
    image = ami.find_image(clients, settings, build.build_id, "hvm", "us-east-1")
    assert image is not None and image.tags[T.SNAPSHOT] == orphan["SnapshotId"]

    # gc, even with no grace period, finds nothing left over.
    from datetime import timedelta

    plan = gc.plan(clients, settings, grace=timedelta(0))
    assert plan.removals == []
    incomplete = delta.describe_snapshots(clients.ec2(), {T.UPLOAD: T.UPLOAD_INCOMPLETE})
    assert incomplete == []
