"""Load and validate ``pipeline.toml`` and the ``--set`` overrides into :class:`Settings`.

The file has a base set of sections (``[app]``, ``[image]``, ``[ling]``, ``[aws]``, ``[ami]``,
``[deploy]``, ``[local]``) and named environments (``[env.dev.app]``, ...) that overlay the base.
Each layer is checked on its own, so an error names the exact place it came from::

    pipeline.toml: env.prod.app.port: expected integer 1-65535, got "80a"

The sections' keys, types, defaults and constraints are the fields of :mod:`pipeline.settings`; this
module reads the layers, checks every value against those fields, merges the layers and builds the
:class:`Settings`. Every error names where the value came from (``pipeline.toml: env.prod.app.port``
or ``--set app.port``), what was expected, the value (shortened) and a hint. The settings' classes are
re-exported (``__all__``) so callers need one module: ``config.load(...)``, ``config.Settings``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pipeline import appsettings, rules
from pipeline.errors import ConfigError
from pipeline.rules import bad_value, show
from pipeline.settings import (
    CONFIG_FILE,
    SECTIONS,
    AmiSettings,
    AppSettings,
    AwsSettings,
    Check,
    DeploySettings,
    ImageSettings,
    LingSettings,
    LocalSettings,
    Settings,
)

__all__ = [
    "CONFIG_FILE",
    "SECTIONS",
    "SET",
    "AmiSettings",
    "AppSettings",
    "AwsSettings",
    "DeploySettings",
    "ImageSettings",
    "LingSettings",
    "LocalSettings",
    "Settings",
    "find_root",
    "load",
]

SET = "--set"

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
