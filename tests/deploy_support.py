"""Helpers for the deploy tests: in-process moto (so that the tests can reach into its models) and the
stand-ins for what moto does not model. (Sessions, the call recorder and the fake clock: ``awstest.py``.)

moto accepts nonsense and reports every target healthy, so the tests assert on the requests the
pipeline sends (recorded here) and drive what moto cannot do through the doubles below, each of which
follows the behaviour of the real service it stands in for:

- :class:`TargetHealth` replaces moto's fake target health (always ``healthy``) with states the test
  chooses per AMI, as ELBv2 reports them (``initial``, ``healthy``, ``unhealthy``; ``draining`` for a
  terminated instance that is leaving its group);
- :func:`fail_updates` makes a stack update fail the way CloudFormation reports it: a resource event
  ``UPDATE_FAILED`` with a reason, then ``UPDATE_ROLLBACK_IN_PROGRESS`` and ``UPDATE_ROLLBACK_COMPLETE``
  with the previous parameters kept (moto applies every update and has no rollback);
- :func:`register_ami` stands in for the ``ami`` stage where a test is about the rollout, not the image:
  an AMI carrying the pipeline's tags. (The full cycle runs the real ``ami`` stage on
  :func:`two_releases`, two real beam builds.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from awstest import Recorder, new_session

from pipeline import build, config
from pipeline.aws import tags
from pipeline.aws.session import Clients
from pipeline.build import BuildResult
from pipeline.config import Settings
from tests.project import copy_project

REGION = "us-east-1"


@pytest.fixture
def aws_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and an in-process moto (with the local AWS's CloudFormation fixes and AWS rules)
    for the test."""
    from moto import mock_aws

    from pipeline.local import aws_rules, cfn_fixes

    cfn_fixes.apply()
    aws_rules.apply()

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def make_clients(recorder: Recorder | None = None, session_: boto3.Session | None = None) -> Clients:
    """Clients on the in-process moto (created after the mock started), recorded if asked."""
    session_ = session_ or new_session(REGION)
    if recorder is not None:
        recorder.attach(session_)
    return Clients(region=REGION, session=session_)


def register_ami(clients: Clients, settings: Settings, build_id: str, virtualization: str = "hvm") -> str:
    """Stand-in for the ami stage: register an AMI tagged as the pipeline tags its images."""
    ec2 = clients.ec2()
    name = tags.image_name(settings.app.name, settings.env, settings.image.target, virtualization, build_id)
    image_id: str = ec2.register_image(
        Name=name,
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm" if virtualization == "hvm" else "paravirtual",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-00000000", "VolumeSize": 1}}
        ],
    )["ImageId"]
    ec2.create_tags(
        Resources=[image_id],
        Tags=tags.to_aws(
            tags.scope(
                settings.app.name,
                settings.env,
                {
                    tags.TARGET: settings.image.target,
                    tags.BUILD_ID: build_id,
                    tags.VIRTUALIZATION: virtualization,
                },
            )
        ),
    )
    return image_id


