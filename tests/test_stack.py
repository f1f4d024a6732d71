"""The stack blueprint: security defaults, the blue/green shape, PV rules, cfn-lint, and cfn/ kept fresh."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import config
from pipeline.aws import colors, pv, stack
from pipeline.aws.params import Release, Side, StackState
from pipeline.aws.stack import StackParams
from pipeline.errors import ConfigError
from pipeline.images.devices import scratch_device

REPO = Path(__file__).resolve().parent.parent

BASE = StackParams(
    app="erlang_web",
    env="dev",
    target="beam",
    app_port=8080,
    listener_port=80,
    allowed_cidrs=("0.0.0.0/0",),
    scratch_size_gib=1,
    existing_vpc=False,
)
VARIANTS = {
    "own-vpc": BASE,
    "existing-vpc-ling": dataclasses.replace(
        BASE,
        target="ling",
        existing_vpc=True,
        listener_port=8000,
        allowed_cidrs=("203.0.113.0/24", "2001:db8::/32"),
    ),
}


def template(p: StackParams = BASE) -> dict[str, Any]:
    return json.loads(stack.render(p))


def resources(t: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in t["Resources"].items() if r["Type"] == kind}


def walk(value: Any) -> Any:
    """Every dict inside ``value``."""
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


# -- security defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_instances_are_reachable_only_from_the_load_balancer(variant: str) -> None:
    t = template(VARIANTS[variant])
    sg = t["Resources"]["InstanceSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in sg  # no inline rule at all
    ingress = resources(t, "AWS::EC2::SecurityGroupIngress")
    assert list(ingress) == ["InstanceIngressFromLoadBalancer"]
    rule = ingress["InstanceIngressFromLoadBalancer"]["Properties"]
    assert rule["GroupId"] == {"Fn::GetAtt": ["InstanceSecurityGroup", "GroupId"]}
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}
    assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (8080, 8080, "tcp")
    for r in (rule, *sg["SecurityGroupEgress"]):
        assert "CidrIpv6" not in r
        assert r.get("CidrIp") in (None, "127.0.0.1/32")  # egress: loopback only, i.e. none
    # and nothing anywhere opens the instances to an address range
    for d in walk(t["Resources"]):
        if d.get("GroupId") == {"Fn::GetAtt": ["InstanceSecurityGroup", "GroupId"]}:
            assert "CidrIp" not in d and "CidrIpv6" not in d


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_ssh_port_and_no_key_pair_anywhere(variant: str) -> None:
    t = template(VARIANTS[variant])
    for d in walk(t):
        if "FromPort" in d:
            assert not (d["FromPort"] <= 22 <= d["ToPort"]), d
            assert d.get("IpProtocol") != "-1" or d.get("CidrIp") == "127.0.0.1/32", d
        assert "KeyName" not in d


@pytest.mark.parametrize("variant", VARIANTS)
def test_load_balancer_is_open_only_to_the_allowed_networks_on_the_listener_port(variant: str) -> None:
    p = VARIANTS[variant]
    sg = template(p)["Resources"]["LoadBalancerSecurityGroup"]["Properties"]
    seen = sorted(r.get("CidrIp") or r["CidrIpv6"] for r in sg["SecurityGroupIngress"])
    assert seen == sorted(p.allowed_cidrs)
    assert {(r["FromPort"], r["ToPort"]) for r in sg["SecurityGroupIngress"]} == {
        (p.listener_port, p.listener_port)
    }
    (egress,) = sg["SecurityGroupEgress"]
    assert egress["DestinationSecurityGroupId"] == {"Ref": "InstanceSecurityGroup"}
    assert (egress["FromPort"], egress["ToPort"]) == (p.app_port, p.app_port)


@pytest.mark.parametrize("variant", VARIANTS)
def test_launch_templates_require_imdsv2_and_carry_a_scratch_volume_deleted_with_the_instance(
    variant: str,
) -> None:
    p = VARIANTS[variant]
    t = template(p)
    lts = resources(t, "AWS::EC2::LaunchTemplate")
    assert sorted(lts) == ["BlueLaunchTemplate", "GreenLaunchTemplate"]
    for name, lt in lts.items():
        data = lt["Properties"]["LaunchTemplateData"]
        color = name.removesuffix("LaunchTemplate")
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpEndpoint"] == "enabled"
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert data["ImageId"] == {"Ref": f"{color}ImageId"}
        assert data["InstanceType"] == {"Ref": f"{color}InstanceType"}
        (bdm,) = data["BlockDeviceMappings"]
        assert bdm["DeviceName"] == scratch_device(p.target, "hvm") == scratch_device(p.target, "pv")
        assert bdm["Ebs"]["DeleteOnTermination"] is True
        assert bdm["Ebs"]["VolumeSize"] == p.scratch_size_gib
        assert "KeyName" not in data and "UserData" not in data and "IamInstanceProfile" not in data


def test_scratch_device_follows_the_image_target_and_virtualization(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the device name differs between HVM and PV, each colour picks it by its Virtualization."""

    def device(target: str, virtualization: str, storage: str = "auto") -> str:
        return "/dev/xvdb" if virtualization == "pv" else "/dev/sdb"

    monkeypatch.setattr(colors, "scratch_device", device)
    data = template()["Resources"]["GreenLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["BlockDeviceMappings"][0]["DeviceName"] == {"Fn::If": ["GreenIsPv", "/dev/xvdb", "/dev/sdb"]}


# -- the blue/green shape --------------------------------------------------------------------------


def test_traffic_is_split_by_a_weighted_listener_rule_over_both_target_groups() -> None:
    t = template()
    listener = t["Resources"]["Listener"]["Properties"]
    # the listener itself forwards nowhere (moto crashes on a weighted ForwardConfig there)
    assert [a["Type"] for a in listener["DefaultActions"]] == ["fixed-response"]
    rule = t["Resources"]["WeightedRule"]["Properties"]
    (action,) = rule["Actions"]
    groups = action["ForwardConfig"]["TargetGroups"]
    assert groups == [
        {"TargetGroupArn": {"Ref": "BlueTargetGroup"}, "Weight": {"Ref": "BlueWeight"}},
        {"TargetGroupArn": {"Ref": "GreenTargetGroup"}, "Weight": {"Ref": "GreenWeight"}},
    ]
    assert rule["Conditions"] == [{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}]
    # one rule per colour selected by the probe header, ahead of the weighted rule
    for priority, color in ((1, "blue"), (2, "green")):
        probe = t["Resources"][f"{color.capitalize()}ProbeRule"]["Properties"]
        assert probe["Priority"] == priority < rule["Priority"]
        assert probe["Conditions"][0]["HttpHeaderConfig"] == {
            "HttpHeaderName": stack.COLOR_HEADER,
            "Values": [color],
        }
        # and only with the release's secret token (pipeline.aws.probe)
        assert probe["Conditions"][1]["HttpHeaderConfig"] == {
            "HttpHeaderName": "X-Pipeline-Probe",
            "Values": [{"Ref": "ProbeToken"}],
        }


def test_groups_use_elb_health_checks_capacity_parameters_and_colour_tags() -> None:
    t = template()
    for color in ("Blue", "Green"):
        group = t["Resources"][f"{color}ServerGroup"]["Properties"]
        assert group["HealthCheckType"] == "ELB"
        assert group["HealthCheckGracePeriod"] == colors.GRACE_PERIOD
        # a colour with instances runs between the stack's bounds, a colour with none at 0/0
        assert group["DesiredCapacity"] == {"Ref": f"{color}Capacity"}
        assert group["MinSize"] == {"Fn::If": [f"{color}Stopped", 0, {"Ref": "MinCapacity"}]}
        assert group["MaxSize"] == {"Fn::If": [f"{color}Stopped", 0, {"Ref": "MaxCapacity"}]}
        assert t["Conditions"][f"{color}Stopped"] == {"Fn::Equals": [{"Ref": f"{color}Capacity"}, "0"]}
        assert group["TargetGroupARNs"] == [{"Ref": f"{color}TargetGroup"}]
        assert group["LaunchTemplate"]["Version"] == {
            "Fn::GetAtt": [f"{color}LaunchTemplate", "LatestVersionNumber"]
        }
        tagged = {tag["Key"]: tag["Value"] for tag in group["Tags"]}
        assert tagged["Color"] == color.lower()
        assert tagged["BuildId"] == {"Ref": f"{color}BuildId"}
        assert all(tag["PropagateAtLaunch"] is True for tag in group["Tags"])
        tg = t["Resources"][f"{color}TargetGroup"]["Properties"]
        assert tg["HealthCheckPath"] == "/health"
        assert tg["Matcher"] == {"HttpCode": "200"}
        assert tg["Port"] == 8080


def test_launch_templates_sort_before_their_groups() -> None:
    """moto applies updates in template key order; a group updated before its launch template would
    launch the previous image (see the module docstring)."""
    names = sorted(template()["Resources"])
    for color in ("Blue", "Green"):
        assert names.index(f"{color}LaunchTemplate") < names.index(f"{color}ServerGroup")


def test_parameters_and_outputs() -> None:
    t = template()
    colour_params = {f"{c}{f}" for c in ("Blue", "Green") for f in stack_fields()} | {
        "History",
        "ProbeToken",
        "MinCapacity",
        "MaxCapacity",
    }
    assert set(t["Parameters"]) == colour_params
    assert t["Parameters"]["BlueImageId"]["Type"] == "AWS::EC2::Image::Id"
    assert t["Parameters"]["BlueWeight"]["MaxValue"] == 100
    assert set(t["Outputs"]) == {
        "Url",
        "LoadBalancerArn",
        "LiveColor",
        "BlueTargetGroupArn",
        "GreenTargetGroupArn",
        "BlueServerGroupName",
        "GreenServerGroupName",
        "ReleaseHistory",
    }
    # the history is a parameter of at most 4,096 bytes (CloudFormation's limit for a value) that an
    # output shows, so that an update of the history alone changes the stack
    assert t["Parameters"]["History"] == {
        "Type": "String",
        "Default": "",
        "MaxLength": 4096,
        "Description": "release history kept by the pipeline (invoke history shows it; do not edit)",
    }
    assert t["Outputs"]["ReleaseHistory"]["Value"] == {"Ref": "History"}
    # the own VPC spans two availability zones
    subnets = resources(t, "AWS::EC2::Subnet")
    assert sorted(s["Properties"]["AvailabilityZone"]["Fn::Select"][0] for s in subnets.values()) == [0, 1]
    existing = template(VARIANTS["existing-vpc-ling"])
    assert set(existing["Parameters"]) == colour_params | {"VpcId", "SubnetIds"}
    assert not resources(existing, "AWS::EC2::VPC")


def stack_fields() -> tuple[str, ...]:
    return ("ImageId", "BuildId", "InstanceType", "Virtualization", "Capacity", "Weight")


# -- PV instance types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "virtualization", "fits"),
    [
        ("t3.micro", "hvm", True),
        ("m3.medium", "hvm", True),
        ("m3.medium", "pv", True),
        ("c1.xlarge", "pv", True),
        ("t1.micro", "pv", True),
        ("m2.4xlarge", "pv", True),
        ("t3.micro", "pv", False),
        ("m5.large", "pv", False),
        ("c5.large", "pv", False),
        ("t2.micro", "pv", False),
        ("m3.4xlarge", "pv", False),  # a PV family, but no such type: the template's rule would refuse it
    ],
)
def test_only_pv_capable_instance_types_validate_for_pv_images(
    instance_type: str, virtualization: str, fits: bool
) -> None:
    assert pv.instance_type_fits(instance_type, virtualization) is fits
    if fits:
        pv.check_instance_type(instance_type, virtualization)
    else:
        with pytest.raises(ConfigError) as err:
            pv.check_instance_type(instance_type, virtualization)
        line = str(err.value)
        assert "\n" not in line
        assert line.startswith(
            f'pipeline.toml: deploy.instance_type: "{instance_type}" cannot boot paravirtual (PV) images'
        )
        assert "C1, C3, M1, M2, M3 and T1 families" in line
        assert "(hint:" in line and "m3.medium" in line


