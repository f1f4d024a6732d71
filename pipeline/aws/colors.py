"""One colour of the blueprint (:mod:`pipeline.aws.stack`): its parameters and its servers.

Each colour has its own parameters (image, build id, instance type, virtualization, capacity, traffic
weight), which the pipeline passes with every stack update, and its own resources:

- a target group checking the app's health path (``app.health_path``);
- a launch template: IMDSv2 required, no key pair, the scratch volume as a block device created with
  the instance and deleted with it, encrypted unless the instance type cannot attach encrypted volumes;
- an Auto Scaling group with ELB health checks, sized as :mod:`pipeline.aws.scaling` says.

A PV image needs a PV-capable instance type: a template rule refuses the other types before any
resource changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from troposphere import Equals, GetAtt, If, NoValue, Or, Output, Parameter, Ref, Tags, Template, ec2
from troposphere import autoscaling as asg
from troposphere import elasticloadbalancingv2 as elb

from pipeline.aws import pv, scaling, tags
from pipeline.aws.tags import Color
from pipeline.images.devices import scratch_device

if TYPE_CHECKING:
    from pipeline.aws.network import Network
    from pipeline.aws.stack import StackParams

MAX_CAPACITY = 100  # the bound of deploy.capacity
# Health checks every 10 s, healthy after 2 passes and unhealthy after 2 failures: a new instance is
# in service about 20 s after it answers, and a broken one leaves within 20 s.
HEALTH_INTERVAL = 10
HEALTH_TIMEOUT = 5
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# The group replaces an instance that fails its ELB check only after this grace period; a PV guest
# on a previous-generation type takes the longest to boot and answer.
GRACE_PERIOD = 120
# Connections to a colour whose weight dropped to 0 drain for this long (the default is 300 s).
DEREGISTRATION_DELAY = 30
# Instance families that cannot attach encrypted EBS volumes: the previous generations outside EBS
# encryption's list of supported types ("Amazon EBS encryption", requirements: all current generation
# types and, of the previous ones, C3, cr1.8xlarge, G2, I2, M3 and R3). Among the types the stack can
# run (every current type for HVM, pv.PV_INSTANCE_TYPES for PV) that leaves these four PV families.
NO_EBS_ENCRYPTION = ("c1", "m1", "m2", "t1")


def parameters(t: Template, color: Color, target: str) -> dict[str, Parameter]:
    """The colour's parameters, added to ``t``, and the rule that keeps a PV image off HVM-only types."""
    c = color.capitalize()
    out = {
        "ImageId": Parameter(
            f"{c}ImageId", Type="AWS::EC2::Image::Id", Description=f"AMI of the {color} colour"
        ),
        "BuildId": Parameter(
            f"{c}BuildId",
            Type="String",
            AllowedPattern="^[0-9a-f]{8,64}$",
            Description=f"build id of the {color} colour's image (tags its instances)",
        ),
        "InstanceType": Parameter(
            f"{c}InstanceType", Type="String", AllowedPattern="^[a-z][a-z0-9-]*\\.[a-z0-9]+$"
        ),
        "Virtualization": Parameter(
            f"{c}Virtualization",
            Type="String",
            AllowedValues=["hvm", "pv"],
            Description=f"how the {color} colour's image boots; pv needs a PV-capable instance type",
        ),
        "Capacity": Parameter(f"{c}Capacity", Type="Number", MinValue=0, MaxValue=MAX_CAPACITY),
        "Weight": Parameter(
            f"{c}Weight",
            Type="Number",
            MinValue=0,
            MaxValue=100,
            Description=f"percent of traffic to {color}",
        ),
    }
    for param in out.values():
        t.add_parameter(param)
    t.add_rule(
        f"{c}PvInstanceType",
        {
            "RuleCondition": Equals(Ref(out["Virtualization"]), "pv"),
            "Assertions": [
                {
                    "Assert": {
                        "Fn::Contains": [list(pv.instance_types_for(target)), Ref(out["InstanceType"])]
                    },
                    "AssertDescription": f"a paravirtual {color} image needs a PV-capable instance type "
                    f"({pv.families()} families)"
                    + (", of at most 4 GiB for LING" if target == "ling" else ""),
                }
            ],
        },
    )
    return out


