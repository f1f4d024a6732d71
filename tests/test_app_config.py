"""[app.config] as Erlang terms, and the app's own configuration templates.

The terms are checked by Erlang's own parser (``file:consult``), not by comparing text: what counts
is what the VM reads from the baked sys.config.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pipeline import appconfig, config, erlterm
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def erlang_reads(text: str, tmp_path: Path, show: str = "~p", expr: str = "T") -> str:
    """What Erlang's parser makes of ``text`` (one term ``T``): ``expr`` printed by Erlang with ``show``."""
    f = tmp_path / "term.config"
    f.write_text(f"%% -*- coding: utf-8 -*-\n{text}.\n", encoding="utf-8")
    script = f'{{ok, [T]}} = file:consult("{f}"), io:format("{show}", [{expr}]), halt().'
    return subprocess.run(
        ["erl", "-noshell", "-eval", script], capture_output=True, text=True, check=True
    ).stdout


MAPPING = [
    ('v = "text"', '<<"text">>'),
    ("v = 42", "42"),
    ("v = -7", "-7"),
    ("v = 0.5", "0.5"),
    ("v = 1e100", "1.0e100"),
    ("v = true", "true"),
    ('v = [1, "a", false]', '[1,<<"a">>,false]'),
    ('v = {a = 1, b = "x", "odd key" = 2}', "[{a,1},{b,<<\"x\">>},{'odd key',2}]"),
    ('v = {atom = "info"}', "info"),
    ('v = {atom = "end"}', "'end'"),
    ('v = {atom = "Mixed Case"}', "'Mixed Case'"),
    ('v = {charlist = "/var/log"}', '"/var/log"'),
    ('v = {tuple = [1, {atom = "ok"}]}', "{1,ok}"),
    ("v = {map = {a = 1}}", "#{a => 1}"),
    ("v = [[1, 2], []]", "[[1,2],[]]"),
]


@pytest.mark.parametrize(("toml", "printed"), MAPPING)
def test_each_toml_value_becomes_the_documented_erlang_term(toml: str, printed: str, tmp_path: Path) -> None:
    value = tomllib.loads(toml)["v"]
    assert erlang_reads(erlterm.term(value), tmp_path, "~0p") == printed


HOSTILE = ["quote \" and ' here", "]}.\n[{evil, 1}].", "back\\slash", "nul\x00byte", "tab\tcr\r", "ünï ✓ 😀"]


@pytest.mark.parametrize("text", HOSTILE)
def test_no_string_can_end_a_term_early_or_inject_one(text: str, tmp_path: Path) -> None:
    # each form reads back as one value holding exactly the code points written, whatever they are
    as_codes = (
        "case T of [{k, V}] when is_binary(V) -> unicode:characters_to_list(V); "
        "[{k, V}] when is_atom(V) -> atom_to_list(V); [{k, V}] -> V end"
    )
    for literal in (erlterm.binary(text), erlterm.charlist(text), erlterm.atom(text)):
        got = erlang_reads(f"[{{k, {literal}}}]", tmp_path, "~w", as_codes)
        assert [int(c) for c in re.findall(r"\d+", got)] == [ord(c) for c in text], literal


def test_a_hostile_key_stays_one_key(tmp_path: Path) -> None:
    table = {"a'}, {b": "x", "]}.": 1}
    assert erlang_reads(erlterm.proplist(table), tmp_path, "~0p") == "[{'a\\'}, {b',<<\"x\">>},{']}.',1}]"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"t": float("nan")}, "t"),
        ({"a": {"b": [1, float("inf")]}}, "a.b[1]"),
        ({"x": {"atom": 5}}, "x.atom"),
        ({"x": {"tuple": "no"}}, "x.tuple"),
        ({"x": tomllib.loads("d = 1979-05-27")["d"]}, "x"),
    ],
)
def test_values_without_a_term_are_refused_with_their_path(value: Any, path: str) -> None:
    with pytest.raises(erlterm.TermError) as err:
        erlterm.check(value)
    assert err.value.path == path


# -- the app's own templates ---------------------------------------------------------------------


def project(tmp_path: Path, template: str, app_config: str = "") -> config.Settings:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "config").mkdir()
    (app / "rebar.config").write_text("{erl_opts, []}.\n")
    (app / "src" / "shop.app.src").write_text('{application, shop, [{vsn, "1"}]}.\n')
    (app / "config" / "sys.config.j2").write_text(template)
    (tmp_path / "pipeline.toml").write_text(
        f'default_env = "dev"\n[app]\npath = "app"\n{app_config}\n[env.dev]\n'
        "[env.prod.app.config]\npool = 0\n"
    )
    return config.load(tmp_path)


