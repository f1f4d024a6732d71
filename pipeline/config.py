"""Load and validate ``pipeline.toml``.

The file has a base set of sections (``[app]``, ``[image]``, ``[ling]``, ``[aws]``, ``[ami]``,
``[deploy]``, ``[local]``) and named environments (``[env.dev.app]``, ...) that overlay the base.
Each layer is checked on its own, so an error names the exact place it came from::

    pipeline.toml: env.prod.app.port: expected integer 1-65535, got "80a"

The model is plain frozen dataclasses rather than pydantic: the schema is small, the standard library
covers it, and the error wording (one line, the TOML path, the expected shape, the value as written)
is ours to choose instead of being translated from another library's error list.

A field's type comes from its annotation (``int``, ``str``, ``bool``, ``tuple[str, ...]``,
``tuple[int, ...]`` or a ``Literal``); extra constraints come from ``check(...)`` in the field's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigError

CONFIG_FILE = "pipeline.toml"

Check = Callable[[Any], bool]


def check(expect: str, ok: Check | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with an extra constraint; ``expect`` is the wording of the error message."""
    meta = {"expect": expect, "ok": ok}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, list):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def _between(lo: int, hi: int) -> Check:
    return lambda v: lo <= v <= hi


def _nonempty(v: str) -> bool:
    return bool(v.strip())


def _erlang_name(v: str) -> bool:
    return bool(v) and v[0].islower() and all(c.isalnum() or c == "_" for c in v) and v.isascii()


def _cidr(v: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError:
        return False
    return "/" in v


def _account_id(v: str) -> bool:
    return len(v) == 12 and v.isdigit()


def _weight_steps(v: tuple[int, ...]) -> bool:
    return bool(v) and all(1 <= s <= 100 for s in v) and list(v) == sorted(set(v)) and v[-1] == 100


def _toolchain(v: str) -> bool:
    """``local`` or ``ssh://user@host[:port]`` (nothing else: no password, path or query)."""
    if v == "local":
        return True
    from urllib.parse import urlsplit

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


def _abs_path(v: str) -> bool:
    return v.startswith("/") and " " not in v and len(v) <= 200


# -- sections ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSettings:
    """The Erlang app and the configuration baked into its image (its sys.config)."""

    name: str = check("an Erlang application name (lowercase letters, digits, _)", _erlang_name, "erlang_web")
    path: str = check("a directory relative to the project root", _nonempty, "apps/erlang_web")
    port: int = check("integer 1-65535", _between(1, 65535), 8080)
    greeting: str = check("a non-empty string", _nonempty, "Hello from an Erlang unikernel")
    acceptors: int = check("integer 1-1024", _between(1, 1024), 8)
    max_connections: int = check("integer 1-1000000", _between(1, 1_000_000), 1024)
    request_timeout_ms: int = check("integer 100-600000", _between(100, 600_000), 5000)
    idle_timeout_ms: int = check("integer 100-3600000", _between(100, 3_600_000), 75000)
    max_body_bytes: int = check("integer 0-104857600", _between(0, 104_857_600), 65536)
    scratch_dir: str = check("an absolute path without spaces", _abs_path, "/scratch")
    storage: Literal["auto", "disc", "ram"] = "auto"


@dataclass(frozen=True)
class ImageSettings:
    """What kind of image to build."""

    target: Literal["beam", "ling"] = "beam"
    memory_mb: int = check("integer 64-4096 (LING refuses domains over 4 GiB)", _between(64, 4096), 256)
    extra_apps: tuple[str, ...] = check(
        "a list of OTP application names", lambda v: all(_erlang_name(a) for a in v), ()
    )


@dataclass(frozen=True)
class LingSettings:
    """Where the LING toolchain (OTP 17 + railing) lives: this machine or a build host over SSH."""

    toolchain: str = check('"local" or "ssh://user@host[:port]"', _toolchain, "local")
    otp_bin: str = ""  # directory with OTP 17's erl/erlc/escript; "" = first on PATH
    railing: str = check("a non-empty path or command name", _nonempty, "railing")
    key_file: str = ""  # SSH private key for the build host; "" = ssh-agent / default keys
    known_hosts: str = ""  # lists the build host's key; "" = ~/.ssh/known_hosts (unknown hosts are refused)
    remote_dir: str = check("an absolute path", lambda v: v.startswith("/"), "/tmp/erlang-unikernel")
    connect_timeout_s: int = check("integer 1-300", _between(1, 300), 15)
    command_timeout_s: int = check("integer 10-7200", _between(10, 7200), 900)


@dataclass(frozen=True)
class AwsSettings:
    """Which AWS to talk to: the embedded local one (moto) or a real account."""

    endpoint: Literal["local", "aws"] = "local"
    region: str = check("an AWS region name like us-east-1", lambda v: v.count("-") >= 2, "us-east-1")
    profile: str = ""  # AWS profile for endpoint = "aws"; "" = default credential chain


@dataclass(frozen=True)
class AmiSettings:
    """Publishing images as AMIs."""

    regions: tuple[str, ...] = check(
        "a list of AWS region names", lambda v: all(r.count("-") >= 2 for r in v), ()
    )
    share_with: tuple[str, ...] = check(
        "a list of 12-digit AWS account ids", lambda v: all(map(_account_id, v)), ()
    )
    deprecate_after_days: int = check("integer 0-3650 (0 = never)", _between(0, 3650), 0)
    keep: int = check("integer 1-100", _between(1, 100), 3)
    upload_workers: int = check("integer 1-64", _between(1, 64), 8)
    kms_key_id: str = ""  # "" = EBS default encryption settings


@dataclass(frozen=True)
class DeploySettings:
    """The CloudFormation stack and the blue/green rollout."""

    instance_type: str = check("an EC2 instance type like t3.micro", lambda v: "." in v, "t3.micro")
    virtualization: Literal["auto", "hvm", "pv"] = "auto"  # auto: pv for ling, hvm for beam
    capacity: int = check("integer 1-100", _between(1, 100), 1)
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
    vpc_id: str = ""  # "" = the stack makes its own small VPC
    subnet_ids: tuple[str, ...] = ()
    scratch_size_gib: int = check("integer 1-16384", _between(1, 16384), 1)
    # The load balancer's idle timeout (ELBv2 attribute idle_timeout.timeout_seconds: 1-4000, 60 by
    # default); the app's keep-alive idle timeout must be longer (_check_combinations).
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
    overrides: tuple[str, ...] = ()  # the --set SECTION.KEY=VALUE given, as given (provenance)

    @property
    def app_dir(self) -> Path:
        return self.root / self.app.path

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


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds pipeline.toml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"{CONFIG_FILE}: not found in {here} or any parent directory",
        hint="run the task from the project checkout, or create pipeline.toml (see README)",
    )


