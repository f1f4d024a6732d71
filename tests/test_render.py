"""Jinja2 rendering of baked configuration: Erlang term quoting and strict undefined variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import render
from pipeline.errors import TemplateError


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("Hello", '<<"Hello"/utf8>>'),
        ('say "hi"\\', '<<"say \\"hi\\"\\\\"/utf8>>'),
        ("line\nbreak", '<<"line\\nbreak"/utf8>>'),
        ("héllo ✓", '<<"héllo ✓"/utf8>>'),
        ("bell\x07", '<<"bell\\x{7}"/utf8>>'),
    ],
)
def test_erl_binary_quotes(value: str, literal: str) -> None:
    assert render.erl_binary(value) == literal


def test_erl_atom_quotes_only_when_needed() -> None:
    assert render.erl_atom("erlang_web") == "erlang_web"
    assert render.erl_atom("Web") == "'Web'"
    assert render.erl_atom("it's") == "'it\\'s'"


def test_undefined_variable_names_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("first\n{{ app.port }}\n{{ missing }}\n")
    with pytest.raises(TemplateError) as err:
        render.render(tmp_path, "t.j2", {"app": {"port": 1}})
    assert str(err.value).startswith(f"{tmp_path.name}/t.j2:3: 'missing' is undefined")


def test_syntax_error_names_line(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("ok\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"t.j2:2: "):
        render.render(tmp_path, "t.j2", {})
