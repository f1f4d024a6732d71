"""The settings' model: one frozen dataclass per section of ``pipeline.toml`` and :class:`Settings`.

``[app]``, ``[image]``, ``[ling]``, ``[aws]``, ``[ami]``, ``[deploy]`` and ``[local]`` each have a
class here with every key, its type, its default and its constraint; :mod:`pipeline.config` reads
the file and the ``--set`` overrides, checks each value against these fields and builds a
:class:`Settings` for one environment.

The model is plain frozen dataclasses rather than pydantic: the schema is small, the standard library
covers it, and the error wording (one line, the TOML path, the expected shape, the value as written)
is ours to choose instead of being translated from another library's error list.

A field's type comes from its annotation (``int``, ``str``, ``bool``, ``tuple[str, ...]``,
``tuple[int, ...]`` or a ``Literal``); extra constraints come from ``check(...)`` or ``rule(...)`` in
the field's metadata (:mod:`pipeline.rules` holds the rules of where values end up). The loader reads
the annotations with :func:`typing.get_type_hints`, so the names they use are imported at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import appsettings, rules
from pipeline.rules import Rule

CONFIG_FILE = "pipeline.toml"

Check = Callable[[Any], bool]


def check(
    expect: str, ok: Check | None = None, default: Any = dataclasses.MISSING, hint: str | None = None
) -> Any:
    """A dataclass field with an extra constraint; ``expect`` is the wording of the error message."""
    meta = {"expect": expect, "ok": ok, "hint": hint}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, list):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def rule(r: Rule, default: Any) -> Any:
    """A dataclass field checked by a rule of :mod:`pipeline.rules`."""
    return check(r.expect, r.ok, default, r.hint)


# Rules of pipeline.rules under the names the fields below use.
_between = rules.between
_nonempty = rules.nonblank
_cidr = rules.cidr
_weight_steps = rules.weight_steps
_toolchain = rules.toolchain


# -- sections ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSettings:
    """The pipeline's own keys about the app: what it is, what the load balancer and the health gate
    need from it, what the image gives it. What the app itself reads is ``[app.config]`` (``config``,
    rules in ``pipeline/appsettings.py``), baked by the app's own templates."""

    path: str = check("a directory (relative to pipeline.toml, or absolute)", rules.printable(4096), ".")
    release: str = rule(rules.optional(rules.LOCAL_PATH), "")  # a release made by rebar3/mix release
    name: str = rule(rules.optional(rules.APP_NAME), "")  # "" = read from the project
    profile: str = rule(rules.APP_NAME, "default")  # rebar3 profiles are atoms, like application names
    port: int = check("integer 1-65535", _between(1, 65535), 8080)
    health_path: str = check("a URL path starting with /", appsettings.url_path, "/health")
    version_path: str = check(
        'a URL path starting with /, or "" when the app cannot say which build it is',
        lambda v: v == "" or appsettings.url_path(v),
        "/version",
    )
    scratch_dir: str = rule(rules.ABSOLUTE_PATH, "/scratch")
    storage: Literal["auto", "disc", "ram"] = "auto"  # ram: the app keeps no data on the scratch volume
    # The app's contract with the load balancer: it closes an idle keep-alive connection only after
    # the balancer would have (checked against deploy.idle_timeout_seconds; the app's templates read it).
    idle_timeout_ms: int = check("integer 100-3600000", _between(100, 3_600_000), 75000)
    config: dict[str, Any] = field(default_factory=dict)  # [app.config]: see appsettings.check_config


@dataclass(frozen=True)
class ImageSettings:
    """What kind of image to build."""

    target: Literal["beam", "ling"] = "beam"
    memory_mb: int = check("integer 64-4096 (LING refuses domains over 4 GiB)", _between(64, 4096), 256)
    extra_apps: tuple[str, ...] = rule(rules.each(rules.APP_NAME), ())
    # The init script's `ulimit -n` before it starts the VM (PID 1 starts with a soft limit of 1024).
    # 65536 is the Erlang VM's default port limit: each socket or file is a port and a descriptor.
    max_open_files: int = check(
        "integer 1024-1048576 (the kernel's nr_open)", _between(1024, 1_048_576), 65536
    )