def test_template_rules_allow_only_pv_types_for_pv_colours() -> None:
    t = template()
    for color in ("Blue", "Green"):
        rule = t["Rules"][f"{color}PvInstanceType"]
        assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": f"{color}Virtualization"}, "pv"]}
        allowed, ref = rule["Assertions"][0]["Assert"]["Fn::Contains"]
        assert ref == {"Ref": f"{color}InstanceType"}
        assert allowed == list(pv.PV_INSTANCE_TYPES)  # the list the pipeline checks against
        assert all(pv.instance_type_fits(it, "pv") for it in allowed)
        assert {it.split(".")[0] for it in allowed} == set(pv.PV_FAMILIES)
        assert t["Parameters"][f"{color}Virtualization"]["AllowedValues"] == ["hvm", "pv"]


# -- the release state -----------------------------------------------------------------------------


def test_state_passes_every_parameter_explicitly_and_reads_back() -> None:
    blue = Side(Release("ami-0aaa", "1111aaaa", "t3.micro", "hvm"), 2, 100)
    green = Side(Release("ami-0bbb", "2222bbbb", "m3.medium", "pv"), 0, 0)
    s = StackState(blue, green)
    params = s.parameters()
    assert [p["ParameterKey"] for p in params] == sorted(
        [f"{c}{f}" for c in ("Blue", "Green") for f in stack_fields()]
        + ["MinCapacity", "MaxCapacity", "ScalingColor"]
    )
    assert all(set(p) == {"ParameterKey", "ParameterValue"} for p in params)  # never UsePreviousValue
    assert StackState.from_parameters({p["ParameterKey"]: p["ParameterValue"] for p in params}) == s
    assert s.live == "blue"
    flipped = s.with_side("green", Side(green.release, 2, 100)).with_side("blue", Side(blue.release, 2, 0))
    assert flipped.live == "green"
    assert flipped.blue.release == blue.release  # the other colour is untouched
    vpc = StackState(blue, green, "vpc-1", ("subnet-a", "subnet-b")).parameters()
    assert {"ParameterKey": "SubnetIds", "ParameterValue": "subnet-a,subnet-b"} in vpc
    split = StackState(Side(blue.release, 2, 50), Side(green.release, 2, 50))
    assert split.live is None


