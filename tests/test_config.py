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
port = 8080
greeting = "base"
[env.dev.app]
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
    assert (dev.env, dev.app.greeting, dev.app.port) == ("dev", "dev greeting", 8080)
    assert (prod.app.greeting, prod.app.port) == ("base", 80)
    assert prod.app.acceptors == config.AppSettings().acceptors


def test_cli_overrides_win_and_parse_toml_values(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    s = config.load(
        root, env="prod", overrides=["app.port=9000", "app.greeting=Hi there", "ami.regions=['eu-west-1']"]
    )
    assert s.app.port == 9000
    assert s.app.greeting == "Hi there"
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
        (BASE.replace('greeting = "base"', 'greting = "x"'), "pipeline.toml: app.greting: unknown key"),
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
            assert f"\n{field} " in text or f"\n{field}=" in text, (
                f"{section}.{field} missing from pipeline.toml"
            )


def test_found_from_a_subdirectory(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    sub = root / "a" / "b"
    sub.mkdir(parents=True)
    assert config.find_root(sub) == root.resolve()
    shutil.rmtree(sub)
