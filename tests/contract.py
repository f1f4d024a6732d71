"""The request-level contract: what AWS accepts, checked on the requests the pipeline sends.

moto stores almost anything, so a request it takes says nothing about AWS. Two sources say what AWS
takes instead, and neither is moto:

- :func:`model_problems`: botocore's service model of the operation (the API's own shapes), checked
  in full: required members, no unknown ones, types, lengths and value ranges, enums and patterns.
  (botocore validates only some of this before sending; patterns and maximums it leaves to AWS.)
- :data:`RULES`: rules AWS documents that the model does not carry (parameters that exclude or need
  each other, value formats described only in prose, quotas), each with the page that states it.

:func:`aws_operations` lists the calls the pipeline's AWS code can make (read from its source), so a
test can require that every one of them was exercised and checked.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import regex
from botocore import xform_name
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("ec2", "ebs", "cloudformation", "elbv2", "autoscaling", "cloudwatch", "iam", "sts", "kms")


@cache
def operation_model(service: str, operation: str) -> OperationModel:
    return botocore.session.get_session().get_service_model(service).operation_model(operation)


# -- the service model ----------------------------------------------------------------------------------


def model_problems(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """Everything in ``params`` the operation's input shape does not allow (empty: all fits)."""
    shape = operation_model(service, operation).input_shape
    if shape is None:
        return [f"{operation} takes no parameters, got {sorted(params)}"] if params else []
    return list(_check(shape, params, operation))


def _check(shape: Shape, value: Any, where: str) -> Iterator[str]:
    kind = shape.type_name
    meta = shape.metadata
    if isinstance(shape, StructureShape):
        if not isinstance(value, Mapping):
            yield f"{where}: expected a structure, got {type(value).__name__}"
            return
        for name in shape.required_members:
            if name not in value:
                yield f"{where}.{name}: required"
        for name, item in value.items():
            if name not in shape.members:
                yield f"{where}.{name}: not a member of {shape.name}"
            else:
                yield from _check(shape.members[name], item, f"{where}.{name}")
        return
    if isinstance(shape, ListShape):
        if not isinstance(value, list | tuple):
            yield f"{where}: expected a list, got {type(value).__name__}"
            return
        yield from _bounds(where, len(value), meta, "items")
        for i, item in enumerate(value):
            yield from _check(shape.member, item, f"{where}[{i}]")
        return
    if isinstance(shape, MapShape):
        if not isinstance(value, Mapping):
            yield f"{where}: expected a map, got {type(value).__name__}"
            return
        for k, v in value.items():
            yield from _check(shape.key, k, f"{where} key")
            yield from _check(shape.value, v, f"{where}[{k}]")
        return
    if kind == "string":
        if not isinstance(value, str):
            yield f"{where}: expected a string, got {type(value).__name__}"
            return
        yield from _bounds(where, len(value), meta, "characters")
        if shape.enum and value not in shape.enum:
            yield f"{where}: {value!r} is not one of {shape.enum}"
        pattern = meta.get("pattern")
        if pattern and not _pattern(pattern).search(value):
            yield f"{where}: {value!r} does not match {pattern!r}"
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            yield f"{where}: expected an integer, got {value!r}"
            return
        if "min" in meta and value < meta["min"]:
            yield f"{where}: {value} is below {meta['min']}"
        if "max" in meta and value > meta["max"]:
            yield f"{where}: {value} is above {meta['max']}"
    elif kind == "boolean":
        if not isinstance(value, bool):
            yield f"{where}: expected true or false, got {value!r}"
    elif kind == "blob":
        if not isinstance(value, bytes | bytearray) and not hasattr(value, "read"):
            yield f"{where}: expected bytes, got {type(value).__name__}"
    elif kind == "timestamp":
        if not isinstance(value, datetime | str | int | float):
            yield f"{where}: expected a time, got {type(value).__name__}"
    elif kind in ("double", "float") and (not isinstance(value, int | float) or isinstance(value, bool)):
        yield f"{where}: expected a number, got {value!r}"


@cache
def _pattern(pattern: str) -> Any:
    """A model pattern compiled as its Java/ECMAScript syntax means it: ``regex`` (cfn-lint's own
    dependency) reads ``\\p{L}`` classes, and a surrogate-pair range is the supplementary planes."""
    java_pairs = "\\uD800\\uDC00-\\uDBFF\\uDFFF"
    return regex.compile(pattern.replace(java_pairs, "\\U00010000-\\U0010FFFF"), regex.DOTALL)