@dataclass(frozen=True)
class LingSettings:
    """Where the LING toolchain (OTP 17 + railing) lives: this machine or a build host over SSH."""

    toolchain: str = check('"local" or "ssh://user@host[:port]"', _toolchain, "local")
    # directory with OTP 17's erl/erlc/escript; "" = first on PATH
    otp_bin: str = rule(rules.optional(rules.LOCAL_PATH), "")
    railing: str = check(
        "a path or command name without control characters", rules.printable(4096), "railing"
    )
    # SSH private key for the build host; "" = ssh-agent / default keys
    key_file: str = rule(rules.optional(rules.LOCAL_PATH), "")
    # lists the build host's key; "" = ~/.ssh/known_hosts (unknown hosts are refused)
    known_hosts: str = rule(rules.optional(rules.LOCAL_PATH), "")
    remote_dir: str = rule(rules.ABSOLUTE_PATH, "/tmp/erlang-unikernel")
    connect_timeout_s: int = check("integer 1-300", _between(1, 300), 15)
    command_timeout_s: int = check("integer 10-7200", _between(10, 7200), 900)


@dataclass(frozen=True)
class AwsSettings:
    """Which AWS to talk to: the embedded local one (moto) or a real account."""

    endpoint: Literal["local", "aws"] = "local"
    region: str = rule(rules.REGION, "us-east-1")
    # AWS profile for endpoint = "aws"; "" = default credential chain
    profile: str = rule(rules.optional(rules.PROFILE), "")


@dataclass(frozen=True)
class AmiSettings:
    """Publishing images as AMIs."""

    regions: tuple[str, ...] = rule(rules.each(rules.REGION), ())
    share_with: tuple[str, ...] = rule(rules.each(rules.ACCOUNT_ID), ())
    deprecate_after_days: int = check("integer 0-3650 (0 = never)", _between(0, 3650), 0)
    keep: int = check("integer 1-100", _between(1, 100), 3)
    upload_workers: int = check("integer 1-64", _between(1, 64), 8)
    kms_key_id: str = rule(rules.optional(rules.KMS_KEY), "")  # "" = EBS default encryption settings


@dataclass(frozen=True)
class DeploySettings:
    """The CloudFormation stack and the blue/green rollout."""

    instance_type: str = rule(rules.INSTANCE_TYPE, "t3.micro")
    virtualization: Literal["auto", "hvm", "pv"] = "auto"  # auto: pv for ling, hvm for beam
    capacity: int = check("integer 1-100", _between(1, 100), 1)  # the first release's instances
    # Auto scaling of the live colour (pipeline.aws.scaling): its group's bounds and target tracking.
    min_capacity: int = check("integer 1-100", _between(1, 100), 1)
    max_capacity: int = check("integer 1-100", _between(1, 100), 4)
    scale_on: Literal["none", "requests", "cpu"] = "none"  # none: capacity stays deploy.capacity
    scale_target: int = check(
        "integer 0-1000000 (0 = 1000 requests per instance per minute, or 50% CPU)",
        _between(0, 1_000_000),
        0,
    )
    weight_steps: tuple[int, ...] = check(
        "increasing percentages 1-100 ending at 100, like [10, 50, 100]", _weight_steps, (10, 50, 100)
    )
    bake_seconds: int = check("integer 0-86400", _between(0, 86400), 60)
    health_timeout_seconds: int = check("integer 10-7200", _between(10, 7200), 600)
    retention_seconds: int = check("integer 0-604800", _between(0, 604800), 300)
    listener_port: int = check("integer 1-65535", _between(1, 65535), 80)
    allowed_cidrs: tuple[str, ...] = check(
        'a list of CIDR blocks like "203.0.113.0/24"',
        lambda v: bool(v) and all(map(_cidr, v)),
        ("0.0.0.0/0",),
    )
    vpc_id: str = rule(rules.optional(rules.VPC_ID), "")  # "" = the stack makes its own small VPC
    subnet_ids: tuple[str, ...] = rule(rules.each(rules.SUBNET_ID), ())
    scratch_size_gib: int = check("integer 1-16384", _between(1, 16384), 1)
    certificate_arn: str = rule(rules.optional(rules.CERTIFICATE_ARN), "")  # "" = HTTP only
    https_port: int = check("integer 1-65535", _between(1, 65535), 443)  # with a certificate
    access_logs_bucket: str = rule(rules.optional(rules.BUCKET_NAME), "")  # "" = no access logs
    # The load balancer's idle timeout (ELBv2 attribute idle_timeout.timeout_seconds: 1-4000, 60 by
    # default); the app's keep-alive idle timeout must be longer (pipeline.rules.check_combinations).
    idle_timeout_seconds: int = check("integer 1-4000", _between(1, 4000), 60)


