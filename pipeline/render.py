"""Render the Jinja2 templates in ``templates/`` that get baked into images.

Undefined variables are errors (``StrictUndefined``), reported with the template and line. Filters
quote every value for the place it ends up, so templates never hand-quote strings:

    {env, {{ build.env | erl_binary }}}              ->  {env, <<"dev"/utf8>>}
    mkdir -p {{ app.scratch_dir | shell_quote }}     ->  mkdir -p '/my scratch'
    -goofs {{ app.scratch_dir | boot_token }}        ->  -goofs /scratch (or an error)
    title {{ build.version | one_line }}             ->  title 1.0 (control characters become spaces)

Settings are checked where they are loaded (:mod:`pipeline.config`); the filters are the second line
of defence, so that no value can change the structure of a script, a boot line or a file whatever
reached the template.
"""

from __future__ import annotations

import re
import shlex
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
    env.filters["shell_quote"] = shell_quote
    env.filters["boot_token"] = boot_token
    env.filters["one_line"] = one_line
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
    except TemplateError as err:  # a filter refused a value
        line = _template_line(err, name)
        raise TemplateError(f"{where}:{line}: {err.message}", hint=err.hint) from err
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


def shell_quote(value: object) -> str:
    """A value as one word of a POSIX shell command (``sh``, busybox ``ash``), whatever it holds.

    :func:`shlex.quote` single-quotes anything but a plain word, and nothing is special inside single
    quotes except the quote itself, which it writes as ``'"'"'``. A NUL byte cannot be part of a shell
    word (the shell ends the string there), so it is refused instead of silently cutting the value.
    """
    text = str(value)
    if "\0" in text:
        raise TemplateError(
            f"a value for the shell holds a NUL byte: {text[:40]!r}",
            hint="remove the NUL from the setting (pipeline.toml or --set)",
        )
    return shlex.quote(text)


# One argument of LING's boot line. LING's parse_cmd_line (core/ling.c) splits the Xen command line
# at spaces, reads a token that starts with ' or " as quoted up to the next such quote, and its init
# reads a token that starts with "-" as a new flag. A value that is one token keeps to printable ASCII
# without spaces and quotes and does not start with "-".
_NOT_IN_TOKEN = frozenset(" '\"")


def boot_token(value: object) -> str:
    """A value as exactly one argument of a (LING) boot line, or a :class:`TemplateError`."""
    text = str(value)
    if not text:
        why = "it is empty"
    elif not (text.isascii() and text.isprintable()) or _NOT_IN_TOKEN & set(text):
        why = "it holds a space, a quote, a control or a non-ASCII character"
    elif text.startswith("-"):
        why = "it starts with - and would be read as a flag"
    else:
        return text
    raise TemplateError(
        f"{text[:60]!r} cannot be one argument of the boot line: {why}",
        hint="use printable ASCII without spaces or quotes that does not start with -",
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value: object) -> str:
    """A value as text on one line of a line-based file (menu.lst's title, a comment): every control
    character (line breaks included) becomes a space."""
    return _CONTROL.sub(" ", str(value))


def erl_string(value: str) -> str:
    """A Python str as an Erlang string literal (a list of code points): ``"..."``."""
    return erlterm.charlist(value)


def erl_binary(value: str) -> str:
    """A Python str as an Erlang UTF-8 binary literal: ``<<"..."/utf8>>``."""
    return erlterm.binary(value)


def erl_atom(value: str) -> str:
    """A Python str as an Erlang atom, quoted when it has to be."""
    try:
        return erlterm.atom(value)
    except erlterm.TermError as err:
        raise TemplateError(f"a value for an Erlang atom: {err.message}") from err
