"""pipeline.toml: loading, environment overlays, overrides and the one-line errors for bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pipeline.toml").write_text(text)
    return tmp_path


BASE = """
default_env = "dev"
[app]
name = "demo"
port = 8080
[app.config]
greeting = "base"
[env.dev.app.config]
greeting = "dev greeting"
[env.prod.app]
port = 80
"""


def test_shipped_file_is_valid_for_every_environment() -> None:
    for env in ("dev", "prod"):
        s = config.load(REPO, env=env)
        assert s.env == env
        assert s.aws.endpoint == "local"
        assert s.image.target == "beam"


def test_env_overlays_base_and_keeps_the_rest(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    dev = config.load(root)
    prod = config.load(root, env="prod")
    assert (dev.env, dev.app.config["greeting"], dev.app.port) == ("dev", "dev greeting", 8080)
    assert (prod.app.config["greeting"], prod.app.port) == ("base", 80)
    assert prod.app.health_path == config.AppSettings().health_path == "/health"


def test_cli_overrides_win_and_parse_toml_values(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    s = config.load(
        root,
        env="prod",
        overrides=[
            "app.port=9000",
            "app.config.greeting=Hi there",
            "app.config.limits.max=3",
            "ami.regions=['eu-west-1']",
        ],
    )
    assert s.app.port == 9000
    assert s.app.config == {"greeting": "Hi there", "limits": {"max": 3}}
    assert s.ami.regions == ("eu-west-1",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE + '\n[env.prod.deploy]\ncapacity = 1\n[env.stage.app]\nport = "80a"\n',
            'pipeline.toml: env.stage.app.port: expected integer 1-65535, got "80a"',
        ),
        (
            BASE.replace("port = 80\n", 'port = "80a"\n'),
            'env.prod.app.port: expected integer 1-65535, got "80a"',
        ),
        (
            BASE.replace("port = 8080", "port = 70000"),
            "pipeline.toml: app.port: expected integer 1-65535, got 70000",
        ),
        (BASE + "[app2]\nx = 1\n", "pipeline.toml: app2: unknown section"),
        (BASE.replace("port = 8080", 'greeting = "x"'), "pipeline.toml: app.greeting: unknown key"),
        (
            BASE.replace("port = 8080", 'health_path = "health"'),
            "app.health_path: expected a URL path starting with /",
        ),
        (
            BASE.replace("port = 8080", 'version_path = "v 1"'),
            'app.version_path: expected a URL path starting with /, or ""',
        ),
        (
            BASE + "[env.prod.app.config]\nwhen = 1979-05-27\n",
            "env.prod.app.config.when: a TOML date or time",
        ),
        (
            BASE + "[env.prod.app.config.limits]\nratio = inf\n",
            "env.prod.app.config.limits.ratio: inf has no Erlang float",
        ),
        (
            BASE + "[env.prod.app.config]\nlevel = {atom = " + '"' + "a" * 256 + '"' + "}\n",
            "env.prod.app.config.level.atom: an atom is at most 255",
        ),
        (
            BASE + '[image]\ntarget = "docker"\n',
            'pipeline.toml: image.target: expected one of "beam", "ling", got "docker"',
        ),
        (
            BASE + "[deploy]\nweight_steps = [50, 10]\n",
            "deploy.weight_steps: expected increasing percentages",
        ),
        (
            BASE + '[deploy]\nallowed_cidrs = ["10.0.0.1/8"]\n',
            "deploy.allowed_cidrs: expected a list of CIDR blocks",
        ),
        (BASE + "[app]\n", "not valid TOML"),
        (
            BASE + '[image]\ntarget = "ling"\n[deploy]\nvirtualization = "hvm"\n',
            "ling target boots only as a Xen PV",
        ),
        (
            BASE + '[deploy]\nvpc_id = "vpc-12345678"\n',
            "deploy.vpc_id and deploy.subnet_ids must be given together",
        ),
    ],
)
def test_bad_values_name_the_place_and_value(tmp_path: Path, text: str, message: str) -> None:
    root = write(tmp_path, text)
    env = "stage" if "env.stage" in text else "prod"
    with pytest.raises(ConfigError) as err:
        config.load(root, env=env)
    line = str(err.value)
    assert message in line
    assert "\n" not in line


def test_unknown_env_lists_the_known_ones(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r'environment "staging" is not defined .*dev, prod'):
        config.load(root, env="staging")


def test_bad_override_is_reported_as_such(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^--set app.port: expected integer 1-65535, got \"x\""):
        config.load(root, overrides=['app.port="x"'])
    with pytest.raises(ConfigError, match=r"expected SECTION\.KEY=VALUE"):
        config.load(root, overrides=["port=1"])


def test_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline.toml: not found in .* or any parent directory"):
        config.load(tmp_path)


def test_virtualization_follows_the_target(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    assert config.load(root).virtualization == "hvm"
    assert config.load(root, overrides=['image.target="ling"']).virtualization == "pv"


def test_every_shipped_key_is_known_and_documented() -> None:
    """Each section's fields appear in the shipped pipeline.toml, so users can see every setting."""
    text = (REPO / "pipeline.toml").read_text()
    for section, cls in config.SECTIONS.items():
        assert f"[{section}]" in text
        for field in cls.__dataclass_fields__:
            if (section, field) == ("app", "config"):
                assert "\n[app.config]\n" in text
                continue
            assert f"\n{field} " in text or f"\n{field}=" in text, (
                f"{section}.{field} missing from pipeline.toml"
            )


