"""`invoke build` for the app and its baked configuration: content-addressed, idempotent, deterministic,
and one clear line (with nothing left behind) for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.manifest import sha256_file
from tests.project import copy_project, invoke


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "proj")


def leftovers(project: Path) -> list[str]:
    builds = project / ".pipeline" / "builds"
    return sorted(p.name for p in builds.iterdir()) if builds.is_dir() else []


def consult(path: Path) -> str:
    """Parse an Erlang term file with the real Erlang parser; return the terms as printed by Erlang."""
    script = f'{{ok, T}} = file:consult("{path}"), io:format("~p", [T]), halt().'
    return subprocess.run(
        ["erl", "-noshell", "-eval", script], capture_output=True, text=True, check=True
    ).stdout


def test_build_writes_a_content_addressed_build_with_a_manifest(project: Path) -> None:
    settings = config.load(project, env="dev")
    result = build.build(settings)
    assert not result.reused
    assert result.directory == project / ".pipeline" / "builds" / result.build_id
    m = json.loads((result.directory / "manifest.json").read_text())
    assert m["build_id"] == result.build_id
    assert m["app"]["name"] == "erlang_web"
    # the image boots the release rebar3 made: the app and what its .app file needs, at their versions
    assert {a["name"] for a in m["app"]["applications"]} == {"kernel", "stdlib", "mnesia", "erlang_web"}
    assert m["image"]["runtime"]["release"] == {"name": "erlang_web", "version": m["app"]["version"]}
    # every input is listed with its digest (every file of the project), and the tools with versions
    src = "src/erlang_web_app.erl"
    assert m["inputs"]["sources"][src] == sha256_file(project / "apps/erlang_web" / src)
    assert m["inputs"]["sources"]["config/sys.config.j2"] == sha256_file(
        project / "apps/erlang_web/config/sys.config.j2"
    )
    assert m["inputs"]["templates"]["templates/sys.config.j2"] == sha256_file(
        project / "templates/sys.config.j2"
    )
    assert m["inputs"]["tools"]["otp"].startswith("25")
    assert m["inputs"]["tools"]["rebar3"]
    # every output is listed with its digest
    for entry in m["outputs"]:
        assert sha256_file(result.directory / entry["path"]) == entry["sha256"]
    # the baked configuration is real Erlang and carries this env's values and this build's id
    terms = consult(result.directory / "config" / "sys.config")
    assert '<<"Hello from dev"/utf8>>' in terms or '<<"Hello from dev">>' in terms
    assert result.build_id in terms
    assert m["config_digest"] in terms


def test_second_build_with_nothing_changed_is_reused(project: Path) -> None:
    settings = config.load(project, env="dev")
    first = build.build(settings)
    manifest = first.directory / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    second = build.build(settings)
    assert second.reused
    assert second.build_id == first.build_id
    assert manifest.stat().st_mtime_ns == mtime
    assert leftovers(project) == [first.build_id]


def test_one_config_value_changes_the_build_id_and_only_what_it_should(project: Path) -> None:
    a = build.build(config.load(project, env="dev"))
    b = build.build(config.load(project, env="dev", overrides=["app.config.greeting=Changed"]))
    assert a.build_id != b.build_id
    assert a.manifest["config_digest"] != b.manifest["config_digest"]
    assert a.manifest["inputs"]["sources"] == b.manifest["inputs"]["sources"]
    # same sources, same compiled release and runtime; only the baked config differs
    assert a.manifest["image"]["runtime"] == b.manifest["image"]["runtime"]
    assert a.manifest["image"]["initramfs"]["parts"][0] == b.manifest["image"]["initramfs"]["parts"][0]


def test_same_inputs_in_two_checkouts_give_byte_identical_builds(tmp_path: Path) -> None:
    one = build.build(config.load(copy_project(tmp_path / "one"), env="prod"))
    two = build.build(config.load(copy_project(tmp_path / "elsewhere" / "two"), env="prod"))
    assert one.build_id == two.build_id
    assert (one.directory / "manifest.json").read_bytes() == (two.directory / "manifest.json").read_bytes()


def test_invoke_build_json_prints_the_record_and_reports_reuse(project: Path) -> None:
    first = invoke(project, "build", "--json")
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["reused"] is False
    second = invoke(project, "build", "--json")
    assert json.loads(second.stdout)["build_id"] == record["build_id"]
    assert "up to date" in second.stderr


BAD_INPUTS = {
    "missing pipeline.toml": (lambda p: (p / "pipeline.toml").unlink(), [], "pipeline.toml: not found"),
    "malformed TOML": (
        lambda p: (p / "pipeline.toml").write_text("[app\nport = 1\n"),
        [],
        "pipeline.toml: not valid TOML",
    ),
    "unknown env": (lambda p: None, ["--env", "staging"], 'environment "staging" is not defined'),
    "wrong type": (
        lambda p: (p / "pipeline.toml").write_text(
            (p / "pipeline.toml").read_text() + '\n[env.qa.app]\nport = "80a"\n'
        ),
        ["--env", "qa"],
        'pipeline.toml: env.qa.app.port: expected integer 1-65535, got "80a"',
    ),
    "Erlang syntax error": (
        lambda p: (p / "apps/erlang_web/src/erlang_web_json.erl").write_text(
            (p / "apps/erlang_web/src/erlang_web_json.erl").read_text() + "\nbroken( ->\n"
        ),
        [],
        "apps/erlang_web/src/erlang_web_json.erl:",
    ),
    "undefined template variable": (
        lambda p: (p / "apps/erlang_web/config/sys.config.j2").write_text(
            (p / "apps/erlang_web/config/sys.config.j2")
            .read_text()
            .replace("{{ app.port }}", "{{ app.prot }}")
        ),
        [],
        "config/sys.config.j2:",
    ),
    "a setting the app's template refuses": (
        lambda p: None,
        ["--set", "app.config.acceptors=0"],
        "pipeline.toml: --set app.config.acceptors: expected an integer 1-1024, got 0",
    ),
    "no rebar.config": (
        lambda p: (p / "apps/erlang_web/rebar.config").unlink(),
        [],
        "app.path: ",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_leaves_nothing(project: Path, case: str) -> None:
    spoil, args, expected = BAD_INPUTS[case]
    spoil(project)
    proc = invoke(project, "build", *args)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    error = [ln for ln in lines if ln.startswith("error:")]
    assert len(error) == 1, proc.stderr
    assert expected in error[0]
    assert "hint:" in error[0] or "expected" in error[0]
    assert leftovers(project) == []


def test_missing_erlang_toolchain_points_at_setup(project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = invoke(project, "build", path=str(empty))
    assert proc.returncode == 1
    assert "error: erl: not found on PATH (hint: run ./setup.sh" in proc.stderr
    assert leftovers(project) == []


def test_killed_build_leaves_no_directory_that_looks_finished(project: Path) -> None:
    settings = config.load(project, env="dev")
    plan = build.plan(settings)
    abandoned = project / ".pipeline" / "builds" / f".tmp-{plan.build_id}-999999"
    abandoned.mkdir(parents=True)
    (abandoned / "half-written").write_text("x")
    result = build.build(settings)
    assert not abandoned.exists()
    assert leftovers(project) == [result.build_id]


def test_config_only_rebuild_reuses_the_compiled_app(project: Path) -> None:
    a = build.build(config.load(project, env="dev"))
    log = project / ".pipeline" / "logs" / "rebar3.log"
    made = log.stat().st_mtime_ns
    b = build.build(config.load(project, env="dev", overrides=["app.config.greeting=Other"]))
    assert log.stat().st_mtime_ns == made  # rebar3 did not run again
    assert len(list((project / ".pipeline" / "cache" / "beam").iterdir())) == 1
    assert a.manifest["image"]["runtime"] == b.manifest["image"]["runtime"]
    # a source change is not served from the cache
    src = project / "apps/erlang_web/src/erlang_web_json.erl"
    src.write_text(src.read_text() + "\n%% changed\n")
    c = build.build(config.load(project, env="dev"))
    assert c.manifest["inputs"]["sources"] != a.manifest["inputs"]["sources"]
    assert c.build_id not in (a.build_id, b.build_id)
