"""The pre-flight: ids and names checked against the AWS a task acts on, before any change.

The requests are pinned with botocore's Stubber, answered as AWS answers them (DescribeInstanceTypes
refuses a type the region does not offer with InvalidInstanceType; EC2 API reference). Flows run on
in-process moto, whose instance type data is AWS's own: a test below checks it against the documented
table (pipeline/aws/boot_modes.py) so that the local AWS cannot drift from what AWS says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from awstest import Recorder
from botocore.stub import Stubber

from pipeline import config
from pipeline.aws import boot_modes, deploy, preflight, pv, rollback
from pipeline.aws.deployment import Runtime
from pipeline.aws.session import Clients
from pipeline.errors import ConfigError
from tests.deploy_support import make_clients, register_ami

REPO = Path(__file__).resolve().parent.parent
BUILD = "1111111111aa"
pytestmark = pytest.mark.usefixtures("aws_in_process")


def settings(*overrides: str) -> config.Settings:
    return config.load(REPO, env="dev", overrides=list(overrides))


def refusal(s: config.Settings, clients: Clients | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        preflight.for_deploy(s, clients or make_clients())
    line = str(err.value)
    assert "\n" not in line and "(hint: " in line
    return line


def default_subnets(clients: Clients) -> tuple[str, dict[str, str]]:
    """moto's default VPC and its subnets by zone (one per zone, as in a default VPC on AWS)."""
    ec2 = clients.ec2()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    return vpc, {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}


def network(vpc: str, *subnets: str) -> tuple[str, str]:
    return f"deploy.vpc_id={vpc}", f"deploy.subnet_ids={list(subnets)!r}"


# -- network ------------------------------------------------------------------------------------------------


def test_an_own_vpc_needs_no_network_calls() -> None:
    rec = Recorder()
    preflight.for_deploy(settings(), make_clients(rec))
    assert {c.operation for c in rec.calls} == {"DescribeInstanceTypes", "DescribeInstanceTypeOfferings"}


def test_a_vpc_that_does_not_exist_is_refused() -> None:
    line = refusal(settings(*network("vpc-0123456789abcdef0", "subnet-11111111", "subnet-22222222")))
    assert line.startswith("--set deploy.vpc_id: there is no VPC vpc-0123456789abcdef0 in us-east-1")


def test_subnets_that_do_not_exist_are_named() -> None:
    clients = make_clients()
    vpc, subnets = default_subnets(clients)
    line = refusal(settings(*network(vpc, subnets["us-east-1a"], "subnet-0000000000000000f")), clients)
    assert line.startswith(
        "--set deploy.subnet_ids: there is no subnet subnet-0000000000000000f in us-east-1"
    )


def test_subnets_of_another_vpc_are_refused() -> None:
    clients = make_clients()
    vpc, subnets = default_subnets(clients)
    other = clients.ec2().create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    line = refusal(settings(*network(other, subnets["us-east-1a"], subnets["us-east-1b"])), clients)
    assert f"not subnets of {other}" in line and f"(of {vpc})" in line


def test_subnets_in_one_zone_are_refused() -> None:
    clients = make_clients()
    ec2 = clients.ec2()
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    ids = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.8.{i}.0/24", AvailabilityZone="us-east-1a")["Subnet"][
            "SubnetId"
        ]
        for i in (1, 2)
    ]
    line = refusal(settings(*network(vpc, *ids)), clients)
    assert "the subnets are all in us-east-1a, but a load balancer needs subnets in at least 2" in line


def test_subnets_of_the_vpc_in_two_zones_pass() -> None:
    clients = make_clients()
    vpc, subnets = default_subnets(clients)
    s = settings(*network(vpc, subnets["us-east-1a"], subnets["us-east-1b"]))
    assert preflight.check_network(s, clients) == ["us-east-1a", "us-east-1b"]
    preflight.for_deploy(s, clients)


def test_the_instance_type_must_be_offered_where_the_subnets_are() -> None:
    """m3.medium is offered in us-east-1a, b, c and e only (EC2's offerings, as moto carries them)."""
    clients = make_clients()
    vpc, subnets = default_subnets(clients)
    s = settings(
        *network(vpc, subnets["us-east-1a"], subnets["us-east-1d"]),
        "deploy.virtualization=pv",
        "deploy.instance_type=m3.medium",
    )
    line = refusal(s, clients)
    assert line.startswith(
        "--set deploy.instance_type: EC2 offers m3.medium in us-east-1 but not in us-east-1d"
    )