def _bounds(where: str, size: int, meta: Mapping[str, Any], unit: str) -> Iterator[str]:
    if "min" in meta and size < meta["min"]:
        yield f"{where}: {size} {unit}, at least {meta['min']}"
    if "max" in meta and size > meta["max"]:
        yield f"{where}: {size} {unit}, at most {meta['max']}"


# -- what AWS documents beyond the model -------------------------------------------------------------------

Check = Callable[[Mapping[str, Any]], str | None]  # a problem, or None


@dataclass(frozen=True)
class Rule:
    service: str
    operation: str
    rule: str  # what AWS requires, in a few words
    doc: str  # the page that says so
    check: Check


EBS_API = "https://docs.aws.amazon.com/ebs/latest/APIReference"
EBS_ENCRYPTION = "https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-encryption.html"
EC2_API = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference"
EC2_IDEMPOTENCY = "https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html"
EC2_TAGS = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions"
CFN_API = "https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference"
CFN_QUOTAS = "https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html"
CW_API = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_GetMetricStatistics.html"
BLOCK = 512 * 1024
AMI_NAME = re.compile(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}")


def _when(ok: bool, problem: str) -> str | None:
    return None if ok else problem


def _tags_ok(tags: Any) -> str | None:
    for tag in tags or []:
        key, value = str(tag.get("Key", "")), str(tag.get("Value", ""))
        if not 1 <= len(key) <= 128 or len(value) > 256 or key.lower().startswith("aws:"):
            return f"tag {key!r}={value[:40]!r}: keys 1-128 characters, not aws:, values at most 256"
    return _when(len(tags or []) <= 50, f"{len(tags or [])} tags: at most 50 per resource")


def _specs_ok(specs: Any, kinds: tuple[str, ...]) -> str | None:
    for spec in specs or []:
        if spec.get("ResourceType") not in kinds:
            return f"TagSpecifications for {spec.get('ResourceType')!r}: only {kinds}"
        problem = _tags_ok(spec.get("Tags"))
        if problem:
            return problem
    return None


def _b64_sha256(value: Any) -> bool:
    try:
        return len(base64.b64decode(str(value), validate=True)) == 32
    except ValueError:
        return False


def _template_parameters(params: Mapping[str, Any]) -> str | None:
    """Every parameter given is declared, and every declared one without a default is given."""
    body = params.get("TemplateBody")
    if not body:
        return None
    declared = json.loads(body).get("Parameters", {})
    given = {p["ParameterKey"] for p in params.get("Parameters", [])}
    unknown = sorted(given - set(declared))
    missing = sorted(k for k, v in declared.items() if k not in given and "Default" not in v)
    if any(p.get("UsePreviousValue") for p in params.get("Parameters", [])):
        return "UsePreviousValue: the pipeline passes every parameter explicitly"
    return _when(not unknown and not missing, f"parameters not in the template {unknown}, missing {missing}")


def _root_mapped(params: Mapping[str, Any]) -> str | None:
    root = params.get("RootDeviceName")
    devices = [m.get("DeviceName") for m in params.get("BlockDeviceMappings", []) if m.get("Ebs")]
    return _when(root in devices, f"RootDeviceName {root} has no EBS mapping ({devices})")


def _not_both(a: str, b: str) -> Check:
    return lambda p: _when(not (a in p and b in p), f"{a} with {b}")


def _given(name: str) -> Check:
    return lambda p: _when(bool(p.get(name)), f"no {name}")


def _ami_name(p: Mapping[str, Any]) -> str | None:
    return _when(bool(AMI_NAME.fullmatch(p["Name"])), f"AMI name {p['Name']!r}")


def _ec2_token(p: Mapping[str, Any]) -> str | None:
    token = str(p.get("ClientToken", ""))
    return _when(0 < len(token) <= 64 and token.isascii(), f"ClientToken {token!r}")


def _block(p: Mapping[str, Any]) -> str | None:
    return _when(p["DataLength"] == BLOCK == len(p["BlockData"]), f"DataLength {p['DataLength']}")


def _block_checksum(p: Mapping[str, Any]) -> str | None:
    ok = _b64_sha256(p["Checksum"]) and p["ChecksumAlgorithm"] == "SHA256"
    return _when(ok, f"Checksum {p['Checksum']!r}")


