"""Render the Jinja2 templates in ``templates/`` that get baked into images.

Undefined variables are errors (``StrictUndefined``), reported with the template and line. Filters
turn Python values into Erlang terms, so templates never hand-quote strings:

    {env, {{ build.env | erl_binary }}}      ->  {env, <<"dev"/utf8>>}
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import jinja2

from pipeline import erlterm
from pipeline.errors import TemplateError


def environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - the outputs are Erlang terms and shell/boot text, not HTML
    )
    env.filters["erl"] = erlterm.term  # any [app.config] value (pipeline/erlterm.py has the mapping)
    env.filters["erl_binary"] = erl_binary
    env.filters["erl_string"] = erl_string
    env.filters["erl_atom"] = erl_atom
    return env


def render(template_dir: Path, name: str, context: dict[str, Any]) -> str:
    """Render ``templates/<name>`` with ``context``; raise :class:`TemplateError` naming file and line."""
    where = f"{template_dir.name}/{name}"
    try:
        return environment(template_dir).get_template(name).render(**context)
    except jinja2.TemplateNotFound as err:
        raise TemplateError(f"{where}: template not found", hint="restore it from git") from err
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"{where}:{err.lineno}: {err.message}") from err
    except jinja2.UndefinedError as err:
        line = _template_line(err, name)
        raise TemplateError(
            f"{where}:{line}: {err.message}",
            hint=f"variables available: {', '.join(sorted(context))}",
        ) from err


def _template_line(err: BaseException, name: str) -> str:
    """The template line Jinja2 was rendering when ``err`` was raised (Jinja maps frames to templates)."""
    line = "?"
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename.endswith(name):
            line = str(frame.lineno)
    return line


def erl_string(value: str) -> str:
    """A Python str as an Erlang string literal (a list of code points): ``"..."``."""
    return '"' + "".join(_erl_char(c) for c in value) + '"'


def erl_binary(value: str) -> str:
    """A Python str as an Erlang UTF-8 binary literal: ``<<"..."/utf8>>``."""
    return "<<" + erl_string(value) + "/utf8>>"


def erl_atom(value: str) -> str:
    """A Python str as an Erlang atom, quoted when it has to be."""
    simple = value and value[0].islower() and all(c.isalnum() or c in "_@" for c in value) and value.isascii()
    return value if simple else "'" + "".join(_erl_char(c, quote="'") for c in value) + "'"


def _erl_char(c: str, quote: str = '"') -> str:
    if c in (quote, "\\"):
        return "\\" + c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{{{ord(c):X}}}"
    return c
