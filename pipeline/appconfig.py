"""The app's baked configuration: its own templates, rendered with the build's facts and ``[app.config]``.

An app keeps its configuration templates in ``<app.path>/config/``:

- ``sys.config.j2``: its whole ``sys.config``. Without one, the release's own ``sys.config`` (what
  relx or mix put in the release) is baked as it is, with the ``[app.config]`` values merged into
  the main application's environment (``templates/sys.config.j2`` renders that part).
- ``vm.args.j2``: VM arguments added after the image's own (``templates/vm.args.j2``). Without one,
  the release's own ``vm.args`` is used.

Templates see ``app`` (the ``[app]`` settings: ``app.port``, ``app.scratch_dir``, ...), ``build``
(``id``, ``env``, ``target``, ``config_digest``, ``version``), ``image``, ``config`` (the
``[app.config]`` values of the environment) and two helpers:

- the filter ``erl``: any ``[app.config]`` value as an Erlang term (``{{ config.limits | erl }}``);
- ``setting(key, kind, ...)``: one value, checked and written as a term, e.g.
  ``{{ setting("pool_size", "integer", 1, 64, default=8) }}``. A bad value is refused at build time
  with its TOML path: ``pipeline.toml: env.prod.app.config.pool_size: expected an integer 1-64, got 0``.

A key of ``[app.config]`` that none of the app's templates reads is refused too (a misspelt key
would otherwise be ignored silently).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import erlang, erlterm, render
from pipeline.config import CONFIG_FILE, Settings
from pipeline.errors import ConfigError, TemplateError, ToolFailed
from pipeline.images.runtime import RUNTIME_SCRIPT
from pipeline.manifest import write_atomic
from pipeline.proc import run
from pipeline.rules import show

TEMPLATE_DIR = "config"  # under the app's directory
SYS_CONFIG = "sys.config.j2"
VM_ARGS = "vm.args.j2"
_MISSING = object()
KINDS = ("string", "charlist", "atom", "integer", "float", "boolean", "term")


class TrackedConfig(Mapping[str, Any]):
    """``[app.config]`` as templates see it, remembering which keys were read."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        self.read.update(self._data)  # the whole table is being used (| erl, a loop)
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class AppConfig:
    """What the app's templates made (None: the app has no such template)."""

    sys_config: bytes | None
    vm_args: bytes | None
    templates: tuple[str, ...]  # the app's templates that were rendered, relative to the app dir


def templates_of(settings: Settings) -> dict[str, Path]:
    """The app's own configuration templates: ``{name: path}`` of those that exist."""
    base = settings.app_dir / TEMPLATE_DIR
    return {name: base / name for name in (SYS_CONFIG, VM_ARGS) if (base / name).is_file()}


def render_app(settings: Settings, context: dict[str, Any]) -> AppConfig:
    """Render the app's templates with ``context`` (the build's facts) plus ``config`` and ``setting``."""
    found = templates_of(settings)
    if not found:
        return AppConfig(None, None, ())
    tracked = TrackedConfig(settings.app.config)
    origin = settings.config_origin
    out: dict[str, bytes] = {}
    for name, path in found.items():
        where = f"{TEMPLATE_DIR}/{name}"
        ctx = {**context, "config": tracked, "setting": _setting_function(tracked, origin, where)}
        out[name] = render.render(path.parent, name, ctx).encode()
    unread = [k for k in settings.app.config if k not in tracked.read]
    if unread:
        key = unread[0]
        raise ConfigError(
            f"{CONFIG_FILE}: {origin.get(key, 'app.config')}.{key}: no template of the app reads it "
            f"({', '.join(f'{settings.app.path}/{TEMPLATE_DIR}/{n}' for n in found)})",
            hint=f"check the spelling; the keys they read: {', '.join(sorted(tracked.read)) or 'none'}",
        )
    return AppConfig(out.get(SYS_CONFIG), out.get(VM_ARGS), tuple(f"{TEMPLATE_DIR}/{n}" for n in found))


