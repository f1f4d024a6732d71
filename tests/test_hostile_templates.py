"""Hostile strings in every string setting: each is refused with one line naming the setting, or it
renders into files that parse as intended (see tests/hostile.py for the shapes and the checkers).

Two layers are tested. The templates' own quoting is tested with the values reaching the templates
unchecked (as if a setting's rule were missing), so that it holds on its own; then every string setting
is tried through the settings loader, and what it lets through is rendered and checked again.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config
from pipeline.errors import ConfigError, TemplateError
from tests import hostile
from tests.hostile import Values

BENIGN = Values()
# Derandomized: the same examples on every run, so that CI and a developer see the same outcome.
QUIET = {"deadline": None, "derandomize": True, "database": None}
FEW = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)


def test_the_benign_values_render_as_intended(tmp_path: Path) -> None:
    script = hostile.init_script(BENIGN)
    hostile.shell_syntax_ok(script)
    assert hostile.init_variables(script) == [b"0123456789abcdef", b"dev", b"/scratch"]
    assert hostile.ling_args(hostile.ling_boot_line(BENIGN)) == hostile.ling_expected_args(BENIGN)
    assert hostile.menu_lines(hostile.menu_lst(BENIGN, ling=False)) == [
        "default", "timeout", "title", "root", "kernel", "initrd"
    ]  # fmt: skip
    (baked,) = hostile.consult([hostile.sys_config(BENIGN)], tmp_path)
    assert baked == {
        "app": "erlang_web",
        "greeting": "Hello",
        "scratch_dir": "/scratch",
        "env": "dev",
        "build_id": "0123456789abcdef",
        "keys": 4,
    }


# -- the templates' own quoting ---------------------------------------------------------------------------


@FEW
@given(scratch=hostile.hostile_text, env=hostile.hostile_text, build_id=hostile.hostile_text)
def test_the_init_script_keeps_every_value_in_its_quoted_assignment(
    scratch: str, env: str, build_id: str
) -> None:
    v = Values(scratch_dir=scratch, env=env, build_id=build_id)
    if "\0" in scratch + env + build_id:
        with pytest.raises(
            TemplateError, match=r"init\.sh\.j2:[0-9]+: a value for the shell holds a NUL byte"
        ):
            hostile.init_script(v)
        return
    script = hostile.init_script(v)
    hostile.shell_syntax_ok(script)
    assert hostile.init_variables(script) == [build_id.encode(), env.encode(), scratch.encode()]
    assert hostile.same_structure(script, hostile.init_script(BENIGN), v, BENIGN)


@FEW
@given(scratch=hostile.hostile_text, name=hostile.hostile_text)
def test_the_ling_boot_line_has_exactly_the_arguments_meant(scratch: str, name: str) -> None:
    v = Values(scratch_dir=scratch, app_name=name)
    try:
        line = hostile.ling_boot_line(v)
    except TemplateError as err:
        assert "cannot be one argument of the boot line" in str(err)
        return
    assert hostile.ling_args(line) == hostile.ling_expected_args(v)


@FEW
@given(build_id=hostile.hostile_text, env=hostile.hostile_text)
def test_vm_args_keeps_its_arguments(build_id: str, env: str) -> None:
    """A line break in a value of vm.args's header comment would add an argument to the Erlang VM."""
    text = hostile.vm_args(Values(build_id=build_id, env=env))
    assert hostile.vm_args_lines(text) == hostile.vm_args_lines(hostile.vm_args(BENIGN))


