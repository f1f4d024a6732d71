"""``invoke ami`` end to end against the local AWS: says which AWS first; idempotent; clear errors."""

from __future__ import annotations

import json

import pytest
from awstest import Recorder
from invoke.context import MockContext
from invoke.exceptions import Exit
from localaws import LocalAws
from synthetic import make_build

import tasks
from pipeline import build as builder
from pipeline.aws import session


@pytest.fixture
def project(aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalAws, Recorder]:
    """The task runs in the local AWS's project, on a synthetic build, with its calls recorded."""
    build = make_build(aws.builds)
    rec = Recorder()
    monkeypatch.chdir(aws.root)
    monkeypatch.setattr(builder, "find", lambda settings: build)
    real = session.clients

    def recorded(settings):
        found = real(settings)  # starts (here: finds) the local AWS, as the task would
        assert found.endpoint_url == aws.url
        return aws.clients(found.region, recorder=rec)

    monkeypatch.setattr(session, "clients", recorded)
    return aws, rec


def test_invoke_ami_twice_changes_nothing_the_second_time(project, capsys) -> None:
    aws, rec = project
    args = [f"local.port={aws.port}", 'ami.regions=["eu-west-1"]', 'ami.share_with=["111122223333"]']
    tasks.ami(MockContext(), set_=args)
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == f"AWS: local AWS (moto) at {aws.url}, region us-east-1"
    first = json.loads(out)
    assert set(first["images"]) == {"us-east-1", "eu-west-1"}
    assert ("ec2", "RegisterImage") in rec.mutating() and ("ebs", "PutSnapshotBlock") in rec.mutating()

    rec.clear()
    tasks.ami(MockContext(), set_=args)
    out, err = capsys.readouterr()
    assert json.loads(out)["images"] == first["images"]
    assert rec.mutating() == []
    assert err.splitlines()[0].startswith("AWS: local AWS (moto)")


def test_invoke_ami_turns_a_bad_setting_into_one_line_and_exit_1(project, capsys) -> None:
    aws, rec = project
    with pytest.raises(Exit) as exit_:
        tasks.ami(MockContext(), set_=[f"local.port={aws.port}", "deploy.virtualization=pv"])
    assert exit_.value.code == 1
    message = str(exit_.value.message)
    assert message.startswith("error: pipeline.toml: deploy.instance_type:") and "\n" not in message
    assert rec.mutating() == []