def bake(settings: Settings, app: erlang.Artifact, context: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the baked ``out/sys.config`` and, when the app or its release has VM arguments,
    ``out/app.vm.args``; return what they were made from (for the manifest).

    The sys.config is checked by Erlang's own parser before it is accepted (a template that makes
    something the VM would refuse at boot fails the build instead, naming the line).
    """
    out.mkdir(parents=True, exist_ok=True)
    own = render_app(settings, context)
    release_dir = app.directory / "releases" / app.version
    made: dict[str, Any] = {"templates": list(own.templates)}
    rendered = out / ".sys.config.rendered"
    try:
        if own.sys_config is not None:
            write_atomic(rendered, own.sys_config)
            _erlang_config(
                out / "sys.config", rendered, None, f"{settings.app.path}/{TEMPLATE_DIR}/{SYS_CONFIG}"
            )
            made["sys_config"] = f"{TEMPLATE_DIR}/{SYS_CONFIG}"
        else:
            _refuse_src(release_dir / "sys.config.src", settings)
            base = app.directory / app.sys_config if app.sys_config else None
            if base is not None and "RUNTIME_CONFIG=true" in base.read_text(errors="replace")[:200]:
                raise ConfigError(
                    f"release {app.name}: its sys.config asks for runtime configuration (mix's "
                    "config/runtime.exs), which mix's start script applies at boot; the image runs the VM "
                    "without that script",
                    hint="bake the values instead: move them to [app.config] in pipeline.toml",
                )
            if settings.app.config and not app.main_app:
                raise ConfigError(
                    f"{CONFIG_FILE}: app.config: release {app.name} has no application of that name, so "
                    "the [app.config] values have no application environment to go to",
                    hint=f"bake them with the app's own {settings.app.path}/{TEMPLATE_DIR}/{SYS_CONFIG}",
                )
            shared = {**context, "config": settings.app.config, "main_app": app.main_app}
            write_atomic(
                rendered, render.render(settings.assets_dir / "templates", "sys.config.j2", shared).encode()
            )
            _erlang_config(out / "sys.config", rendered, base, "templates/sys.config.j2")
            made["sys_config"] = "release" if base else "templates/sys.config.j2"
    finally:
        rendered.unlink(missing_ok=True)
    if own.vm_args is not None:
        write_atomic(out / "app.vm.args", own.vm_args)
        made["vm_args"] = f"{TEMPLATE_DIR}/{VM_ARGS}"
    elif app.vm_args:
        _refuse_src(release_dir / "vm.args.src", settings)
        write_atomic(out / "app.vm.args", (app.directory / app.vm_args).read_bytes())
        made["vm_args"] = "release"
    return made


def _erlang_config(out: Path, rendered: Path, base: Path | None, template: str) -> None:
    tc = erlang.host_toolchain()
    argv: list[str | Path] = [tc.escript, RUNTIME_SCRIPT, "config", out, rendered]
    if base is not None:
        argv.append(base)
    try:
        run(argv, what="runtime.escript config")
    except ToolFailed as err:
        error = next((ln[6:] for ln in err.stdout.splitlines() if ln.startswith("error ")), err.message)
        raise TemplateError(
            f"{template}: the sys.config it made is not valid: {error.replace(str(rendered), 'sys.config')}",
            hint="a sys.config is one Erlang list of {Application, [{Key, Value}]} ending with a full stop",
        ) from err


def _refuse_src(src: Path, settings: Settings) -> None:
    if src.is_file():
        raise ConfigError(
            f"release: {src.parent.name}/{src.name}: relx's start script fills it from environment "
            "variables at boot, and the image runs the VM without that script or those variables",
            hint=f"bake the values instead: add {settings.app.path}/{TEMPLATE_DIR}/"
            f"{src.name.removesuffix('.src')}.j2 (values from [app.config])",
        )


def _setting_function(tracked: TrackedConfig, origin: Mapping[str, str], template: str) -> Any:
    def setting(
        key: str,
        kind: str = "term",
        low: float | None = None,
        high: float | None = None,
        *,
        default: Any = _MISSING,
        choices: list[str] | None = None,
    ) -> str:
        """One ``[app.config]`` value (dotted keys reach into tables), checked and as an Erlang term."""
        if kind not in KINDS:
            raise ConfigError(
                f"{template}: setting({key!r}, {kind!r}): kind must be one of {', '.join(KINDS)}"
            )
        head, *rest = key.split(".")
        where = f"{CONFIG_FILE}: {origin.get(head, 'app.config')}.{key}"
        value: Any = tracked.get(head, _MISSING)
        for part in rest:
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{where}: not set, and {template} needs it", hint="add it to [app.config]")
            value = default
        expected = _expected(kind, low, high, choices)
        if not _fits(value, kind, low, high, choices):
            raise ConfigError(f"{where}: expected {expected}, got {_show(value)} (read by {template})")
        if kind == "charlist":
            return erlterm.charlist(value)
        if kind == "atom":
            return erlterm.atom(value)
        return erlterm.term(value)

    return setting


def _fits(value: Any, kind: str, low: float | None, high: float | None, choices: list[str] | None) -> bool:
    if kind in ("string", "charlist", "atom"):
        ok = isinstance(value, str) and (kind != "atom" or 0 < len(value) <= erlterm.MAX_ATOM)
        return ok and (choices is None or value in choices)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("integer", "float"):
        number = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
        if not number or isinstance(value, bool):
            return False
        return (low is None or value >= low) and (high is None or value <= high)
    try:
        erlterm.check(value)
    except erlterm.TermError:
        return False
    return True


def _expected(kind: str, low: float | None, high: float | None, choices: list[str] | None) -> str:
    if choices is not None:
        return "one of " + ", ".join(json.dumps(c) for c in choices)
    article = "an" if kind[0] in "aeiou" else "a"
    text = {"term": "a value with an Erlang term", "string": "a string"}.get(kind, f"{article} {kind}")
    if low is not None and high is not None:
        text += f" {low:g}-{high:g}"
    elif low is not None:
        text += f" >= {low:g}"
    elif high is not None:
        text += f" <= {high:g}"
    return text


def _show(value: Any) -> str:
    return show(value)  # quoted, escaped and shortened as every setting's value in an error
