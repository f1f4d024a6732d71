"""The ``[app]`` section's own rules, used by ``pipeline/config.py`` while it loads the settings.

- ``app.name`` is read from the project (its relx release, else its one application) or from the
  release given in ``app.release``; a setting that disagrees is refused (:func:`resolve_name`);
- ``[app.config]`` holds arbitrary keys whose values must have Erlang terms (:func:`check_config`,
  mapping in ``pipeline/erlterm.py``); environments overlay it key by key, nested tables included
  (:func:`merge_tables`).

Kept apart from the loader so the loader stays about layers and types; nothing here imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import erlterm
from pipeline.errors import ConfigError
from pipeline.rules import show

CONFIG_FILE = "pipeline.toml"


def url_path(v: str) -> bool:
    """An origin-form request target as an HTTP client sends it: "/" then printable ASCII, no spaces."""
    return v.startswith("/") and len(v) <= 1024 and all(0x21 <= ord(c) <= 0x7E for c in v) and "#" not in v


def check_config(where: str, value: Any) -> dict[str, Any]:
    """``[app.config]``: a table whose every value has an Erlang term (``pipeline/erlterm.py``)."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: expected a table [app.config] of the app's settings, got {show(value)}",
            hint='write the app\'s settings as [app.config] keys, e.g. motd = "hi"',
        )
    try:
        erlterm.check(value)
    except erlterm.TermError as err:
        raise ConfigError(
            f"{where}.{err.path}: {err.message}",
            hint="see the TOML to Erlang mapping in README (Your own app)",
        ) from err
    return value


def merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: nested tables merged key by key; the one-key forms replace whole."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_form(value):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def put(table: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` inside ``table`` (a ``--set app.config.a.b.c=...``), making tables on the way."""
    *parents, last = dotted.split(".")
    for part in parents:
        table = table.setdefault(part, {})
    table[last] = value


def _is_form(table: dict[str, Any]) -> bool:
    """``{atom = ...}`` and the other one-key forms replace a value whole; they are not merged into."""
    return len(table) == 1 and next(iter(table)) in erlterm.FORMS


def resolve_name(
    root: Path, path: str, release: str, name: str, where: Callable[[str], str] | None = None
) -> str:
    """``app.name`` read from the project (or the release); a setting that disagrees is refused.

    When the project cannot be read (not checked out here), a given ``app.name`` is taken as it is:
    the tasks that only talk to AWS need the name, and the build checks it against the project.
    """
    from pipeline import project

    w = where or (lambda dotted: f"{CONFIG_FILE}: {dotted}")
    try:
        if release:
            identity, _ = project.identify_release(root / release, w("app.release"))
        else:
            identity = project.identify_project(root / path, w("app.path"))
    except ConfigError:
        if name:
            return name
        raise
    if not identity.name:  # an umbrella without a relx release: the setting picks the app
        if name in identity.apps:
            return name
        raise ConfigError(
            f"{w('app.name')}: the umbrella project {path} has the apps {', '.join(identity.apps)} "
            f"and no relx release{'' if not name else f'; {name} is not one of them'}",
            hint="set app.name to the app the release is named after, or add {relx, [{release, ...}]}"
            " to rebar.config",
        )
    if not _erlang_name(identity.name):
        raise ConfigError(
            f"{_relative(identity.source, root)}: the name {identity.name} cannot name the app's stack "
            "and images",
            hint="use lowercase letters, digits and _ (an Erlang application name)",
        )
    if name and name != identity.name:
        raise ConfigError(
            f'{w("app.name")}: "{name}" differs from "{identity.name}", the name in '
            f"{_relative(identity.source, root)}",
            hint="remove app.name (it is read from the project) or rename the app there",
        )
    return identity.name


def _erlang_name(v: str) -> bool:
    return bool(v) and v[0].islower() and all(c.isalnum() or c == "_" for c in v) and v.isascii()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