def load(
    root: Path | None = None,
    env: str | None = None,
    overrides: Iterable[str] = (),
) -> Settings:
    """Load ``pipeline.toml`` from ``root`` (default: found from cwd) for environment ``env``.

    ``env`` None means the file's ``default_env``. ``overrides`` are ``section.key=value`` strings
    (value in TOML syntax, or a bare string) applied last. Raises :class:`ConfigError` with the exact
    place of the first problem.
    """
    root = find_root(root)
    path = root / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{CONFIG_FILE}: not valid TOML: {err}", hint="fix the syntax at that line"
        ) from err
    except OSError as err:
        raise ConfigError(f"{CONFIG_FILE}: cannot read: {err.strerror}") from err

    src = CONFIG_FILE
    envs = raw.pop("env", {})
    default_env = raw.pop("default_env", "dev")
    if not isinstance(default_env, str):
        raise ConfigError(f"{src}: default_env: expected a string, got {_show(default_env)}")
    if not isinstance(envs, dict):
        raise ConfigError(f"{src}: env: expected a table of environments like [env.dev]")
    base = _check_layer(raw, prefix="", src=src)
    for name, layer in envs.items():
        if not isinstance(layer, dict):
            raise ConfigError(f"{src}: env.{name}: expected a table like [env.{name}.app]")
        _check_layer(layer, prefix=f"env.{name}.", src=src)

    chosen = env or default_env
    if chosen not in envs:
        known = ", ".join(sorted(envs)) or "none"
        raise ConfigError(
            f'{src}: environment "{chosen}" is not defined',
            hint=f"defined environments: {known}; add [env.{chosen}] or pass --env",
        )
    merged = _merge(base, _check_layer(envs[chosen], prefix=f"env.{chosen}.", src=src))
    overrides = tuple(o.strip() for o in overrides)
    merged = _merge(merged, _parse_overrides(overrides))
    return _build(merged, chosen, root, overrides)


