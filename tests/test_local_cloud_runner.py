"""The instance runner of the local AWS: instances of an Auto Scaling group start as QEMU VMs from their
image's snapshot, report their health through DescribeTargetHealth, and are stopped with their scratch
disks when the group lets them go; the machine's memory bounds how many start.

The image here is a synthetic disk uploaded by the ami stage: UEFI firmware (OVMF) starts from it and
finds nothing to boot, so each VM is a real QEMU process that never answers HTTP (health stays
``initial``). The VMs that run the real app are the subject of test_local_cloud_e2e.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from localaws import LocalAws
from synthetic import make_build

from pipeline.aws import ami, provenance
from pipeline.aws import tags as T
from pipeline.local import control, memory
from tests.cloud_support import alive, qemu_processes, until

pytestmark = pytest.mark.slow
GIT = provenance.GitState("89abcdef0123456789abcdef0123456789abcdef", "false")


def cloud(aws: LocalAws, **config: Any) -> dict[str, Any]:
    """The cloud's state; with ``config``, give it those settings first."""
    body = control.CloudConfig(**config).to_json().encode() if config else None
    req = urllib.request.Request(f"{aws.url}{control.PATH}", data=body, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


class Group:
    """An Auto Scaling group of the image behind a target group, made through the API."""

    def __init__(self, aws: LocalAws, image_id: str, build_id: str, name: str) -> None:
        clients = aws.clients()
        self.ec2, self.elbv2, self.scaling = clients.ec2(), clients.elbv2(), clients.autoscaling()
        vpc = self.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        subnets = [
            s["SubnetId"]
            for s in self.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        ]
        template = self.ec2.create_launch_template(
            LaunchTemplateName=f"{name}-lt",
            LaunchTemplateData={
                "ImageId": image_id,
                "InstanceType": "t3.micro",
                "BlockDeviceMappings": [
                    {"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 2, "DeleteOnTermination": True}}
                ],
            },
        )["LaunchTemplate"]["LaunchTemplateId"]
        self.target_group = self.elbv2.create_target_group(
            Name=f"{name}-tg", Protocol="HTTP", Port=8080, VpcId=vpc, HealthCheckPath="/health",
            HealthCheckIntervalSeconds=10, HealthyThresholdCount=2, UnhealthyThresholdCount=2,
        )["TargetGroups"][0]["TargetGroupArn"]  # fmt: skip
        self.name = name
        self.scaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
            MinSize=0, MaxSize=8, DesiredCapacity=0,
            VPCZoneIdentifier=",".join(subnets),
            TargetGroupARNs=[self.target_group],
            Tags=[{"Key": T.COLOR, "Value": "blue", "PropagateAtLaunch": True},
                  {"Key": T.BUILD_ID, "Value": build_id, "PropagateAtLaunch": True}],
        )  # fmt: skip

    def scale(self, count: int) -> None:
        self.scaling.set_desired_capacity(AutoScalingGroupName=self.name, DesiredCapacity=count)

    def instances(self) -> list[str]:
        groups = self.scaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])[
            "AutoScalingGroups"
        ]
        return sorted(i["InstanceId"] for i in groups[0]["Instances"])

    def health(self, *ids: str) -> dict[str, tuple[str, str]]:
        targets = [{"Id": i, "Port": 8080} for i in ids]
        resp = self.elbv2.describe_target_health(
            TargetGroupArn=self.target_group, **({"Targets": targets} if ids else {})
        )
        return {
            d["Target"]["Id"]: (d["TargetHealth"]["State"], d["TargetHealth"].get("Reason", ""))
            for d in resp["TargetHealthDescriptions"]
        }


@pytest.fixture
def image(aws: LocalAws) -> tuple[str, str]:
    build = make_build(aws.builds, config="greeting=runner")
    result = ami.publish(aws.settings(), aws.clients(), build, progress=False, git=GIT)
    return result.images["us-east-1"].image_id, build.build_id


def machines(aws: LocalAws, phase: str | None = None) -> dict[str, dict[str, Any]]:
    return {m["instance_id"]: m for m in cloud(aws)["machines"] if phase is None or m["phase"] == phase}