def test_found_from_a_subdirectory(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    sub = root / "a" / "b"
    sub.mkdir(parents=True)
    assert config.find_root(sub) == root.resolve()
    shutil.rmtree(sub)


def test_a_bad_app_config_value_is_refused_in_a_cli_override_too(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^--set app\.config\.t: .*has no Erlang float"):
        config.load(root, overrides=["app.config.t=nan"])


def test_app_config_overlays_merge_nested_tables_and_replace_the_one_key_forms(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        BASE
        + '[app.config.db]\nhost = "a"\nport = 1\nmode = {atom = "rw"}\n'
        + '[env.prod.app.config.db]\nport = 2\nmode = {atom = "ro"}\n',
    )
    s = config.load(root, env="prod")
    assert s.app.config["db"] == {"host": "a", "port": 2, "mode": {"atom": "ro"}}
    assert s.config_origin == {"greeting": "app.config", "db": "env.prod.app.config"}


def _rebar_project(root: Path, app: str = "demo") -> Path:
    (root / "app" / "src").mkdir(parents=True)
    (root / "app" / "rebar.config").write_text("{erl_opts, [debug_info]}.\n")
    (root / "app" / "src" / f"{app}.app.src").write_text(
        f'{{application, {app}, [{{vsn, "1.0.0"}}, {{applications, [kernel, stdlib]}}]}}.\n'
    )
    return root / "app"


def test_app_name_is_read_from_the_project(tmp_path: Path) -> None:
    _rebar_project(tmp_path, "shop")
    root = write(tmp_path, 'default_env = "dev"\n[app]\npath = "app"\n[env.dev]\n')
    assert config.load(root).app.name == "shop"


def test_an_app_name_that_disagrees_with_the_project_is_refused_in_one_line(tmp_path: Path) -> None:
    _rebar_project(tmp_path, "shop")
    root = write(tmp_path, 'default_env = "dev"\n[app]\npath = "app"\nname = "store"\n[env.dev]\n')
    with pytest.raises(ConfigError) as err:
        config.load(root)
    assert str(err.value).startswith(
        'pipeline.toml: app.name: "store" differs from "shop", the name in app/src/shop.app.src'
    )


def test_the_name_of_a_relx_release_is_the_apps_name(tmp_path: Path) -> None:
    app = _rebar_project(tmp_path, "shop")
    (app / "rebar.config").write_text(
        '%% {relx, [{release, {commented_out, "1"}, []}]}.\n{relx, [{release, {shop_rel, "2.0"}, [shop]}]}.\n'
    )
    root = write(tmp_path, 'default_env = "dev"\n[app]\npath = "app"\n[env.dev]\n')
    assert config.load(root).app.name == "shop_rel"


def test_an_umbrella_without_a_release_needs_app_name_to_pick_the_app(tmp_path: Path) -> None:
    for name in ("front", "back"):
        (tmp_path / "u" / "apps" / name / "src").mkdir(parents=True)
        (tmp_path / "u" / "apps" / name / "src" / f"{name}.app.src").write_text(
            f'{{application, {name}, [{{vsn, "1"}}]}}.\n'
        )
    (tmp_path / "u" / "rebar.config").write_text("{erl_opts, []}.\n")
    text = 'default_env = "dev"\n[app]\npath = "u"\n[env.dev]\n'
    with pytest.raises(ConfigError, match=r"app\.name: the umbrella project u has the apps back, front"):
        config.load(write(tmp_path, text))
    assert config.load(write(tmp_path, text.replace('"u"\n', '"u"\nname = "front"\n'))).app.name == "front"


def test_a_path_without_rebar_config_is_refused_unless_the_name_is_given(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    text = 'default_env = "dev"\n[app]\npath = "empty"\n[env.dev]\n'
    with pytest.raises(ConfigError, match=r'app\.path: .*empty"? has no rebar\.config'):
        config.load(write(tmp_path, text))
    # the tasks that only talk to AWS need just the name; the build checks the project
    assert config.load(write(tmp_path, text.replace('"empty"\n', '"empty"\nname = "x"\n'))).app.name == "x"


def test_an_absolute_app_path_works(tmp_path: Path) -> None:
    app = _rebar_project(tmp_path / "elsewhere", "shop")
    root = write(tmp_path, f'default_env = "dev"\n[app]\npath = "{app}"\n[env.dev]\n')
    s = config.load(root)
    assert (s.app.name, s.app_dir) == ("shop", app)
