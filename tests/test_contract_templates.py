"""Template rules cfn-lint does not check, asserted on the synthesized templates (every environment's in
cfn/, and the variants of the blueprint): each rule is AWS's, with its page, and the tables below are
taken from those pages, not from the pipeline's code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import config
from pipeline.aws import pv, stack
from pipeline.aws.stack import StackParams
from pipeline.errors import ConfigError
from pipeline.images import devices

REPO = Path(__file__).resolve().parent.parent
OWN_VPC = StackParams("erlang_web", "dev", "beam", 8080, 80, ("0.0.0.0/0",), 1, False)
VARIANTS = {
    "beam-own-vpc": OWN_VPC,
    "ling-own-vpc": StackParams("erlang_web", "dev", "ling", 8080, 80, ("0.0.0.0/0",), 1, False),
    "beam-existing-vpc": StackParams("erlang_web", "dev", "beam", 8080, 80, ("0.0.0.0/0",), 1, True),
}


def committed() -> Iterator[tuple[str, dict[str, Any]]]:
    """The committed stack templates (not the bootstrap templates of the service roles, ``*-role``)."""
    for path in sorted((REPO / "cfn").glob("*.json")):
        if not path.stem.endswith("-role"):
            yield path.stem, json.loads(path.read_text())


def resources(t: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in t["Resources"].items() if r["Type"] == kind}


def refs(value: Any) -> Iterator[str]:
    """The logical ids ``value`` refers to (Ref, Fn::GetAtt, ${X} in Fn::Sub)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
            yield from refs(inner)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def depends_on(t: dict[str, Any], name: str) -> set[str]:
    """Everything ``name`` is created after: its DependsOn and references, followed through."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        res = t["Resources"].get(todo.pop())
        if res is None:
            continue
        direct = res.get("DependsOn", [])
        direct = [direct] if isinstance(direct, str) else direct
        for dep in [*direct, *refs(res.get("Properties", {}))]:
            if dep in t["Resources"] and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


# -- DependsOn the gateway attachment -------------------------------------------------------------------

# CloudFormation user guide, "DependsOn attribute", "When a DependsOn attribute is required":
# https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-dependson.html
# In a VPC with an internet gateway, these must be created after (and deleted before) the VPC-gateway
# attachment: Auto Scaling groups, EC2 instances, Elastic Load Balancing load balancers, Elastic IP
# addresses, RDS database instances, and routes that include the internet gateway.
NEEDS_THE_GATEWAY = {
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::EC2::Instance",
    "AWS::ElasticLoadBalancing::LoadBalancer",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::EC2::EIP",
    "AWS::RDS::DBInstance",
    "AWS::EC2::Route",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_public_resources_of_a_new_vpc_depend_on_its_gateway_attachment(variant: str) -> None:
    t = json.loads(stack.render(VARIANTS[variant]))
    attachments = resources(t, "AWS::EC2::VPCGatewayAttachment")
    if VARIANTS[variant].existing_vpc:
        assert attachments == {}  # an existing VPC's gateway is not the stack's to order
        return
    (attachment,) = attachments
    needing = [n for n, r in t["Resources"].items() if r["Type"] in NEEDS_THE_GATEWAY]
    assert {r["Type"] for n, r in t["Resources"].items() if n in needing} >= {
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "AWS::AutoScaling::AutoScalingGroup",
        "AWS::EC2::Route",
    }
    assert [n for n in needing if attachment not in depends_on(t, n)] == []


def test_the_committed_templates_keep_the_gateway_rule_too() -> None:
    for name, t in committed():
        (attachment,) = resources(t, "AWS::EC2::VPCGatewayAttachment")
        needing = [n for n, r in t["Resources"].items() if r["Type"] in NEEDS_THE_GATEWAY]
        assert [n for n in needing if attachment not in depends_on(t, n)] == [], name


# -- idle timeouts --------------------------------------------------------------------------------------

# ALB user guide, "Connection idle timeout" (application-load-balancers.html#connection-idle-timeout):
# idle_timeout.timeout_seconds is 1-4000 (default 60); "we also recommend that you configure the idle
# timeout of your application to be larger than the idle timeout configured for the load balancer".


def idle_timeout(t: dict[str, Any]) -> int:
    (lb,) = resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    attrs = {a["Key"]: a["Value"] for a in lb["Properties"]["LoadBalancerAttributes"]}
    return int(attrs["idle_timeout.timeout_seconds"])


def test_each_environments_balancer_gives_up_on_idle_connections_before_its_app() -> None:
    for name, t in committed():
        env = name.removeprefix("erlang-web-")
        settings = config.load(REPO, env=env)
        seconds = idle_timeout(t)
        assert 1 <= seconds <= 4000 and seconds == settings.deploy.idle_timeout_seconds
        assert settings.app.idle_timeout_ms > seconds * 1000, name


def test_settings_where_the_app_would_close_first_are_refused_with_both_values() -> None:
    with pytest.raises(ConfigError) as err:
        config.load(REPO, env="dev", overrides=["deploy.idle_timeout_seconds=120"])
    line = str(err.value)
    assert line.startswith(
        "--set deploy.idle_timeout_seconds: the app's keep-alive idle timeout (75000 ms) must be longer"
    )
    assert (
        "deploy.idle_timeout_seconds (120 s)" in line
        and "(hint: set app.idle_timeout_ms above 120000" in line
    )
    with pytest.raises(ConfigError, match=r"expected integer 1-4000"):
        config.load(REPO, env="dev", overrides=["deploy.idle_timeout_seconds=4001"])


# -- scratch volumes ------------------------------------------------------------------------------------

# EBS user guide, "Amazon EBS encryption", requirements ("Supported instance types"): all current
# generation types and, of the previous generation, C3, cr1.8xlarge, G2, I2, M3 and R3 support it; the
# other previous-generation families (C1, M1, M2, T1, CC2, CG1, HI1, HS1) cannot attach encrypted ones.
WITHOUT_ENCRYPTION = ("c1.", "m1.", "m2.", "t1.", "cc2.", "cg1.", "hi1.", "hs1.")
# EC2 user guide, "Device names for volumes on Amazon EC2 instances": /dev/sd[b-e] are the names of
# instance store volumes; "recommended for EBS volumes" are /dev/sd[f-p]; the root's are reserved.
INSTANCE_STORE = re.compile(r"/dev/sd[b-e]")
ROOT = {"hvm": "/dev/xvda", "pv": "/dev/sda1"}  # the root devices of the pipeline's AMIs


def evaluate(t: dict[str, Any], condition: Any, parameters: dict[str, str]) -> bool:
    """A template condition for these parameter values (Fn::Equals, Fn::Or, Fn::And, Fn::Not)."""
    if isinstance(condition, dict) and "Condition" in condition:
        return evaluate(t, t["Conditions"][condition["Condition"]], parameters)
    ((fn, args),) = condition.items()
    if fn == "Fn::Equals":
        a, b = (parameters[v["Ref"]] if isinstance(v, dict) else v for v in args)
        return bool(a == b)
    if fn == "Fn::Or":
        return any(evaluate(t, c, parameters) for c in args)
    if fn == "Fn::And":
        return all(evaluate(t, c, parameters) for c in args)
    if fn == "Fn::Not":
        return not evaluate(t, args[0], parameters)
    raise AssertionError(f"condition function {fn}")


def scratch(t: dict[str, Any], color: str, parameters: dict[str, str]) -> tuple[str, bool | None]:
    """The scratch volume's device name and Encrypted for these parameters (None: not set)."""
    data = t["Resources"][f"{color}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    (mapping,) = data["BlockDeviceMappings"]

    def value(v: Any) -> Any:
        if isinstance(v, dict) and "Fn::If" in v:
            name, yes, no = v["Fn::If"]
            return value(yes if evaluate(t, t["Conditions"][name], parameters) else no)
        return None if v == {"Ref": "AWS::NoValue"} else v

    return value(mapping["DeviceName"]), value(mapping["Ebs"].get("Encrypted"))


TYPES = [*pv.PV_INSTANCE_TYPES, "t3.micro", "m5.large", "c5.large", "t2.micro", "m4.large", "c4.large"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_scratch_volumes_are_encrypted_on_every_type_that_can_attach_them(variant: str) -> None:
    t = json.loads(stack.render(VARIANTS[variant]))
    for color in ("Blue", "Green"):
        for kind in TYPES:
            virt = "pv" if kind in pv.PV_INSTANCE_TYPES else "hvm"
            _, encrypted = scratch(t, color, {f"{color}InstanceType": kind, f"{color}Virtualization": virt})
            assert encrypted is (None if kind.startswith(WITHOUT_ENCRYPTION) else True), (color, kind)


def test_scratch_devices_are_names_ec2_gives_ebs_volumes() -> None:
    t = json.loads(stack.render(VARIANTS["beam-own-vpc"]))
    for virt in ("hvm", "pv"):
        device, _ = scratch(t, "Blue", {"BlueInstanceType": "m3.medium", "BlueVirtualization": virt})
        assert device != ROOT[virt] and not INSTANCE_STORE.fullmatch(device), (virt, device)
        assert re.fullmatch(r"/dev/sd[f-p]", device), (virt, device)  # "recommended for EBS volumes"


def test_the_ling_scratch_volume_is_the_one_disk_ling_reads_and_not_the_root() -> None:
    """LING opens only device/vbd/51712 (core/arch/xen/disk.c), which no /dev/sdX name reaches on EC2
    PV; the evidence and the open risk are written down in pipeline/images/devices.py."""
    t = json.loads(stack.render(VARIANTS["ling-own-vpc"]))
    device, _ = scratch(t, "Blue", {"BlueInstanceType": "m3.medium", "BlueVirtualization": "pv"})
    assert device == devices.LING_SCRATCH != ROOT["pv"] and devices.xen_vbd(device) == devices.LING_VBD


# -- the probe rules ------------------------------------------------------------------------------------

# ALB user guide, "Listener rules", condition types: a rule forwards only when all its conditions match,
# and http-header conditions may be combined. A colour-only rule is reachable by anyone the listener
# admits; with a secret header value it is reachable only by the holder of the secret.


@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_that_reach_one_colour_require_the_secret_token(variant: str) -> None:
    t = json.loads(stack.render(VARIANTS[variant]))
    token = t["Parameters"]["ProbeToken"]
    assert token["AllowedPattern"] == "^[0-9a-f]{32}$"  # 128 random bits
    for name, rule in resources(t, "AWS::ElasticLoadBalancingV2::ListenerRule").items():
        (action,) = rule["Properties"]["Actions"]
        groups = action.get("ForwardConfig", {}).get("TargetGroups") or [action]
        if len(groups) > 1:
            continue  # the weighted rule: what every client gets
        headers = {
            c["HttpHeaderConfig"]["HttpHeaderName"]: c["HttpHeaderConfig"]["Values"]
            for c in rule["Properties"]["Conditions"]
            if c["Field"] == "http-header"
        }
        assert headers.get("X-Pipeline-Probe") == [{"Ref": "ProbeToken"}], name