def resources(
    t: Template,
    p: StackParams,
    color: Color,
    params: Mapping[str, Parameter],
    net: Network,
    common: Mapping[str, str],
) -> tuple[elb.TargetGroup, asg.AutoScalingGroup]:
    """The colour's target group, launch template and Auto Scaling group, with their outputs, in ``t``."""
    c = color.capitalize()
    is_pv = f"{c}IsPv"
    plain = f"{c}ScratchPlain"
    t.add_condition(
        plain,
        Or(
            *(
                Equals(Ref(params["InstanceType"]), kind)
                for kind in pv.PV_INSTANCE_TYPES
                if kind.split(".")[0] in NO_EBS_ENCRYPTION
            )
        ),
    )
    colored = {**common, tags.COLOR: color}
    group = t.add_resource(
        elb.TargetGroup(
            f"{c}TargetGroup",
            VpcId=net.vpc,
            Port=p.app_port,
            Protocol="HTTP",
            TargetType="instance",
            HealthCheckEnabled=True,
            HealthCheckPath=p.health_path,
            HealthCheckProtocol="HTTP",
            HealthCheckIntervalSeconds=HEALTH_INTERVAL,
            HealthCheckTimeoutSeconds=HEALTH_TIMEOUT,
            HealthyThresholdCount=HEALTHY_THRESHOLD,
            UnhealthyThresholdCount=UNHEALTHY_THRESHOLD,
            Matcher=elb.Matcher(HttpCode="200"),
            TargetGroupAttributes=[
                elb.TargetGroupAttribute(
                    Key="deregistration_delay.timeout_seconds", Value=str(DEREGISTRATION_DELAY)
                )
            ],
            Tags=Tags(**colored),
        )
    )
    pv_device = scratch_device(p.target, "pv", p.storage)
    hvm_device = scratch_device(p.target, "hvm", p.storage)
    device: Any = hvm_device if pv_device == hvm_device else If(is_pv, pv_device, hvm_device)
    instance_tags = {**colored, tags.BUILD_ID: Ref(params["BuildId"]), "Name": f"{p.stack_name}-{color}"}
    template = t.add_resource(
        ec2.LaunchTemplate(
            f"{c}LaunchTemplate",
            LaunchTemplateData=ec2.LaunchTemplateData(
                ImageId=Ref(params["ImageId"]),
                InstanceType=Ref(params["InstanceType"]),
                SecurityGroupIds=[GetAtt("InstanceSecurityGroup", "GroupId")],
                MetadataOptions=ec2.MetadataOptions(
                    HttpEndpoint="enabled", HttpTokens="required", HttpPutResponseHopLimit=1
                ),
                **(
                    {
                        "BlockDeviceMappings": [
                            # The scratch volume: per-instance storage that is created with the instance
                            # and deleted with it, never carried over to a replacement.
                            ec2.LaunchTemplateBlockDeviceMapping(
                                DeviceName=device,
                                Ebs=ec2.EBSBlockDevice(
                                    VolumeSize=p.scratch_size_gib,
                                    VolumeType="gp3",
                                    DeleteOnTermination=True,
                                    # C1, M1, M2 and T1 cannot attach encrypted volumes: there the scratch
                                    # volume follows the account's default encryption (NO_EBS_ENCRYPTION).
                                    Encrypted=If(plain, NoValue, True),
                                ),
                            )
                        ]
                    }
                    if device is not None
                    else {}
                ),
                TagSpecifications=[
                    ec2.TagSpecifications(ResourceType=kind, Tags=Tags(**instance_tags))
                    for kind in ("instance", "volume")
                ],
            ),
            TagSpecifications=[ec2.TagSpecifications(ResourceType="launch-template", Tags=Tags(**colored))],
        )
    )
    servers = t.add_resource(
        asg.AutoScalingGroup(
            f"{c}ServerGroup",
            LaunchTemplate=asg.LaunchTemplateSpecification(
                LaunchTemplateId=Ref(template), Version=GetAtt(template, "LatestVersionNumber")
            ),
            **scaling.group_sizes(t, color, params["Capacity"]),
            VPCZoneIdentifier=net.subnets,
            TargetGroupARNs=[Ref(group)],
            HealthCheckType="ELB",
            HealthCheckGracePeriod=GRACE_PERIOD,
            Tags=[
                asg.Tag(key, value, True)
                for key, value in sorted({**colored, tags.BUILD_ID: Ref(params["BuildId"])}.items())
            ],
            **net.depends(),
        )
    )
    t.add_output(
        [
            Output(f"{c}TargetGroupArn", Value=Ref(group)),
            Output(f"{c}ServerGroupName", Value=Ref(servers)),
        ]
    )
    return group, servers