# -- instance types -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "virtualization", "says"),
    [
        ("t3.nano2", "hvm", 'EC2 offers no instance type "t3.nano2" in us-east-1'),
        ("t2.micro", "hvm", "t2.micro cannot boot the beam image (hvm), which boots through UEFI"),
        ("m4.large", "hvm", "boots legacy-bios only"),
        ("c5.metal", "hvm", "boots legacy-bios only"),
        ("p4d.24xlarge", "hvm", "boots legacy-bios only"),
        ("t4g.micro", "hvm", "t4g.micro runs arm64, but the image is x86_64"),
        ("t3.micro", "pv", "t3.micro cannot boot the beam image (pv): it runs hvm only"),
    ],
)
def test_instance_types_that_cannot_boot_the_image(
    instance_type: str, virtualization: str, says: str
) -> None:
    s = settings(f"deploy.instance_type={instance_type}", f"deploy.virtualization={virtualization}")
    line = refusal(s)
    assert line.startswith("--set deploy.instance_type: ") and says in line


def test_the_hint_says_why_a_family_cannot_boot_uefi() -> None:
    line = refusal(settings("deploy.instance_type=t2.micro"))
    assert "(hint: t2 is a Xen-based family, which boots only legacy BIOS; the image boots UEFI; " in line
    assert "for example t3.micro" in line


def test_a_type_the_region_does_not_offer_is_refused() -> None:
    """moto describes every type in every region; its offerings are per region, as AWS's are."""
    clients = Clients(region="eu-north-1", session=boto3.Session(region_name="eu-north-1"))
    s = settings("aws.region=eu-north-1", "deploy.virtualization=pv", "deploy.instance_type=m3.medium")
    assert 'EC2 offers no instance type "m3.medium" in eu-north-1' in refusal(s, clients)


@pytest.mark.parametrize(
    ("instance_type", "virtualization"), [("t3.micro", "hvm"), ("m5.large", "hvm"), ("m3.medium", "pv")]
)
def test_types_that_boot_the_image_pass(instance_type: str, virtualization: str) -> None:
    s = settings(f"deploy.instance_type={instance_type}", f"deploy.virtualization={virtualization}")
    it = preflight.check_instance_type(s, make_clients())
    assert it.name == instance_type


def _stubbed(region: str = "us-east-1") -> tuple[Clients, Stubber]:
    clients = Clients(region=region, session=boto3.Session(region_name=region))
    stub = Stubber(clients.ec2())
    return clients, stub


def test_the_requests_and_aws_refusing_a_type_the_region_lacks() -> None:
    """On AWS, DescribeInstanceTypes answers InvalidInstanceType for a type the region does not offer
    (without IncludeUnsupportedInRegion); the pre-flight asks for exactly the one type."""
    clients, stub = _stubbed("eu-north-1")
    offerings = {"LocationType": "region", "Filters": [{"Name": "instance-type", "Values": ["m3.medium"]}]}
    stub.add_response("describe_instance_type_offerings", {"InstanceTypeOfferings": []}, offerings)
    stub.add_client_error(
        "describe_instance_types",
        "InvalidInstanceType",
        "The following supplied instance types do not exist: [m3.medium]",
        expected_params={"InstanceTypes": ["m3.medium"]},
    )
    s = settings("aws.region=eu-north-1", "deploy.virtualization=pv", "deploy.instance_type=m3.medium")
    with stub, pytest.raises(ConfigError, match=r'EC2 offers no instance type "m3\.medium" in eu-north-1'):
        preflight.check_instance_type(s, clients)
    stub.assert_no_pending_responses()


def test_what_aws_says_about_a_type_decides() -> None:
    """A type the table does not know is judged by DescribeInstanceTypes' answer alone."""
    clients, stub = _stubbed()
    stub.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": "z9.large", "LocationType": "region", "Location": "us-east-1"}
            ]
        },
    )
    stub.add_response(
        "describe_instance_types",
        {
            "InstanceTypes": [
                {
                    "InstanceType": "z9.large",
                    "SupportedBootModes": ["legacy-bios"],
                    "SupportedVirtualizationTypes": ["hvm"],
                    "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
                }
            ]
        },
    )
    with (
        stub,
        pytest.raises(ConfigError, match=r"z9.large boots legacy-bios only .*hint: the image boots UEFI"),
    ):
        preflight.check_instance_type(settings("deploy.instance_type=z9.large"), clients)


def _local_answers(names: list[str]) -> dict[str, dict[str, Any]]:
    """DescribeInstanceTypes of ``names`` as the local AWS answers it (100 types per request)."""
    ec2 = make_clients().ec2()
    out = {}
    for i in range(0, len(names), 100):
        chunk = names[i : i + 100]
        out.update(
            {
                t["InstanceType"]: dict(t)
                for t in ec2.describe_instance_types(InstanceTypes=chunk)["InstanceTypes"]
            }
        )  # type: ignore[arg-type]
    return out