def test_state_from_foreign_parameters_is_refused() -> None:
    with pytest.raises(KeyError):
        StackState.from_parameters({"ImageId": "ami-1"})
    params = {p["ParameterKey"]: p["ParameterValue"] for p in stack_state().parameters()}
    with pytest.raises(ValueError):
        StackState.from_parameters({**params, "BlueVirtualization": "xen"})


def stack_state() -> StackState:
    r = Release("ami-0aaa", "1111aaaa", "t3.micro", "hvm")
    return StackState(Side(r, 1, 100), Side(r, 0, 0))


# -- cfn-lint and cfn/ -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_cfn_lint_finds_nothing(variant: str) -> None:
    from cfnlint.api import lint_all

    matches = lint_all(stack.render(VARIANTS[variant]))
    assert [f"{m.rule.id} {m.message}" for m in matches if m.rule.id[0] in "EW"] == []


def test_committed_templates_are_lint_clean_and_fresh() -> None:
    """cfn/ must be what ``invoke synth`` writes for the shipped pipeline.toml (run it after changes)."""
    from cfnlint.api import lint_all

    wanted = stack.committed_templates(REPO)
    assert sorted(p.name for p in wanted) == sorted(p.name for p in (REPO / "cfn").glob("*.json"))
    for path, text in wanted.items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run invoke synth"
        assert [m.rule.id for m in lint_all(path.read_text()) if m.rule.id[0] in "EW"] == []
        # sorted keys at every level
        assert json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n" == text


