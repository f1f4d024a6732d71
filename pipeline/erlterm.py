"""TOML values as Erlang terms: the mapping of ``[app.config]`` into an app's baked configuration.

The mapping (also in the README, "Your own app"):

========================================  =============================================================
TOML                                      Erlang
========================================  =============================================================
string ``"text"``                         UTF-8 binary ``<<"text"/utf8>>``
integer ``42``                            integer ``42``
float ``0.5``                             float ``0.5`` (``inf`` and ``nan`` are refused)
boolean ``true``                          atom ``true``
array ``[1, "a"]``                        list ``[1, <<"a"/utf8>>]``
table ``{a = 1, b = "x"}``                proplist ``[{a, 1}, {b, <<"x"/utf8>>}]`` (keys become atoms,
                                          in the order written)
``{atom = "info"}``                       atom ``info``
``{charlist = "/var/log"}``               string (list of code points) ``"/var/log"``
``{tuple = [1, "a"]}``                    tuple ``{1, <<"a"/utf8>>}``
``{map = {a = 1}}``                       map ``#{a => 1}`` (keys become atoms)
dates and times                           refused (write a string or a ``{tuple = [...]}``)
========================================  =============================================================

Strings become binaries because that is what current Erlang and Elixir libraries take for text;
an app that wants a charlist (a file name for an old API) or an atom says so with the one-key
tables above. A table whose only key is one of ``atom``, ``charlist``, ``tuple``, ``map`` is always
read as that form. Atoms (keys and ``{atom = ...}``) may be any text up to 255 characters, the VM's
limit. Every literal is quoted and escaped here, so no value can end a term early or inject one
(quotes, backslashes, ``]}.``, newlines and NUL are all escaped).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from pipeline.rules import ATOM_MAX, ERLANG_RESERVED

FORMS = ("atom", "charlist", "tuple", "map")
MAX_ATOM = ATOM_MAX  # characters: the VM's atom length limit
# Reserved words: as bare atoms they would not parse, so they are always quoted.
RESERVED = ERLANG_RESERVED


class TermError(ValueError):
    """A value that has no Erlang term; ``path`` is its TOML path below the checked value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def check(value: Any, path: str = "") -> None:
    """Raise :class:`TermError` (naming the TOML path below ``path``) if ``value`` has no term."""
    term(value, path)


def term(value: Any, path: str = "") -> str:
    """``value`` as Erlang source text (see the module docstring for the mapping)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value, path)
    if isinstance(value, str):
        return binary(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(term(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key in FORMS:
                return _form(key, inner, f"{path}.{key}" if path else key)
        return proplist(value, path)
    if isinstance(value, datetime.date | datetime.time):
        raise TermError(
            path,
            f"a TOML date or time ({value}) has no Erlang term: write it as a string or a {{tuple = [...]}}",
        )
    raise TermError(path, f"a {type(value).__name__} has no Erlang term")


def proplist(table: Mapping[str, Any], path: str = "") -> str:
    """A table as ``[{key, Value}, ...]`` with atom keys, in the table's order."""
    items = [f"{{{atom(k, _join(path, k))}, {term(v, _join(path, k))}}}" for k, v in table.items()]
    return "[" + ", ".join(items) + "]"


def binary(text: str) -> str:
    return "<<" + charlist(text) + "/utf8>>"


def charlist(text: str) -> str:
    return '"' + "".join(_char(c, '"') for c in text) + '"'


def atom(text: str, path: str = "") -> str:
    """``text`` as an atom, quoted unless it is a plain lowercase name that is not a reserved word."""
    if not isinstance(text, str):
        raise TermError(path, f"an atom needs a string, got {text!r}")
    if len(text) > MAX_ATOM:
        raise TermError(path, f"an atom is at most {MAX_ATOM} characters, got {len(text)}")
    plain = (
        text[:1].isascii()
        and text[:1].islower()
        and all(c.isascii() and (c.isalnum() or c in "_@") for c in text)
        and text not in RESERVED
    )
    return text if plain else "'" + "".join(_char(c, "'") for c in text) + "'"


def _form(kind: str, inner: Any, path: str) -> str:
    if kind == "atom":
        return atom(inner, path)
    if kind == "charlist":
        if not isinstance(inner, str):
            raise TermError(path, f"a charlist needs a string, got {inner!r}")
        return charlist(inner)
    if kind == "tuple":
        if not isinstance(inner, list):
            raise TermError(path, f"a tuple needs an array, got {inner!r}")
        return "{" + ", ".join(term(v, f"{path}[{i}]") for i, v in enumerate(inner)) + "}"
    if not isinstance(inner, Mapping):
        raise TermError(path, f"a map needs a table, got {inner!r}")
    pairs = [f"{atom(k, _join(path, k))} => {term(v, _join(path, k))}" for k, v in inner.items()]
    return "#{" + ", ".join(pairs) + "}"


def _float(value: float, path: str) -> str:
    if not math.isfinite(value):
        raise TermError(path, f"{value} has no Erlang float")
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"  # Erlang floats need a fraction: 1e+100 -> 1.0e+100
    return mantissa + (e + exponent if e else "")


def _join(path: str, key: str) -> str:
    simple = key and all(c.isalnum() or c in "_-" for c in key) and key.isascii()
    part = key if simple else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def _char(c: str, quote: str) -> str:
    if c in (quote, "\\"):
        return "\\" + c
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{{{ord(c):X}}}"
    return c