def test_the_local_aws_answers_as_the_documentation_says() -> None:
    """Every type of a documented family boots what the table says, in the local AWS's answers."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES  # the names only: the answers are asked for

    documented = [n for n in INSTANCE_TYPES if boot_modes.documented(n) is not None]
    samples = ["t3.micro", "t3a.small", "m5.large", "c6i.xlarge", "m7i-flex.large"]
    types = _local_answers([*documented, *samples])
    checked = 0
    for name in documented:
        data, want = types[name], boot_modes.documented(name)
        assert want is not None
        if "x86_64" not in data["ProcessorInfo"]["SupportedArchitectures"]:
            continue  # Mac and Graviton metal: not types the images run on
        assert frozenset(data["SupportedBootModes"]) == want.boot_modes, name
        assert frozenset(data["SupportedVirtualizationTypes"]) == want.virtualization, name
        checked += 1
    assert checked > 100
    pv_families = {
        boot_modes.family(n) for n, d in types.items() if "paravirtual" in d["SupportedVirtualizationTypes"]
    }
    assert pv_families == set(pv.PV_FAMILIES)
    for name in samples:
        assert "uefi" in types[name]["SupportedBootModes"], name


# -- KMS and ACM --------------------------------------------------------------------------------------------


def test_a_kms_alias_resolves_to_the_key_arn() -> None:
    clients = make_clients()
    kms = clients.client("kms")
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/images", TargetKeyId=key["KeyId"])
    resolved = preflight.for_ami(settings("ami.kms_key_id=alias/images"), clients)
    assert resolved.ami.kms_key_id == key["Arn"]
    assert preflight.for_ami(settings(), clients).ami.kms_key_id == ""


@pytest.mark.parametrize("key", ["alias/nothing", "0f1e2d3c-aaaa-bbbb-cccc-000000000001"])
def test_a_kms_key_that_does_not_resolve_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        preflight.for_ami(settings(f"ami.kms_key_id={key}"), make_clients())
    assert str(err.value).startswith(f'--set ami.kms_key_id: KMS has no key "{key}" in us-east-1')


def test_a_disabled_or_asymmetric_key_is_refused() -> None:
    clients = make_clients()
    kms = clients.client("kms")
    disabled = kms.create_key()["KeyMetadata"]
    kms.disable_key(KeyId=disabled["KeyId"])
    with pytest.raises(ConfigError, match="is Disabled, not Enabled"):
        preflight.for_ami(settings(f"ami.kms_key_id={disabled['Arn']}"), clients)
    signing = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]
    with pytest.raises(ConfigError, match="EBS encrypts only with symmetric encryption keys"):
        preflight.for_ami(settings(f"ami.kms_key_id={signing['Arn']}"), clients)


# -- wired into the tasks -----------------------------------------------------------------------------------


def test_deploy_plan_and_rollback_refuse_a_bogus_network_before_any_change() -> None:
    """A bogus deploy.vpc_id once passed the plan and took the live release down at deploy time."""
    rec = Recorder()
    clients = make_clients(rec)
    s = settings(*network("vpc-0123456789abcdef0", "subnet-11111111", "subnet-22222222"))
    register_ami(clients, s, BUILD)
    rec.clear()
    with pytest.raises(ConfigError, match="there is no VPC vpc-0123456789abcdef0"):
        deploy.deploy(s, clients, Runtime(confirm=lambda _q: True), BUILD)
    with pytest.raises(ConfigError, match="there is no VPC vpc-0123456789abcdef0"):
        deploy.plan(s, clients)
    with pytest.raises(ConfigError, match="there is no VPC vpc-0123456789abcdef0"):
        rollback.rollback(s, clients, Runtime(confirm=lambda _q: True))
    assert rec.mutating() == []
    assert clients.cloudformation().describe_stacks()["Stacks"] == []


def test_a_listener_port_change_goes_through_the_same_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing only deploy.listener_port updates the template of the live release; that update once
    skipped the checks a release makes (the local cloud's listener port), so a port nothing could
    serve was reported as live."""
    from awstest import FakeClock

    from pipeline.aws.deployment import Deployment

    clock = FakeClock()
    runtime = Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda _q: True)
    rec = Recorder()
    clients = make_clients(rec)
    first = settings("deploy.bake_seconds=0")
    register_ami(clients, first, BUILD)
    deploy.deploy(first, clients, runtime, BUILD)

    checked: list[tuple[int, int]] = []

    def refuse(self: Deployment, new_instances: int) -> None:
        checked.append((self.settings.deploy.listener_port, new_instances))
        raise ConfigError("deploy.listener_port: port 8081 is taken", hint="choose another")

    monkeypatch.setattr(Deployment, "preflight", refuse)
    rec.clear()
    with pytest.raises(ConfigError, match="port 8081 is taken"):
        deploy.deploy(settings("deploy.bake_seconds=0", "deploy.listener_port=8081"), clients, runtime, BUILD)
    assert checked == [(8081, 0)]
    # refused before the stack update (the plan's change set is made and deleted again, as for any plan)
    assert {op for _, op in rec.mutating()} <= {"CreateChangeSet", "DeleteChangeSet"}