def test_instances_boot_from_their_snapshot_and_stop_with_their_scratch_disk(
    aws: LocalAws, image: tuple[str, str]
) -> None:
    image_id, build_id = image
    cloud(aws, boot="uefi", vm_memory_mb=256)
    group = Group(aws, image_id, build_id, "runner")
    assembled_before = cloud(aws)["disks_assembled"]
    group.scale(1)
    (first,) = group.instances()
    m = until("the first VM runs", lambda: machines(aws, "running").get(first))
    assert (m["color"], m["build_id"], m["boot"], m["memory_mb"]) == ("blue", build_id, "uefi", 256)
    qemu = qemu_processes(first)
    assert list(qemu) == [m["pid"]]
    line = qemu[m["pid"]]
    assert "OVMF_CODE" in line and "nvme,drive=boot" in line and "-m 256" in line
    vm_dir = aws.root / ".pipeline" / "local" / "cloud" / "vms" / first
    scratch = vm_dir / "scratch.img"
    assert scratch.stat().st_size == 2 << 30 and scratch.stat().st_blocks == 0  # fresh, sparse, 2 GiB
    # a VM that has not answered is still registering, as ELBv2 reports a target that is booting
    assert group.health() == {first: ("initial", "Elb.RegistrationInProgress")}

    group.scale(2)
    second = next(i for i in group.instances() if i != first)
    until("the second VM runs", lambda: machines(aws, "running").get(second))
    assert cloud(aws)["disks_assembled"] == assembled_before + 1  # one disk for both instances
    pids = {i: m["pid"] for i, m in machines(aws).items()}

    group.scale(0)
    until("both VMs are gone", lambda: not machines(aws))
    assert not any(alive(pid) for pid in pids.values())
    assert not vm_dir.exists() and not (vm_dir.parent / second).exists()
    logs = aws.root / ".pipeline" / "local" / "cloud" / "logs"
    assert {p.stem for p in logs.glob("*.log")} >= {first, second}  # the console logs are kept
    # moto leaves terminated instances registered; they report what ELBv2 reports while they leave
    assert group.health(first, second) == {
        first: ("draining", "Target.DeregistrationInProgress"),
        second: ("draining", "Target.DeregistrationInProgress"),
    }


def test_a_vm_that_does_not_fit_in_memory_is_not_started(aws: LocalAws, image: tuple[str, str]) -> None:
    image_id, build_id = image
    big = 8192
    state = cloud(aws, boot="uefi", vm_memory_mb=big)
    fits = (state["memory"]["available_mb"] - memory.MARGIN_MB) // (big + memory.QEMU_OVERHEAD_MB)
    if fits > 4:
        pytest.skip(f"this machine has room for {fits} VMs of {big} MiB")
    group = Group(aws, image_id, build_id, "big")
    group.scale(fits + 1)
    until("every instance is running or refused", lambda: len(machines(aws)) == fits + 1
          and all(m["phase"] in ("running", "failed") for m in machines(aws).values()))  # fmt: skip
    refused = machines(aws, "failed")
    assert len(refused) >= 1 and len(machines(aws, "running")) <= fits
    for m in refused.values():
        assert m["error"].startswith(
            f"local cloud: 1 VM(s) of {big} MiB need {big + memory.QEMU_OVERHEAD_MB} MiB"
        )
        assert m["health"] == "unhealthy" and not qemu_processes(m["instance_id"])
    group.scale(0)
    until("every VM is gone", lambda: not machines(aws))
    cloud(aws, boot="uefi", vm_memory_mb=256)


def test_images_the_pipeline_did_not_make_are_not_run(aws: LocalAws) -> None:
    ec2 = aws.clients().ec2()
    foreign = ec2.register_image(Name="someone-elses", RootDeviceName="/dev/xvda", VirtualizationType="hvm")[
        "ImageId"
    ]
    group = Group(aws, foreign, "0" * 12, "foreign")
    group.scale(1)
    (instance,) = group.instances()
    m = until("the instance is judged", lambda: machines(aws, "failed").get(instance))
    assert m["error"] == f"image {foreign} was not made by the pipeline: not run locally"
    assert group.health() == {instance: ("unhealthy", "Target.FailedHealthChecks")}
    group.scale(0)
    until("it is gone", lambda: not machines(aws))


def test_an_instance_whose_disk_cannot_be_read_says_why_in_target_health_and_console(
    aws: LocalAws, image: tuple[str, str]
) -> None:
    image_id, build_id = image
    clients = aws.clients()
    ec2 = clients.ec2()
    snapshot = T.from_aws(ec2.describe_images(ImageIds=[image_id])["Images"][0]["Tags"])[T.SNAPSHOT]
    ec2.delete_snapshot(SnapshotId=snapshot)  # what a gc of its snapshot would leave
    group = Group(aws, image_id, build_id, "unreadable")
    group.scale(1)
    (instance,) = group.instances()
    m = until("the instance is judged", lambda: machines(aws, "failed").get(instance))
    assert f"snapshot {snapshot} cannot be read" in m["error"]
    health = group.elbv2.describe_target_health(TargetGroupArn=group.target_group)["TargetHealthDescriptions"]
    (target,) = health
    assert target["TargetHealth"]["State"] == "unhealthy"
    assert f"snapshot {snapshot} cannot be read" in target["TargetHealth"]["Description"]
    console = ec2.get_console_output(InstanceId=instance)["Output"]
    assert f"local cloud: instance {instance} cannot run: snapshot {snapshot} cannot be read" in console
    group.scale(0)
    until("it is gone", lambda: not machines(aws))


def test_the_control_endpoint_takes_only_json_settings(aws: LocalAws) -> None:
    req = urllib.request.Request(f"{aws.url}{control.PATH}", data=b"[1, 2]", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400
