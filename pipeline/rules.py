"""What a setting must look like, by the rules of the place it ends up.

Each rule is a predicate over one value plus the words the error uses for it. :mod:`pipeline.settings`
attaches them to fields; :mod:`pipeline.aws.preflight` checks the same ids against the AWS a task acts
on. The rules are those of the consumer, cited next to each: a value that passes here is one that the
init script, the boot line, CloudFormation, EC2 or KMS takes as meant (the templates still quote every
value, see :mod:`pipeline.render`).

Pure: no AWS, no file system.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.settings import Settings

SHOW_MAX = 60  # characters of a bad value shown in an error (the rest is counted, not printed)
AMI_NAME_MAX = 128  # EC2 RegisterImage: "3-128 alphanumeric characters, parentheses, ..."

# -- errors -------------------------------------------------------------------------------------------------


def bad_value(where: str, expect: str, value: Any, hint: str | None = None) -> ConfigError:
    """The one error for a value that breaks a rule: where it came from, what was expected, the value
    as written (shortened) and what to do."""
    return ConfigError(f"{where}: expected {expect}, got {show(value)}", hint=hint)


def show(value: Any, limit: int = SHOW_MAX) -> str:
    """A value as the user wrote it, for an error line: strings quoted (control characters and
    anything else that would break the line escaped), everything else as TOML-ish JSON; long values
    cut at ``limit`` characters (:data:`SHOW_MAX`: a setting's value) with the full length said."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    # Surrogates (bytes of a command line that were not UTF-8) cannot be printed: escape them.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > limit:
        size = len(value) if isinstance(value, str | list) else len(text)
        text = f"{text[:limit]}... ({size} {'characters' if isinstance(value, str) else 'in all'})"
    return text


# -- the rule type ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """``ok(value)`` and how the error says what was expected and what to do."""

    ok: Callable[[Any], bool]
    expect: str
    hint: str | None = None


def each(rule: Rule, unique: bool = True) -> Rule:
    """A rule for a list whose every item follows ``rule`` (and, ``unique``, appears once)."""

    def ok(values: tuple[Any, ...]) -> bool:
        return all(map(rule.ok, values)) and (not unique or len(set(values)) == len(values))

    return Rule(ok, f"a list of {rule.expect}" + (", each once" if unique else ""), rule.hint)


def optional(rule: Rule) -> Rule:
    """``""`` (not set) or a value following ``rule``."""
    return Rule(lambda v: v == "" or rule.ok(v), f'"" or {rule.expect}', rule.hint)


def _full(pattern: str, flags: int = 0) -> Callable[[Any], bool]:
    compiled = re.compile(pattern, flags | re.ASCII)
    return lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None


# -- text ---------------------------------------------------------------------------------------------------


def printable(max_len: int) -> Callable[[Any], bool]:
    """Text of at most ``max_len`` characters with no control character (no NUL, line break, tab)."""
    return lambda v: isinstance(v, str) and 0 < len(v) <= max_len and v.isprintable()


def nonblank(v: str) -> bool:
    return bool(v.strip())


# -- numbers, networks, hosts -----------------------------------------------------------------------------


def between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def cidr(v: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError:
        return False
    return "/" in v


def weight_steps(v: tuple[int, ...]) -> bool:
    return bool(v) and all(1 <= s <= 100 for s in v) and list(v) == sorted(set(v)) and v[-1] == 100


def toolchain(v: str) -> bool:
    """``local`` or ``ssh://user@host[:port]`` (nothing else: no password, path or query; and no
    whitespace or control character, which urlsplit would silently drop)."""
    if v == "local":
        return True
    from urllib.parse import urlsplit

    if not v.isprintable() or " " in v:
        return False
    try:
        url = urlsplit(v)
        port = url.port
    except ValueError:
        return False
    return (
        url.scheme == "ssh"
        and bool(url.username and url.hostname)
        and url.password is None
        and url.path in ("", "/")
        and not url.query
        and not url.fragment
        and (port is None or 1 <= port <= 65535)
    )


# -- paths --------------------------------------------------------------------------------------------------

PATH_MAX = 200  # a mount point and GooFS path on the boot line (Xen: 1023 characters for all of it)
_PATH_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_ABSOLUTE = _full(rf"(/{_PATH_PART})+")


def absolute_path(v: str) -> bool:
    """An absolute POSIX path of ASCII letters, digits and ``._-`` (no ``.``/``..`` parts, no ``//``),
    at most :data:`PATH_MAX` characters: the same path as a shell word, a boot line argument, an
    Erlang string and a mount point."""
    return _ABSOLUTE(v) and len(v) <= PATH_MAX and not set(v.split("/")) & {".", ".."}


ABSOLUTE_PATH = Rule(
    absolute_path,
    f"an absolute path of letters, digits and . _ - / (at most {PATH_MAX} characters)",
    'for example "/scratch"',
)


def relative_dir(v: str) -> bool:
    """A relative path inside the project: printable, no ``..`` part, not absolute."""
    parts = v.split("/")
    return printable(PATH_MAX)(v) and not v.startswith("/") and ".." not in parts and nonblank(v)


PROJECT_DIR = Rule(
    relative_dir, "a directory inside the project, relative to pipeline.toml", 'like "apps/erlang_web"'
)
LOCAL_PATH = Rule(printable(4096), "a path without control characters", None)
COMMAND = Rule(printable(4096), "a path or command name without control characters", 'like "railing"')

# -- Erlang -------------------------------------------------------------------------------------------------

# The reserved words of Erlang (reference manual, "Reserved Words", with OTP 25's maybe/else): an
# application or module cannot be named like one without quotes everywhere.
_RESERVED_WORDS = """after and andalso band begin bnot bor bsl bsr bxor case catch cond div else end fun if
    let maybe not of or orelse receive rem try when xor"""
ERLANG_RESERVED = frozenset(_RESERVED_WORDS.split())
_ATOM = _full(r"[a-z][a-z0-9_]*")
ATOM_MAX = 255  # characters in an atom (Erlang efficiency guide, "System Limits")


def erlang_name(v: str) -> bool:
    """An application name as an unquoted Erlang atom: what ``.app`` files, module prefixes and the
    boot line's ``-s`` take without quoting."""
    return _ATOM(v) and len(v) <= ATOM_MAX and v not in ERLANG_RESERVED


APP_NAME = Rule(
    erlang_name,
    "an Erlang application name: a lowercase letter, then lowercase letters, digits and _ "
    "(not a reserved word such as end)",
    'for example "erlang_web"',
)

# -- builds -------------------------------------------------------------------------------------------------

BUILD_ID = Rule(
    lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{1,64}", v) is not None,
    "a build id (hex digits)",
    "invoke build prints the build id; invoke status shows the live ones",
)

# -- environments -------------------------------------------------------------------------------------------

ENV_MAX = 32
_ENV = _full(r"[a-z](?:[a-z0-9]|-(?=[a-z0-9]))*")


def env_name(v: str) -> bool:
    """An environment name: part of the stack name (CloudFormation: ``[A-Za-z][A-Za-z0-9-]{0,127}``),
    of AMI names (EC2: 3-128 of ``[A-Za-z0-9()[] ./'@_-]``), of tags and of the init script's log. The
    common ground, lowercase so that two names never differ only in case: a lowercase letter, then
    lowercase letters, digits and single hyphens, at most :data:`ENV_MAX` characters."""
    return _ENV(v) and len(v) <= ENV_MAX


ENV_NAME = Rule(
    env_name,
    f"an environment name: a lowercase letter, then lowercase letters, digits and single hyphens "
    f"(at most {ENV_MAX} characters; it becomes part of the stack and AMI names)",
    'for example "dev", "prod" or "eu-prod"',
)

# -- AWS ----------------------------------------------------------------------------------------------------

# Region codes: "us-east-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1", "us-isob-east-1".
REGION = Rule(_full(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}"), "an AWS region name", 'like "us-east-1"')

# Account ids are twelve ASCII digits (IAM user guide, "AWS account identifiers"); re.ASCII keeps
# other scripts' digits (full-width ones, U+FF10-FF19) out.
ACCOUNT_ID = Rule(_full(r"[0-9]{12}"), "a 12-digit AWS account id (ASCII digits)", 'like "123456789012"')

# Instance types are FAMILY.SIZE: "t3.micro", "m7i-flex.large", "u-6tb1.metal", "c7i.metal-24xl"
# (EC2 user guide, "Amazon EC2 instance type naming conventions"). Whether the type exists in the
# region is the pre-flight's question (DescribeInstanceTypes).
INSTANCE_TYPE = Rule(
    _full(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\.[a-z0-9]+(-[a-z0-9]+)*"),
    "an EC2 instance type, FAMILY.SIZE in lowercase",
    'like "t3.micro" (or "m3.medium" for paravirtual images)',
)

# Resource ids: a prefix and 8 or 17 lowercase hex digits (EC2 user guide, "Resource IDs").
VPC_ID = Rule(_full(r"vpc-([0-9a-f]{8}|[0-9a-f]{17})"), "a VPC id", 'like "vpc-0abc1234def567890"')
SUBNET_ID = Rule(
    _full(r"subnet-([0-9a-f]{8}|[0-9a-f]{17})"), "a subnet id", 'like "subnet-0abc1234def567890"'
)

# What KMS DescribeKey takes as KeyId (KMS API reference, DescribeKey): a key id (a UUID, or "mrk-"
# and 32 hex digits for a multi-Region key), a key ARN, an alias name ("alias/NAME") or an alias ARN.
_KEY_ID = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS = r"alias/[A-Za-z0-9/_-]{1,250}"
_ARN_HEAD = r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:"
KMS_KEY = Rule(
    _full(rf"{_KEY_ID}|{_ALIAS}|{_ARN_HEAD}(key/[A-Za-z0-9-]+|{_ALIAS})"),
    "a KMS key id, key ARN, alias/NAME or alias ARN",
    'like "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"',
)

# ACM certificate ARNs (ACM API reference, DescribeCertificate: arn:PARTITION:acm:REGION:ACCOUNT:
# certificate/ID).
CERTIFICATE_ARN = Rule(
    _full(r"arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+"),
    "an ACM certificate ARN",
    'like "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"',
)

# S3 bucket names (S3 user guide, "Bucket naming rules"): 3-63 characters of a-z, 0-9, dots and
# hyphens, beginning and ending with a letter or digit, no two adjacent dots.
BUCKET_NAME = Rule(
    lambda v: (
        isinstance(v, str) and bool(re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v)) and ".." not in v
    ),
    "an S3 bucket name (3-63 of a-z, 0-9, dots and hyphens)",
    'like "my-alb-logs"',
)

# AWS CLI/SDK profile names: the section name in ~/.aws/config, on one line.
PROFILE = Rule(printable(128), "an AWS profile name from ~/.aws/config", "aws configure list-profiles")


def kms_region(key: str) -> str | None:
    """The region named in a KMS key or alias ARN, or None for a bare key id or alias."""
    return key.split(":")[3] if key.startswith("arn:") else None


# -- across fields ------------------------------------------------------------------------------------------


def check_combinations(s: Settings) -> None:
    """Rules that involve more than one field; the error names where each value came from."""
    from pipeline.aws import tags
    from pipeline.manifest import BUILD_ID_LEN

    w = s.where
    if s.image.target == "ling" and s.deploy.virtualization == "hvm":
        raise ConfigError(
            f'{w("deploy.virtualization")}: the ling target boots only as a Xen PV guest, got "hvm"',
            hint='use "pv" or "auto" (and a PV instance type such as m3.medium) for ling',
        )
    if s.deploy.certificate_arn and s.deploy.https_port == s.deploy.listener_port:
        raise ConfigError(
            f"{w('deploy.https_port')}: deploy.https_port and deploy.listener_port are both "
            f"{s.deploy.listener_port}",
            hint="with a certificate, HTTPS needs its own port (443) and the HTTP port (80) redirects to it",
        )
    # The app's contract: it closes an idle keep-alive connection only after the load balancer would
    # have; otherwise the load balancer reuses a connection the app is closing and answers 502 (ALB
    # user guide, "Connection idle timeout": configure the target's timeout larger than the balancer's).
    balancer_ms = s.deploy.idle_timeout_seconds * 1000
    if s.app.idle_timeout_ms <= balancer_ms:
        # blame the value given for this run (--set, a flag) when one of the two was
        pair = ("deploy.idle_timeout_seconds", "app.idle_timeout_ms")
        blamed = next((w(k) for k in pair if not w(k).startswith("pipeline.toml")), w("app.idle_timeout_ms"))
        raise ConfigError(
            f"{blamed}: the app's keep-alive idle timeout ({s.app.idle_timeout_ms} ms) "
            f"must be longer than the load balancer's, deploy.idle_timeout_seconds "
            f"({s.deploy.idle_timeout_seconds} s)",
            hint=f"set app.idle_timeout_ms above {balancer_ms} (e.g. {balancer_ms + 15000}) or lower "
            "deploy.idle_timeout_seconds",
        )
    _check_scaling(s)
    if bool(s.deploy.vpc_id) != bool(s.deploy.subnet_ids):
        given = "deploy.vpc_id" if s.deploy.vpc_id else "deploy.subnet_ids"
        raise ConfigError(
            f"{w(given)}: deploy.vpc_id and deploy.subnet_ids must be given together",
            hint="leave both empty to let the stack make its own VPC",
        )
    if len(s.deploy.subnet_ids) == 1:
        raise bad_value(
            w("deploy.subnet_ids"),
            "at least two subnets in different availability zones (a load balancer needs two)",
            s.deploy.subnet_ids,
            "add a subnet of another availability zone of the VPC",
        )
    if s.aws.endpoint == "local" and s.deploy.listener_port == s.local.port:
        raise ConfigError(
            f"{w('deploy.listener_port')}: port {s.deploy.listener_port} is the local AWS's own port "
            f"({w('local.port')})",
            hint="give the load balancer's listener another port, e.g. --set deploy.listener_port=8000",
        )
    key_region = kms_region(s.ami.kms_key_id)
    if key_region is not None and key_region != s.aws.region:
        raise ConfigError(
            f"{w('ami.kms_key_id')}: the key is in {key_region}, but the images are made in "
            f"{s.aws.region} ({w('aws.region')})",
            hint="use a key of the region the snapshot is uploaded to",
        )
    longest = tags.image_name(s.app.name, s.env, "beam", "hvm", "0" * BUILD_ID_LEN)
    if len(longest) > AMI_NAME_MAX:
        raise ConfigError(
            f"{w('app.name')} and the environment name {show(s.env)}: the AMI names would be "
            f"{len(longest)} characters, over EC2's limit of {AMI_NAME_MAX}",
            hint="use a shorter app or environment name",
        )


def _check_scaling(s: Settings) -> None:
    """The live colour's group scales between deploy.min_capacity and deploy.max_capacity (Auto
    Scaling refuses a group whose minimum is above its maximum, and a desired capacity outside them:
    UpdateAutoScalingGroup, CreateAutoScalingGroup in the Auto Scaling API reference)."""
    d, w = s.deploy, s.where
    if d.min_capacity > d.max_capacity:
        raise ConfigError(
            f"{w('deploy.min_capacity')}: {d.min_capacity} is more than deploy.max_capacity, "
            f"{d.max_capacity} ({w('deploy.max_capacity')})",
            hint="the live colour scales between the two: lower deploy.min_capacity or raise "
            "deploy.max_capacity",
        )
    if d.scale_on == "none":
        return
    if d.min_capacity == d.max_capacity:
        # A target tracking policy needs room to act (cfn-lint E3712, after the Auto Scaling user
        # guide's "Target tracking scaling policies").
        raise ConfigError(
            f"{w('deploy.max_capacity')}: deploy.scale_on = {show(d.scale_on)} needs "
            f"deploy.max_capacity above deploy.min_capacity, both are {d.min_capacity}",
            hint='raise deploy.max_capacity, or set deploy.scale_on = "none" for a fixed size',
        )
    if not d.min_capacity <= d.capacity <= d.max_capacity:
        raise ConfigError(
            f"{w('deploy.capacity')}: the first release's {d.capacity} instance(s) must be within "
            f"deploy.min_capacity and deploy.max_capacity ({d.min_capacity}-{d.max_capacity}) when "
            f"deploy.scale_on is {show(d.scale_on)}",
            hint="set deploy.capacity within the two, or change them",
        )
    if d.scale_on == "cpu" and d.scale_target > 100:
        raise ConfigError(
            f"{w('deploy.scale_target')}: {d.scale_target} is not a CPU utilization; with "
            'deploy.scale_on = "cpu" the target is a percentage 1-100',
            hint="e.g. 50 (0 = 50%)",
        )
