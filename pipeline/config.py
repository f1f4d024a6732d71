"""Load and validate ``pipeline.toml``.

The file has a base set of sections (``[app]``, ``[image]``, ``[ling]``, ``[aws]``, ``[ami]``,
``[deploy]``, ``[local]``) and named environments (``[env.dev.app]``, ...) that overlay the base.
Each layer is checked on its own, so an error names the exact place it came from::

    pipeline.toml: env.prod.app.port: expected integer 1-65535, got "80a"

The model is plain frozen dataclasses rather than pydantic: the schema is small, the standard library
covers it, and the error wording (one line, the TOML path, the expected shape, the value as written)
is ours to choose instead of being translated from another library's error list.

A field's type comes from its annotation (``int``, ``str``, ``bool``, ``tuple[str, ...]``,
``tuple[int, ...]`` or a ``Literal``); extra constraints come from ``check(...)`` or ``rule(...)`` in
the field's metadata (:mod:`pipeline.rules` holds the rules of where values end up). Every error names
where the value came from (``pipeline.toml: env.prod.app.port`` or ``--set app.port``), what was
expected, the value (shortened) and a hint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import appsettings, rules
from pipeline.errors import ConfigError
from pipeline.rules import Rule, bad_value, show

CONFIG_FILE = "pipeline.toml"
SET = "--set"

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


# -- loading -------------------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"
FILE_HINT = "fix it in pipeline.toml (the shipped file documents every setting)"
SET_HINT = "fix the --set value, or drop it to use pipeline.toml's"


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds pipeline.toml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        path = candidate / CONFIG_FILE
        if path.is_file():
            return candidate
        if path.exists():
            raise ConfigError(
                f"{path}: is not a file (a directory or a device)",
                hint="pipeline.toml must be a TOML file; move the directory away",
            )
    raise ConfigError(
        f"{CONFIG_FILE}: not found in {here} or any parent directory",
        hint="run the task from the project checkout, or create pipeline.toml (see README)",
    )


def load(
    root: Path | None = None,
    env: str | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Load ``pipeline.toml`` from ``root`` (default: found from cwd) for environment ``env``.

    ``env`` None means the file's ``default_env``. ``overrides`` are ``section.key=value`` strings
    (value in TOML syntax, or a bare string) applied last, then ``flags``: a task's own flags, as
    ``{"--keep": "ami.keep=3"}``, which errors name by the flag. Raises :class:`ConfigError` with the
    exact place of the first problem.
    """
    root = find_root(root)
    raw = _read_toml(root / CONFIG_FILE)
    src = f"{CONFIG_FILE}: "
    envs = raw.pop("env", {})
    default_env = raw.pop("default_env", "dev")
    if not isinstance(envs, dict):
        raise ConfigError(
            f"{src}env: expected a table of environments like [env.dev], got {show(envs)}",
            hint="write each environment's settings as [env.NAME.SECTION] tables",
        )
    if not isinstance(default_env, str) or not rules.env_name(default_env):
        raise bad_value(f"{src}default_env", rules.ENV_NAME.expect, default_env, rules.ENV_NAME.hint)
    origins: dict[str, str] = {}
    base = _check_layer(raw, prefix="", src=src, origins=origins)
    for name, layer in envs.items():
        if not rules.env_name(name):
            raise bad_value(f"{src}[env.{name}]", rules.ENV_NAME.expect, name, "rename the table")
        if not isinstance(layer, dict):
            raise ConfigError(
                f"{src}env.{name}: expected a table like [env.{name}.app], got {show(layer)}",
                hint=f"write the settings of {name} as [env.{name}.SECTION] tables",
            )
        _check_layer(layer, prefix=f"env.{name}.", src=src)

    if env is not None and not rules.env_name(env):
        raise bad_value("--env", rules.ENV_NAME.expect, env, "leave --env out for the default_env")
    chosen = env or default_env
    if chosen not in envs:
        known = ", ".join(sorted(envs)) or "none"
        raise ConfigError(
            f'{src}environment "{chosen}" is not defined',
            hint=f"defined environments: {known}; add [env.{chosen}] or pass --env",
        )
    env_layer = _check_layer(envs[chosen], prefix=f"env.{chosen}.", src=src, origins=origins)
    overrides = tuple(o.strip() for o in overrides)
    override_layer = _parse_overrides(overrides, origins)
    merged = _merge(_merge(base, env_layer), override_layer)
    for flag, item in (flags or {}).items():
        merged = _merge(merged, _parse_overrides([item], origins, flag))
    config_origin: dict[str, str] = {}
    for layer, name in (
        (base, "app.config"),
        (env_layer, f"env.{chosen}.app.config"),
        (override_layer, "--set app.config"),
    ):
        config_origin.update(dict.fromkeys(layer.get("app", {}).get("config", {}), name))
    return _build(merged, chosen, root, origins, config_origin, overrides)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"{CONFIG_FILE}: cannot read: {err.strerror}", hint="check the file's permissions"
        ) from err
    if data.startswith(BOM):
        raise ConfigError(
            f"{CONFIG_FILE}: starts with a UTF-8 byte order mark (BOM), which TOML does not allow",
            hint="save the file as UTF-8 without BOM",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{CONFIG_FILE}:{line}: not valid UTF-8 (byte {data[err.start]:#04x} at offset {err.start})",
            hint="save the file as UTF-8; TOML files are UTF-8 text",
        ) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{CONFIG_FILE}: not valid TOML: {err}", hint="fix the syntax at that line"
        ) from err


def _check_layer(
    layer: Mapping[str, Any], prefix: str, src: str, origins: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Check one layer's section names, keys and value types; return it with lists made tuples.
    ``src`` starts every error ("pipeline.toml: " or "--set "); ``origins`` learns where each
    ``section.key`` came from."""
    out: dict[str, dict[str, Any]] = {}
    fix = SET_HINT if src.startswith(SET) else FILE_HINT
    for section, values in layer.items():
        where = f"{src}{prefix}{section}"
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section {show(section)}", hint=f"known sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"{where}: expected a table [{prefix}{section}], got {show(values)}",
                hint=f"write it as [{prefix}{section}] with key = value lines",
            )
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        hints = typing.get_type_hints(SECTIONS[section])
        out[section] = {}
        for key, value in values.items():
            if key not in fields:
                hint = f"keys of [{section}]: {', '.join(sorted(fields))}"
                if section == "app":
                    hint += f"; the app's own settings go in [{prefix}app.config]"
                raise ConfigError(f"{where}.{key}: unknown key", hint=hint)
            if section == "app" and key == "config":
                out[section][key] = appsettings.check_config(f"{where}.config", value)
            else:
                out[section][key] = _check_value(f"{where}.{key}", value, hints[key], fields[key], fix)
            if origins is not None:
                origins[f"{section}.{key}"] = f"{where}.{key}"
    return out


def _check_value(where: str, value: Any, hint: Any, fld: dataclasses.Field[Any], fix: str) -> Any:
    expect = fld.metadata.get("expect")
    ok: Check | None = fld.metadata.get("ok")
    tip = fld.metadata.get("hint") or _example(fld) or fix
    origin = typing.get_origin(hint)
    converted: Any
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise bad_value(where, f"one of {', '.join(map(show, choices))}", value, _example(fld) or fix)
        return value
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, list) or not all(_is_type(v, item_type) for v in value):
            raise bad_value(where, expect or _type_name(hint), value, tip)
        converted = tuple(value)
    else:
        if not _is_type(value, hint):
            raise bad_value(where, expect or _type_name(hint), value, tip)
        converted = value
    if ok is not None and not ok(converted):
        raise bad_value(where, expect or _type_name(hint), value, tip)
    return converted


def _example(fld: dataclasses.Field[Any]) -> str | None:
    """ "the default is X" for a field with a default worth showing."""
    if fld.default is dataclasses.MISSING or fld.default in ("", ()):
        return None
    return f"the default is {show(fld.default)}"


def _is_type(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {int: "integer", str: "string", bool: "true or false"}.get(tp, str(tp))


def _parse_overrides(
    overrides: Iterable[str], origins: dict[str, str], flag: str | None = None
) -> dict[str, dict[str, Any]]:
    """``--set`` items (or the one item of a task's ``flag``) as a checked layer."""
    layer: dict[str, dict[str, Any]] = {}
    form = "write --set SECTION.KEY=VALUE, like --set app.port=8081"
    for item in overrides:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            # The command line held bytes that are not UTF-8 (Python keeps them as surrogates).
            raise ConfigError(
                f"{SET} {show(item)}: not valid UTF-8", hint="pass the value as UTF-8 text"
            ) from None
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"{SET} {show(item)}: expected SECTION.KEY=VALUE", hint=form)
        if not section or not key:
            raise ConfigError(
                f"{SET} {show(item)}: {'the section' if not section else 'the key'} is missing",
                hint=form,
            )
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word is a string: --set app.config.motd=Hi
        if section == "app" and key.startswith("config."):  # --set app.config.limits.max=10
            appsettings.put(layer.setdefault(section, {}).setdefault("config", {}), key[7:], value)
            continue
        layer.setdefault(section, {})[key] = value
    if flag is not None:
        return _check_flag(flag, layer, origins)
    return _check_layer(layer, prefix="", src=f"{SET} ", origins=origins)


def _check_flag(
    flag: str, layer: dict[str, dict[str, Any]], origins: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """A task flag's value, checked as the setting it stands for; errors say ``--flag (section.key)``."""
    ((section, values),) = layer.items()
    ((key, value),) = values.items()
    cls = SECTIONS[section]
    fld = {f.name: f for f in dataclasses.fields(cls)}[key]
    where = f"{flag} ({section}.{key})"
    origins[f"{section}.{key}"] = where
    hint = f"fix {flag}, or leave it out for the setting's value"
    return {section: {key: _check_value(where, value, typing.get_type_hints(cls)[key], fld, hint)}}


def _merge(base: dict[str, dict[str, Any]], top: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {section: dict(values) for section, values in base.items()}
    for section, values in top.items():
        merged = out.setdefault(section, {})
        for key, value in values.items():
            if section == "app" and key == "config":
                # [env.NAME.app.config] changes only the keys it names, nested tables included
                merged[key] = appsettings.merge_tables(merged.get(key, {}), value)
            else:
                merged[key] = value
    return out


def _build(
    merged: dict[str, dict[str, Any]],
    env: str,
    root: Path,
    origins: dict[str, str],
    config_origin: Mapping[str, str] | None = None,
    overrides: tuple[str, ...] = (),
) -> Settings:
    sections = {name: cls(**merged.get(name, {})) for name, cls in SECTIONS.items()}
    app = sections["app"]
    sections["app"] = dataclasses.replace(
        app,
        name=appsettings.resolve_name(
            root, app.path, app.release, app.name, lambda d: origins.get(d, f"{CONFIG_FILE}: {d}")
        ),
    )
    settings = Settings(
        env=env,
        root=root,
        **sections,
        origins=origins,
        config_origin=dict(config_origin or {}),
        overrides=overrides,
    )
    rules.check_combinations(settings)
    return settings


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