def test_synth_writes_one_template_per_environment_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text(
        'default_env = "a"\n[app]\nname = "erlang_web"\n[env.a.app.config]\ngreeting = "x"\n'
        "[env.b.deploy]\nlistener_port = 8000\n"
    )
    (tmp_path / "cfn").mkdir()
    (tmp_path / "cfn" / "old-stack.json").write_text("{}")
    changed = stack.synth(tmp_path)
    names = sorted(p.name for p in (tmp_path / "cfn").iterdir())
    # per environment its stack and the bootstrap stack of its CloudFormation service role
    wanted = ["erlang-web-a-role.json", "erlang-web-a.json", "erlang-web-b-role.json", "erlang-web-b.json"]
    assert names == wanted
    assert {p.name for p in changed} == {*wanted, "old-stack.json"}
    b = json.loads((tmp_path / "cfn" / "erlang-web-b.json").read_text())
    assert b["Resources"]["Listener"]["Properties"]["Port"] == 8000
    assert stack.synth(tmp_path) == []  # nothing to do the second time


def test_params_for_takes_the_environment_settings() -> None:
    s = config.load(REPO, env="prod", overrides=["deploy.allowed_cidrs=['198.51.100.0/24']"])
    p = stack.params_for(s)
    assert (p.app, p.env, p.stack_name, p.app_port) == ("erlang_web", "prod", "erlang-web-prod", s.app.port)
    assert p.allowed_cidrs == ("198.51.100.0/24",)
    assert not p.existing_vpc
    vpc = config.load(
        REPO,
        overrides=["deploy.vpc_id=vpc-11111111", "deploy.subnet_ids=['subnet-11111111','subnet-22222222']"],
    )
    assert stack.params_for(vpc).existing_vpc