@dataclass(frozen=True)
class LocalSettings:
    """The embedded local AWS and the local cloud that runs instances as QEMU VMs."""

    port: int = check("integer 1024-65535", _between(1024, 65535), 4566)
    vm_memory_mb: int = check("integer 64-8192", _between(64, 8192), 256)
    capacity: int = check("integer 1-8", _between(1, 8), 1)
    boot: Literal["uefi", "direct"] = "uefi"
    run_instances: bool = True  # false: instances exist only in the local AWS (no VMs, health faked)


SECTIONS: dict[str, type[Any]] = {
    "app": AppSettings,
    "image": ImageSettings,
    "ling": LingSettings,
    "aws": AwsSettings,
    "ami": AmiSettings,
    "deploy": DeploySettings,
    "local": LocalSettings,
}


@dataclass(frozen=True)
class Settings:
    """Validated settings for one environment (base overlaid with ``[env.NAME]`` and CLI overrides)."""

    env: str
    root: Path  # the project root (the directory holding pipeline.toml)
    app: AppSettings
    image: ImageSettings
    ling: LingSettings
    aws: AwsSettings
    ami: AmiSettings
    deploy: DeploySettings
    local: LocalSettings
    # "section.key" -> where its value came from ("pipeline.toml: env.dev.app.port", "--set app.port")
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # Which layer set each top-level [app.config] key ("app.config", "env.prod.app.config", ...),
    # for messages about a value; not a setting itself (it does not change what is built).
    config_origin: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, dotted: str) -> str:
        """Where the value of ``section.key`` came from, for an error about it."""
        return self.origins.get(dotted, f"{CONFIG_FILE}: {dotted}")

    overrides: tuple[str, ...] = ()  # the --set SECTION.KEY=VALUE given, as given (provenance)

    @property
    def app_dir(self) -> Path:
        """The app's project directory (``app.path``; absolute or relative to pipeline.toml)."""
        return self.root / self.app.path

    @property
    def assets_dir(self) -> Path:
        """Where the image recipes (``ami/``) and the shared templates (``templates/``) are: next to
        pipeline.toml when the project has its own, else the pipeline's own, so pipeline.toml can
        live in an app's repository with nothing else of the pipeline's."""
        if (self.root / "ami" / "beam.toml").is_file():
            return self.root
        return Path(__file__).resolve().parent.parent

    @property
    def release_dir(self) -> Path | None:
        """The release made elsewhere (``app.release``), or None when the pipeline builds one."""
        return self.root / self.app.release if self.app.release else None

    @property
    def work_dir(self) -> Path:
        """Local, gitignored state: builds and the embedded AWS."""
        return self.root / ".pipeline"

    @property
    def virtualization(self) -> Literal["hvm", "pv"]:
        """How instances boot: ``pv`` (Xen paravirtual, PV-GRUB) or ``hvm`` (UEFI)."""
        if self.deploy.virtualization == "auto":
            return "pv" if self.image.target == "ling" else "hvm"
        return self.deploy.virtualization

    def section(self, name: str) -> Any:
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        """The effective settings as plain data (for printing and digests)."""
        return {name: _plain(dataclasses.asdict(self.section(name))) for name in SECTIONS}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
