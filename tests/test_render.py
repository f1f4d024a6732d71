"""Jinja2 rendering of baked configuration: Erlang term quoting and strict undefined variables."""

from __future__ import annotations

import subprocess
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


# -- values for the shell and the boot line ---------------------------------------------------------------

# The init script runs under busybox's ash (the image's /bin/sh); dash is the POSIX shell of the host.
SHELLS = [["busybox", "sh"], ["dash"]]


def _echo_back(shell: list[str], values: list[str]) -> list[bytes]:
    """Run a script that prints each value as the shell received it (NUL-separated)."""
    script = "".join(f"printf '%s\\0' {render.shell_quote(v)}\n" for v in values)
    out = subprocess.run([*shell, "-c", script], capture_output=True, check=True).stdout
    return out.split(b"\0")[:-1]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_shell_quote_keeps_every_byte_1_to_255_one_word(shell: list[str]) -> None:
    """Each character 1-255 alone, between others, doubled, and all of them in one value reaches the
    shell as exactly the value (one argument, nothing run, nothing expanded)."""
    chars = [chr(b) for b in range(1, 256)]
    values = [*chars, *(f"a{c}b" for c in chars), *(c * 2 for c in chars), "".join(chars), ""]
    values += ["$(echo INJECTED)", "`id`", "'; echo x; '", "${IFS}", "*", "~root", "-n", "a\nb", "\\"]
    assert _echo_back(shell, values) == [v.encode() for v in values]


def test_shell_quote_refuses_nul_and_passes_numbers() -> None:
    with pytest.raises(TemplateError, match="NUL"):
        render.shell_quote("a\0b")
    assert render.shell_quote(500) == "500"


def test_a_refused_value_names_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.sh.j2").write_text("#!/bin/sh\nX={{ v | shell_quote }}\n")
    with pytest.raises(TemplateError, match=r"t\.sh\.j2:2: a value for the shell holds a NUL byte"):
        render.render(tmp_path, "t.sh.j2", {"v": "a\0b"})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("/a b", "space"),
        ("/a\tb", "control"),
        ("/a'b", "quote"),
        ('"/a', "quote"),
        ("/é", "non-ASCII"),
        ("-s", "flag"),
    ],
)
def test_boot_token_refuses_what_ling_would_split_or_read_as_a_flag(value: str, why: str) -> None:
    """LING's parse_cmd_line (core/ling.c) splits at spaces and treats quotes specially."""
    with pytest.raises(TemplateError, match=why):
        render.boot_token(value)


def test_boot_token_passes_one_token() -> None:
    assert render.boot_token("/erlang_web/priv/sys.config") == "/erlang_web/priv/sys.config"


def test_one_line_turns_every_control_character_into_a_space() -> None:
    assert render.one_line("a\nb\rc\x00d\x85e\u2028f\tg") == "a b c d e f g"
    assert render.one_line(12) == "12"


def test_erl_atom_quotes_reserved_words() -> None:
    assert render.erl_atom("end") == "'end'"
    assert render.erl_atom("maybe") == "'maybe'"
    assert render.erl_atom("ending") == "ending"