def _aggregate(p: Mapping[str, Any]) -> str | None:
    ok = "Checksum" not in p or (
        _b64_sha256(p["Checksum"])
        and p.get("ChecksumAlgorithm") == "SHA256"
        and p.get("ChecksumAggregationMethod") == "LINEAR"
    )
    return _when(ok, "Checksum without its algorithm and LINEAR aggregation")


def _metric_window(p: Mapping[str, Any]) -> str | None:
    span = (p["EndTime"] - p["StartTime"]).total_seconds()
    return _when(p["Period"] % 60 == 0 and span > 0 and span / p["Period"] <= 1440, "period or window")


def _template_size(p: Mapping[str, Any]) -> str | None:
    return _when(len(p.get("TemplateBody", "").encode()) <= 51200, "template body over 51,200 bytes")


RULES: tuple[Rule, ...] = (
    # EBS direct: StartSnapshot
    Rule(
        "ebs",
        "StartSnapshot",
        "ParentSnapshotId and Encrypted never together",
        f"{EBS_API}/API_StartSnapshot.html",
        _not_both("ParentSnapshotId", "Encrypted"),
    ),
    Rule(
        "ebs",
        "StartSnapshot",
        "a snapshot with a parent takes its parent's key: no KmsKeyArn",
        EBS_ENCRYPTION,
        _not_both("ParentSnapshotId", "KmsKeyArn"),
    ),
    Rule(
        "ebs",
        "StartSnapshot",
        "KmsKeyArn only with Encrypted=true (with Encrypted=false the request fails)",
        EBS_ENCRYPTION,
        lambda p: _when("KmsKeyArn" not in p or p.get("Encrypted") is True, "KmsKeyArn, not Encrypted=true"),
    ),
    Rule(
        "ebs",
        "StartSnapshot",
        "a ClientToken, so that a retry cannot start a second snapshot",
        f"{EBS_API}/API_StartSnapshot.html",
        _given("ClientToken"),
    ),
    # EBS direct: blocks
    Rule(
        "ebs",
        "PutSnapshotBlock",
        "DataLength is the block size, 524288 bytes, and the data is that long",
        f"{EBS_API}/API_PutSnapshotBlock.html",
        _block,
    ),
    Rule(
        "ebs",
        "PutSnapshotBlock",
        "Checksum: the base64 SHA-256 of the block (ChecksumAlgorithm SHA256)",
        f"{EBS_API}/API_PutSnapshotBlock.html",
        _block_checksum,
    ),
    Rule(
        "ebs",
        "CompleteSnapshot",
        "an aggregate Checksum comes with its algorithm and LINEAR aggregation",
        f"{EBS_API}/API_CompleteSnapshot.html",
        _aggregate,
    ),
    # EC2 images
    Rule(
        "ec2",
        "RegisterImage",
        "AMI name: 3-128 letters, digits, ()[] ./-'@_",
        f"{EC2_API}/API_RegisterImage.html",
        _ami_name,
    ),
    Rule(
        "ec2",
        "RegisterImage",
        "the root device is one of the image's EBS block device mappings",
        f"{EC2_API}/API_RegisterImage.html",
        _root_mapped,
    ),
    Rule(
        "ec2",
        "RegisterImage",
        "UEFI boot mode only for HVM images",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-instance-boot-mode.html",
        lambda p: _when(p.get("BootMode") != "uefi" or p.get("VirtualizationType") == "hvm", "uefi on PV"),
    ),
    Rule(
        "ec2",
        "RegisterImage",
        "a paravirtual image names its kernel (a PV-GRUB AKI), an HVM image none",
        "https://docs.aws.amazon.com/linux/al2/ug/UserProvidedKernels.html",
        lambda p: _when(("KernelId" in p) == (p.get("VirtualizationType") == "paravirtual"), "KernelId"),
    ),
    Rule(
        "ec2",
        "RegisterImage",
        "tags at registration only for the image and its snapshots",
        f"{EC2_API}/API_RegisterImage.html",
        lambda p: _specs_ok(p.get("TagSpecifications"), ("image", "snapshot")),
    ),
    Rule(
        "ec2",
        "CopyImage",
        "a ClientToken of at most 64 ASCII characters (idempotent retries)",
        EC2_IDEMPOTENCY,
        _ec2_token,
    ),
    Rule(
        "ec2",
        "CopyImage",
        "AMI name: 3-128 letters, digits, ()[] ./-'@_",
        f"{EC2_API}/API_CopyImage.html",
        _ami_name,
    ),
    Rule(
        "ec2",
        "CopyImage",
        "tags at copy time only for the image and its snapshots",
        f"{EC2_API}/API_CopyImage.html",
        lambda p: _specs_ok(p.get("TagSpecifications"), ("image", "snapshot")),
    ),
    Rule(
        "ec2",
        "CreateTags",
        "tag keys 1-128 characters (not aws:), values up to 256, 50 tags at most",
        EC2_TAGS,
        lambda p: _tags_ok(p["Tags"]),
    ),
    Rule(
        "ec2",
        "EnableImageDeprecation",
        "DeprecateAt at most 10 years ahead",
        f"{EC2_API}/API_EnableImageDeprecation.html",
        lambda p: _when(p["DeprecateAt"] <= datetime.now(UTC) + timedelta(days=3653), "too far ahead"),
    ),
    Rule(
        "ec2",
        "ModifyImageAttribute",
        "launch permission for account ids, never for all (a public AMI)",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/sharingamis-explicit.html",
        lambda p: _when({"Group": "all"} not in p.get("LaunchPermission", {}).get("Add", []), "public AMI"),
    ),
    # CloudFormation
    *(
        Rule(
            "cloudformation",
            op,
            "a ClientRequestToken, so that a retry is not a second operation",
            f"{CFN_API}/API_{op}.html",
            _given("ClientRequestToken"),
        )
        for op in ("CreateStack", "UpdateStack", "DeleteStack", "ExecuteChangeSet")
    ),
    Rule(
        "cloudformation",
        "CreateChangeSet",
        "a ClientToken, so that a retry is not a second change set",
        f"{CFN_API}/API_CreateChangeSet.html",
        _given("ClientToken"),
    ),
    *(
        Rule(
            "cloudformation",
            op,
            "a template body of at most 51,200 bytes (larger ones go through S3)",
            CFN_QUOTAS,
            _template_size,
        )
        for op in ("CreateStack", "UpdateStack", "CreateChangeSet")
    ),
    *(
        Rule(
            "cloudformation",
            op,
            "exactly the template's parameters: none unknown, none missing",
            f"{CFN_API}/API_{op}.html",
            _template_parameters,
        )
        for op in ("CreateStack", "UpdateStack", "CreateChangeSet")
    ),
    Rule(
        "cloudformation",
        "CreateChangeSet",
        "ChangeSetType UPDATE for an existing stack (CREATE is the default)",
        f"{CFN_API}/API_CreateChangeSet.html",
        lambda p: _when(p.get("ChangeSetType") == "UPDATE", f"ChangeSetType {p.get('ChangeSetType')}"),
    ),
    # CloudWatch
    Rule(
        "cloudwatch",
        "GetMetricStatistics",
        "Period a multiple of 60, at most 1,440 data points, the start before the end",
        CW_API,
        _metric_window,
    ),
    Rule(
        "cloudwatch",
        "GetMetricStatistics",
        "Statistics or ExtendedStatistics, not both",
        CW_API,
        lambda p: _when(("Statistics" in p) != ("ExtendedStatistics" in p), "statistics"),
    ),
)