class TargetHealth:
    """Target health chosen by the test, per AMI: ``states[image_id]`` is a state or a function of the
    number of times that image's targets were asked about (default ``healthy``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.elbv2 import models

        self.states: dict[str, str | Callable[[int], str]] = {}
        self.asked: dict[str, int] = {}
        original = models.FakeTargetGroup.health_for
        control = self

        def health_for(group: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
            status = original(group, target, ec2_backend)
            if status.status != "healthy" or not target["Id"].startswith("i-"):
                return status
            instance = ec2_backend.get_instance_by_id(target["Id"])
            if instance is None or instance.state == "terminated":
                # an instance of a replaced group leaves its target group (moto keeps it registered)
                return models.FakeHealthStatus(
                    target["Id"], status.port, None, "draining", "Target.DeregistrationInProgress"
                )
            state = control.state_for(instance.image_id)
            if state == "healthy":
                return status
            reason = {"initial": "Elb.RegistrationInProgress", "unhealthy": "Target.ResponseCodeMismatch"}
            return models.FakeHealthStatus(target["Id"], status.port, None, state, reason.get(state))

        monkeypatch.setattr(models.FakeTargetGroup, "health_for", health_for)

    def state_for(self, image_id: str) -> str:
        n = self.asked.get(image_id, 0)
        self.asked[image_id] = n + 1
        chosen = self.states.get(image_id, "healthy")
        return chosen(n) if callable(chosen) else chosen


def fail_updates(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[Mapping[str, Any]], bool], resource: str
) -> list[int]:
    """Make the stack updates whose parameters satisfy ``when`` fail as CloudFormation reports it.

    Returns a list that grows by one for each update made to fail.
    """
    from moto.cloudformation import models

    original = models.Stack.update
    failed: list[int] = []

    def update(
        self: Any, template: str, role_arn: str | None = None, parameters: Any = None, tags: Any = None
    ) -> None:
        if parameters is None or not when({k: str(v) for k, v in parameters.items()}):
            original(self, template, role_arn, parameters=parameters, tags=tags)
            return
        failed.append(1)

        def event(logical: str, kind: str, status: str, reason: str | None = None) -> None:
            physical = self.stack_id if kind == "AWS::CloudFormation::Stack" else f"{self.name}-{logical}"
            self.events.append(
                models.Event(self.stack_id, self.name, logical, physical, kind, status, reason, None)
            )

        stack_kind = "AWS::CloudFormation::Stack"
        event(self.name, stack_kind, "UPDATE_IN_PROGRESS", "User Initiated")
        event(resource, "AWS::AutoScaling::AutoScalingGroup", "UPDATE_IN_PROGRESS")
        event(
            resource,
            "AWS::AutoScaling::AutoScalingGroup",
            "UPDATE_FAILED",
            "Group did not stabilize. {current/minSize/maxSize} group size = {0/1/1}.",
        )
        event(
            self.name,
            stack_kind,
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to update: [" + resource + "].",
        )
        event(resource, "AWS::AutoScaling::AutoScalingGroup", "UPDATE_COMPLETE")
        event(self.name, stack_kind, "UPDATE_ROLLBACK_COMPLETE")
        self.status = "UPDATE_ROLLBACK_COMPLETE"

    monkeypatch.setattr(models.Stack, "update", update)
    return failed


def slow_updates(monkeypatch: pytest.MonkeyPatch, when: Callable[[Mapping[str, Any]], bool]) -> None:
    """Leave the stack ``UPDATE_IN_PROGRESS`` after the updates whose parameters satisfy ``when``, as
    CloudFormation does while it works (moto finishes every update before answering); the test ends
    the update with :func:`set_stack_status`."""
    from moto.cloudformation import models

    original = models.Stack.update

    def update(
        self: Any, template: str, role_arn: str | None = None, parameters: Any = None, tags: Any = None
    ) -> None:
        original(self, template, role_arn, parameters=parameters, tags=tags)
        if parameters is not None and when({k: str(v) for k, v in parameters.items()}):
            self.status = "UPDATE_IN_PROGRESS"

    monkeypatch.setattr(models.Stack, "update", update)


def set_stack_status(name: str, status: str) -> None:
    """Put the moto stack ``name`` into ``status`` (states moto never reaches by itself)."""
    from moto.cloudformation.models import cloudformation_backends

    backend = cloudformation_backends["123456789012"][REGION]
    for stack in backend.stacks.values():
        if stack.name == name:
            stack.status = status
            return
    raise KeyError(name)


V2 = 'app.config.greeting="Hello, v2"'  # a configuration change: a new build, a new AMI, a new release


@dataclass(frozen=True)
class TwoReleases:
    """A copy of the project with two finished beam builds: v1, and v2 with another greeting."""

    project: Path
    v1: BuildResult
    v2: BuildResult

    def settings(self, release: str, *overrides: str) -> Settings:
        change = [V2] if release == "v2" else []
        return config.load(self.project, env="dev", overrides=[*overrides, *change])


@pytest.fixture(scope="session")
def two_releases(tmp_path_factory: pytest.TempPathFactory) -> TwoReleases:
    """Built once per test session (a beam build takes seconds: kernel, initramfs, two disks)."""
    project = copy_project(tmp_path_factory.mktemp("releases") / "proj")
    v1 = build.build(config.load(project, env="dev"))
    v2 = build.build(config.load(project, env="dev", overrides=[V2]))
    return TwoReleases(project, v1, v2)
