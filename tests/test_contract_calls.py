"""Every AWS call the pipeline makes, checked against what AWS accepts (``tests/contract.py``): the
operation's service model and the documented rules the model lacks. Nobody can satisfy these by
agreeing with moto: the local AWS only serves the flow, the requests are judged on their own.

The flow makes every call the pipeline's AWS code contains: two encrypted images (a full upload with
the key resolved from an alias, then a config-only delta), copied to a second region, shared and
deprecated; a first deploy, a blue/green release with its plan, status, a rollback, a destroy and a
gc. It runs once for the module against its own local AWS (no VMs: ``local.run_instances=false``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from awstest import Call, FakeClock, Recorder
from contract import RULES, aws_operations, model_problems, rule_problems
from localaws import write_project
from synthetic import make_build

from pipeline import config
from pipeline.aws import ami, deploy, gc, logs, preflight, provenance, rollback
from pipeline.aws import status as stack_status
from pipeline.aws.deploy import Runtime
from pipeline.aws.session import Clients
from pipeline.local import server
from tests.erlnode import free_port

GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Call]]:
    root = tmp_path_factory.mktemp("contract")
    write_project(root)
    overrides = [
        f"local.port={free_port()}",
        f"deploy.listener_port={free_port()}",
        "local.run_instances=false",
        'ami.regions=["us-west-2"]',
        'ami.share_with=["111122223333"]',
        "ami.deprecate_after_days=30",
        'ami.kms_key_id="alias/images"',
        "ami.keep=1",
        "deploy.weight_steps=[50, 100]",
        "deploy.bake_seconds=60",
        "deploy.retention_seconds=60",
    ]
    settings = config.load(root, env="dev", overrides=overrides)
    url = server.ensure_running(settings)
    try:
        kms = Clients(region="us-east-1", endpoint_url=url).kms()
        key = kms.create_key(Description="images")["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName="alias/images", TargetKeyId=key)
        rec = Recorder()
        session_clients = Clients(region="us-east-1", endpoint_url=url)
        rec.attach(session_clients.session)
        clock = FakeClock()
        rt = Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda _q: True)
        wait = {"sleep": clock.sleep, "clock": clock.clock}
        builds = root / ".pipeline" / "builds"
        one = make_build(builds, config="greeting=one")
        two = make_build(builds, config="greeting=two")
        ami.publish(settings, session_clients, one, progress=False, git=GIT, **wait)
        ami.publish(settings, session_clients, two, progress=False, git=GIT, **wait)
        deploy.deploy(settings, session_clients, rt, build_id=one.build_id)
        logs.show(session_clients, settings, lambda _line: None, None, None, 5)
        deploy.deploy(settings, session_clients, rt, build_id=two.build_id)
        assert stack_status.status(settings, session_clients) is not None
        rollback.rollback(settings, session_clients, rt)
        deploy.deploy(settings, session_clients, rt, build_id=one.build_id)  # live already: no change
        gc.plan(session_clients, settings)  # while the stack's launch templates exist
        # the pre-flight of a configured network (the stack above made its own)
        ec2 = session_clients.ec2()
        vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{n}.0/24", AvailabilityZone=f"us-east-1{z}")
            for n, z in ((1, "a"), (2, "b"))
        ]
        ids = ",".join(f"'{s['Subnet']['SubnetId']}'" for s in subnets)
        elsewhere = config.load(
            root, env="dev", overrides=[*overrides, f"deploy.vpc_id={vpc}", f"deploy.subnet_ids=[{ids}]"]
        )
        preflight.for_deploy(elsewhere, session_clients)
        gone = stack_status.destroy(settings, session_clients, rt)
        assert gone.collectable is not None
        assert (
            gc.apply(session_clients, settings, gc.plan(session_clients, settings, grace=gc.timedelta(0)))
            == []
        )
        yield rec.calls
    finally:
        server.stop(settings)


def test_every_call_fits_the_service_model(calls: list[Call]) -> None:
    problems = [p for c in calls for p in model_problems(c.service, c.operation, c.params)]
    assert problems == []


def test_every_call_keeps_the_documented_rules(calls: list[Call]) -> None:
    problems = [p for c in calls for p in rule_problems(c.service, c.operation, c.params)]
    assert problems == []
    # and the rules were put to the test: each operation they cover was called
    made = {(c.service, c.operation) for c in calls}
    untested = {(r.service, r.operation) for r in RULES} - made - {("cloudformation", "ExecuteChangeSet")}
    assert untested == set()


def test_every_call_in_the_pipelines_aws_code_was_made_and_checked(calls: list[Call]) -> None:
    made = {(c.service, c.operation) for c in calls}
    missing = {name: ops for name, ops in aws_operations().items() if not ops & made}
    assert missing == {}


def test_the_encrypted_delta_names_only_its_parent(calls: list[Call]) -> None:
    starts = [c.params for c in calls if c.operation == "StartSnapshot"]
    full, delta = starts  # the first image in full, the config-only rebuild as a delta
    assert full["Encrypted"] is True and full["KmsKeyArn"].startswith("arn:aws:kms:")
    assert "ParentSnapshotId" in delta and "Encrypted" not in delta and "KmsKeyArn" not in delta


# -- the checks themselves: they reject what AWS rejects -------------------------------------------------


@pytest.mark.parametrize(
    ("service", "operation", "params", "says"),
    [
        ("ebs", "StartSnapshot", {"VolumeSize": 1, "ParentSnapshotId": "snap-0a", "Encrypted": True,
                                  "ClientToken": "t"}, "ParentSnapshotId with Encrypted"),
        ("ebs", "StartSnapshot", {"VolumeSize": 1, "ParentSnapshotId": "snap-0a", "ClientToken": "t",
                                  "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k"}, "with KmsKeyArn"),
        ("ebs", "StartSnapshot", {"VolumeSize": 1}, "no ClientToken"),
        ("ebs", "PutSnapshotBlock", {"SnapshotId": "snap-0a", "BlockIndex": 0, "BlockData": b"x" * 10,
                                     "DataLength": 10, "Checksum": "00" * 32, "ChecksumAlgorithm": "SHA256"},
         "DataLength 10"),
        ("cloudformation", "UpdateStack", {"StackName": "s", "TemplateBody": "{}"}, "no ClientRequestToken"),
        ("ec2", "CopyImage", {"Name": "n" * 3, "SourceImageId": "ami-1", "SourceRegion": "us-east-1",
                              "ClientToken": "x" * 65}, "ClientToken"),
        ("ec2", "RegisterImage", {"Name": "a*b", "RootDeviceName": "/dev/xvda"}, "AMI name 'a*b'"),
    ],
)  # fmt: skip
def test_a_request_aws_refuses_is_caught(service: str, operation: str, params: dict, says: str) -> None:
    assert any(says in p for p in rule_problems(service, operation, params))


def test_the_model_check_catches_what_botocore_leaves_to_aws() -> None:
    # a pattern (botocore does not check patterns), a maximum, an unknown member, an enum
    assert model_problems("ebs", "StartSnapshot", {"VolumeSize": 1, "KmsKeyArn": "alias/images"}) == [
        "StartSnapshot.KmsKeyArn: 'alias/images' does not match 'arn:aws[a-z\\\\-]*:kms:.*:[0-9]{12}:key/.*'"
    ]
    assert model_problems("ec2", "CopyImage", {"Name": "x" * 129, "SourceImageId": "a", "SourceRegion": "r"})
    assert model_problems("cloudformation", "DeleteStack", {"StackName": "s", "Retain": True})
    assert model_problems("ec2", "RegisterImage", {"Name": "abc", "BootMode": "bios"})
    assert model_problems("ebs", "CompleteSnapshot", {"SnapshotId": "snap-0a"}) == [
        "CompleteSnapshot.ChangedBlocksCount: required"
    ]


def test_rules_cite_their_page() -> None:
    assert all(r.doc.startswith("https://docs.aws.amazon.com/") for r in RULES)
    assert Path(__file__).name  # the rules live in tests/contract.py beside this suite