def rule_problems(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """The documented rules ``params`` breaks, each with its page."""
    out = []
    for rule in RULES:
        if (rule.service, rule.operation) == (service, operation):
            problem = rule.check(params)
            if problem:
                out.append(f"{operation}: {rule.rule}: {problem} ({rule.doc})")
    return out


# -- the calls the pipeline's AWS code makes --------------------------------------------------------------


def aws_operations(root: Path = REPO) -> dict[str, set[tuple[str, str]]]:
    """The boto3 methods ``pipeline/aws``, the tasks (``pipeline/cli``, ``tasks.py``) call
    (``client.describe_images(``, ``get_paginator("describe_snapshots")``) -> the (service, operation)
    pairs that method name can be."""
    session = botocore.session.get_session()
    methods: dict[str, set[tuple[str, str]]] = {}
    for service in SERVICES:
        for op in session.get_service_model(service).operation_names:
            methods.setdefault(xform_name(op), set()).add((service, op))
    found: dict[str, set[tuple[str, str]]] = {}
    tasks = [*sorted((root / "pipeline" / "cli").glob("*.py")), root / "tasks.py"]
    for path in [*sorted((root / "pipeline" / "aws").glob("*.py")), *tasks]:
        text = path.read_text()
        for name in re.findall(r"\.(\w+)\(", text) + re.findall(r'get_paginator\("(\w+)"\)', text):
            if name in methods:
                found[name] = methods[name]
    return found