@FEW
@given(name=hostile.hostile_text, version=hostile.hostile_text, env=hostile.hostile_text)
def test_menu_lst_keeps_its_lines(name: str, version: str, env: str) -> None:
    v = Values(app_name=name, version=version, env=env)
    assert hostile.menu_lines(hostile.menu_lst(v, ling=False)) == [
        "default", "timeout", "title", "root", "kernel", "initrd"
    ]  # fmt: skip
    try:
        text = hostile.menu_lst(v, ling=True)
    except TemplateError:
        return  # the boot line refused the app name (see the boot line test)
    assert hostile.menu_lines(text) == ["default", "timeout", "title", "root", "kernel"]


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)
@given(
    batch=st.lists(
        st.tuples(hostile.hostile_text, hostile.hostile_text, hostile.hostile_text), min_size=1, max_size=12
    )
)
def test_sys_config_gives_back_exactly_the_values(batch: list[tuple[str, str, str]], tmp_path: Path) -> None:
    """One ``erl`` per batch: each sys.config parses (file:consult) to the very values."""
    values = [Values(greeting=g, scratch_dir=s, env=e, app_name=e[:40] or "x") for g, s, e in batch]
    baked = hostile.consult([hostile.sys_config(v) for v in values], tmp_path)
    assert [(b["greeting"], b["scratch_dir"], b["env"], b["app"], b["keys"]) for b in baked] == [
        (v.greeting, v.scratch_dir, v.env, v.app_name, 4) for v in values
    ]


# -- every string setting through the loader --------------------------------------------------------------


def _string_settings() -> list[tuple[str, str, bool]]:
    out = []
    for section, cls in config.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            is_list = typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is str
            literal = typing.get_origin(tp) is typing.Literal
            if tp is str or is_list or literal:
                out.append((section, f.name, is_list))
    return out


STRING_SETTINGS = _string_settings()


def test_the_string_settings_are_all_found() -> None:
    names = {f"{s}.{k}" for s, k, _ in STRING_SETTINGS}
    assert {
        "app.name",
        "app.scratch_dir",
        "app.health_path",
        "deploy.instance_type",
        "ami.share_with",
    } <= names
    assert len(names) >= 20


@settings(max_examples=300, **QUIET)
@given(setting=st.sampled_from(STRING_SETTINGS), value=hostile.hostile_text)
def test_every_string_setting_is_refused_on_one_line_or_renders_as_intended(
    setting: tuple[str, str, bool], value: str
) -> None:
    section, key, is_list = setting
    try:
        s = config.load(hostile.REPO, env="dev", overrides=hostile.overrides(section, key, value, is_list))
    except ConfigError as err:
        line = str(err)
        assert line.startswith(f"--set {section}.{key}") or line.startswith(f'--set "{section}.{key}=')
        assert "\n" not in line and "(hint: " in line and len(line) < 800
        return
    v = Values(app_name=s.app.name, scratch_dir=s.app.scratch_dir)
    script = hostile.init_script(v)
    hostile.shell_syntax_ok(script)
    assert hostile.init_variables(script)[2] == s.app.scratch_dir.encode()
    assert hostile.ling_args(hostile.ling_boot_line(v)) == hostile.ling_expected_args(v)
    assert hostile.menu_lines(hostile.menu_lst(v, ling=True)) == [
        "default",
        "timeout",
        "title",
        "root",
        "kernel",
    ]


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)
@given(name=hostile.hostile_text)
def test_every_environment_name_is_refused_on_one_line_or_renders_as_intended(
    name: str, tmp_path: Path
) -> None:
    app = hostile.REPO / "apps" / "erlang_web"  # the project's own app, from the copied settings
    text = (hostile.REPO / "pipeline.toml").read_text().replace('"apps/erlang_web"', f'"{app}"', 1)
    text += f"\n[env.{hostile.toml_string(name)}.app]\n"
    (tmp_path / "pipeline.toml").write_text(text)
    try:
        s = config.load(tmp_path, env=name)
    except ConfigError as err:
        line = str(err)
        assert line.startswith("pipeline.toml: [env.") or line.startswith("--env: ")
        assert "\n" not in line and "(hint: " in line
        return
    v = Values(env=s.env)
    script = hostile.init_script(v)
    hostile.shell_syntax_ok(script)
    assert hostile.init_variables(script)[1] == name.encode()
    assert hostile.same_structure(script, hostile.init_script(BENIGN), v, BENIGN)