CONTEXT = {"build": {"id": "b1", "env": "dev", "target": "beam", "config_digest": "d", "version": "1"}}


def test_a_template_gets_checked_settings_as_terms(tmp_path: Path) -> None:
    s = project(
        tmp_path,
        '[{shop, [{pool, {{ setting("pool", "integer", 1, 64, default=8) }}}, '
        '{name, {{ setting("name", "string") }}}, {mode, {{ setting("mode", "atom", choices=["a", "b"]) }}}, '
        "{db, {{ config.db | erl }}}, {build, {{ build.id | erl_binary }}}]}].",
        '[app.config]\nname = "Shop"\nmode = "b"\ndb = {host = "h", port = 5432}\n',
    )
    out = appconfig.render_app(s, {**CONTEXT, "app": s.app})
    assert out.sys_config is not None and out.vm_args is None
    assert erlang_reads(out.sys_config.decode().rstrip().rstrip("."), tmp_path, "~0p") == (
        '[{shop,[{pool,8},{name,<<"Shop">>},{mode,b},{db,[{host,<<"h">>},{port,5432}]},{build,<<"b1">>}]}]'
    )


def test_a_bad_setting_names_the_layer_it_came_from(tmp_path: Path) -> None:
    s = project(tmp_path, '[{shop, [{pool, {{ setting("pool", "integer", 1, 64) }}}]}].')
    prod = config.load(tmp_path, env="prod")
    with pytest.raises(ConfigError) as err:
        appconfig.render_app(prod, {**CONTEXT, "app": s.app})
    assert str(err.value) == (
        "pipeline.toml: env.prod.app.config.pool: expected an integer 1-64, got 0 "
        "(read by config/sys.config.j2)"
    )


def test_a_setting_the_template_needs_but_nobody_set_is_refused(tmp_path: Path) -> None:
    s = project(tmp_path, '[{shop, [{name, {{ setting("name", "string") }}}]}].')
    with pytest.raises(ConfigError, match=r"app\.config\.name: not set, and config/sys\.config\.j2 needs it"):
        appconfig.render_app(s, {**CONTEXT, "app": s.app})


def test_a_key_no_template_reads_is_refused(tmp_path: Path) -> None:
    s = project(
        tmp_path,
        '[{shop, [{name, {{ setting("name", "string") }}}]}].',
        '[app.config]\nname = "x"\nnmae = "y"\n',
    )
    with pytest.raises(ConfigError) as err:
        appconfig.render_app(s, {**CONTEXT, "app": s.app})
    assert str(err.value).startswith("pipeline.toml: app.config.nmae: no template of the app reads it")


def test_the_pipeline_names_none_of_erlang_webs_settings() -> None:
    """erlang_web's own keys live in its templates and pipeline.toml, never in the pipeline's code or
    shared templates (the keys as src/erlang_web_config.erl defines them)."""
    source = re.sub(r"%.*", "", (REPO / "apps/erlang_web/src/erlang_web_config.erl").read_text())
    keys = set(
        re.findall(r"^\s*[\[ ]\{(\w+),", source.split("\ndefaults() ->", 1)[1].split(".\n", 1)[0], re.M)
    )
    # the pipeline's own keys, which erlang_web reads too; idle_timeout is also the load balancer's
    # attribute (idle_timeout.timeout_seconds) that the app's contract setting app.idle_timeout_ms beats
    pipeline_own = {
        "port", "scratch_dir", "storage", "build_id", "config_digest", "image_target", "env", "idle_timeout"
    }  # fmt: skip
    app_keys = keys - pipeline_own
    assert {"greeting", "acceptors", "max_body"} <= app_keys
    pattern = re.compile(r"\b(" + "|".join(sorted(app_keys)) + r")\b")
    files = [
        *(REPO / "pipeline").rglob("*.py"),
        *(REPO / "pipeline" / "erl").glob("*"),
        *(REPO / "templates").rglob("*.j2"),
    ]
    named = [f"{f.relative_to(REPO)}: {m.group(1)}" for f in files for m in pattern.finditer(f.read_text())]
    assert named == []
    assert "acceptors" in (REPO / "apps/erlang_web/config/sys.config.j2").read_text()