def _check_layer(layer: Mapping[str, Any], prefix: str, src: str) -> dict[str, dict[str, Any]]:
    """Check one layer's section names, keys and value types; return it with lists made tuples."""
    out: dict[str, dict[str, Any]] = {}
    for section, values in layer.items():
        where = f"{src}: {prefix}{section}"
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section", hint=f"known sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a table [{prefix}{section}]")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        hints = typing.get_type_hints(SECTIONS[section])
        out[section] = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{where}.{key}: unknown key", hint=f"keys of [{section}]: {', '.join(sorted(fields))}"
                )
            out[section][key] = _check_value(f"{where}.{key}", value, hints[key], fields[key])
    return out


def _check_value(where: str, value: Any, hint: Any, fld: dataclasses.Field[Any]) -> Any:
    expect = fld.metadata.get("expect")
    ok: Check | None = fld.metadata.get("ok")
    origin = typing.get_origin(hint)
    converted: Any
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: expected one of {', '.join(map(_show, choices))}, got {_show(value)}"
            )
        return value
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, list) or not all(_is_type(v, item_type) for v in value):
            raise ConfigError(f"{where}: expected {expect or _type_name(hint)}, got {_show(value)}")
        converted = tuple(value)
    else:
        if not _is_type(value, hint):
            raise ConfigError(f"{where}: expected {expect or _type_name(hint)}, got {_show(value)}")
        converted = value
    if ok is not None and not ok(converted):
        raise ConfigError(f"{where}: expected {expect}, got {_show(value)}")
    return converted


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


def _parse_overrides(overrides: Iterable[str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for item in overrides:
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"--set {item}: expected SECTION.KEY=VALUE, like app.greeting=Hi")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word is a string: --set app.greeting=Hi
        layer.setdefault(section, {})[key] = value
    return _check_layer(layer, prefix="", src="--set")


def _merge(base: dict[str, dict[str, Any]], top: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {section: dict(values) for section, values in base.items()}
    for section, values in top.items():
        out.setdefault(section, {}).update(values)
    return out


def _build(
    merged: dict[str, dict[str, Any]], env: str, root: Path, overrides: tuple[str, ...] = ()
) -> Settings:
    sections = {name: cls(**merged.get(name, {})) for name, cls in SECTIONS.items()}
    settings = Settings(env=env, root=root, overrides=overrides, **sections)
    _check_combinations(settings)
    return settings


def _check_combinations(s: Settings) -> None:
    """Rules that involve more than one field."""
    src = CONFIG_FILE
    if s.image.target == "ling" and s.deploy.virtualization == "hvm":
        raise ConfigError(
            f'{src}: deploy.virtualization: the ling target boots only as a Xen PV guest, got "hvm"',
            hint='use "pv" or "auto" (and a PV instance type such as m3.medium) for ling',
        )
    # The app's contract: it closes an idle keep-alive connection only after the load balancer would
    # have; otherwise the load balancer reuses a connection the app is closing and answers 502 (ALB
    # user guide, "Connection idle timeout": configure the target's timeout larger than the balancer's).
    balancer_ms = s.deploy.idle_timeout_seconds * 1000
    if s.app.idle_timeout_ms <= balancer_ms:
        raise ConfigError(
            f"{src}: app.idle_timeout_ms: the app's keep-alive idle timeout ({s.app.idle_timeout_ms} ms) "
            f"must be longer than the load balancer's, deploy.idle_timeout_seconds "
            f"({s.deploy.idle_timeout_seconds} s)",
            hint=f"set app.idle_timeout_ms above {balancer_ms} (e.g. {balancer_ms + 15000}) or lower "
            "deploy.idle_timeout_seconds",
        )
    if bool(s.deploy.vpc_id) != bool(s.deploy.subnet_ids):
        raise ConfigError(
            f"{src}: deploy.vpc_id and deploy.subnet_ids must be given together",
            hint="leave both empty to let the stack make its own VPC",
        )


def _show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, everything else as TOML-ish JSON."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
