"""Settings checked by the rules of the place they end up: the init script and boot line (paths), the
stack and AMI names (environments), EC2, KMS and IAM (ids); and the errors that say so on one line.

The rules cited are the consumers' (CloudFormation CreateStack's StackName pattern, EC2 RegisterImage's
name rule, the EC2 instance type naming conventions, the IAM account id format, KMS DescribeKey's
KeyId forms); the tests check the pipeline's own validation, never a stand-in agreeing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config, rules
from pipeline.errors import ConfigError

BASE = """
default_env = "dev"
[app]
name = "web"
[env.dev.app.config]
greeting = "dev"
[env.prod.app.config]
greeting = "prod"
"""


def write(tmp_path: Path, text: str = BASE) -> Path:
    (tmp_path / "pipeline.toml").write_text(text)
    return tmp_path


def refused(root: Path, *overrides: str, env: str | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        config.load(root, env=env, overrides=list(overrides))
    line = str(err.value)
    assert "\n" not in line and "(hint: " in line, line
    return line


# -- paths ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "/scratch$(echo${IFS}INJECTED>/dev/console)",
        "/scratch;reboot",
        "/scratch\t-s evil_mod",
        "/scratch -s evil_mod",
        "/scr\0atch",
        "/scratch\n",
        "scratch",
        "/",
        "/a/../etc",
        "/a//b",
        "/a/./b",
        "/'a'",
        '/"a"',
        "/scrätch",
        "/-s",
        "/" + "a" * 200,
    ],
)
def test_scratch_dir_is_a_plain_absolute_path(tmp_path: Path, value: str) -> None:
    line = refused(write(tmp_path), f"app.scratch_dir={_toml(value)}")
    assert line.startswith("--set app.scratch_dir: expected an absolute path of letters, digits and")
    assert "(at most 200 characters)" in line


def test_scratch_dir_of_safe_characters_within_the_limit_is_taken(tmp_path: Path) -> None:
    value = "/" + "a" * 199
    assert config.load(write(tmp_path), overrides=[f"app.scratch_dir={value}"]).app.scratch_dir == value
    s = config.load(tmp_path, overrides=["app.scratch_dir=/var/lib/my_app-1.0"])
    assert s.app.scratch_dir == "/var/lib/my_app-1.0"


def test_remote_dir_follows_the_same_rule(tmp_path: Path) -> None:
    assert "ling.remote_dir" in refused(write(tmp_path), 'ling.remote_dir="/tmp/$(id)"')


@pytest.mark.parametrize("value", ["apps/\tweb", "", "a\nb"])
def test_app_path_is_one_line_of_text(tmp_path: Path, value: str) -> None:
    assert "app.path: expected a directory (relative to pipeline.toml, or absolute)" in refused(
        write(tmp_path), f"app.path={_toml(value)}"
    )


@pytest.mark.parametrize("value", ["/abs", "../outside"])
def test_app_path_may_be_absolute_or_outside_but_must_be_a_project(tmp_path: Path, value: str) -> None:
    """The app may live outside the pipeline's checkout (or pipeline.toml inside the app's repo); a
    directory that is not a rebar3 project is one line naming app.path."""
    line = refused(write(tmp_path, BASE.replace('name = "web"\n', "")), f"app.path={_toml(value)}")
    assert line.startswith("--set app.path: ") and "has no rebar.config" in line


# -- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["qa env", "prod.eu", "x$(echo INJECTED > /dev/console)", "Prod", "qa_env", "-x", "x-", "a--b", "1a"],
)
def test_environment_names_are_what_stack_and_ami_names_take(tmp_path: Path, name: str) -> None:
    """CloudFormation stack names: [A-Za-z][A-Za-z0-9-]*; AMI names: [A-Za-z0-9()[] ./'@_-]; the
    environment is part of both, lowercase so that two never differ only in case."""
    assert not rules.env_name(name)
    root = write(tmp_path, BASE + f'[env."{_escape(name)}".app]\ngreeting = "x"\n')
    line = refused(root, env="dev")
    assert line.startswith("pipeline.toml: [env.") and "expected an environment name" in line
    line = refused(write(tmp_path), env=name)
    assert line.startswith("--env: expected an environment name")


def test_an_empty_env_flag_is_refused_rather_than_meaning_the_default(tmp_path: Path) -> None:
    line = refused(write(tmp_path), env="")
    assert line.startswith("--env: expected an environment name") and 'got ""' in line


def test_default_env_follows_the_same_rule(tmp_path: Path) -> None:
    line = refused(write(tmp_path, BASE.replace('default_env = "dev"', 'default_env = "qa env"', 1)))
    assert line.startswith("pipeline.toml: default_env: expected an environment name") and '"qa env"' in line


def test_environment_names_that_are_taken(tmp_path: Path) -> None:
    for name in ("dev", "eu-prod-2", "a", "x" * 32):
        assert rules.env_name(name), name
    assert not rules.env_name("x" * 33)


@pytest.mark.parametrize("name", ["end", "Web", "web-app", "1web", "wéb", "a" * 256, "web app"])
def test_app_name_is_an_unquoted_atom(tmp_path: Path, name: str) -> None:
    assert 'app.name: expected "" or an Erlang application name' in refused(
        write(tmp_path), f"app.name={_toml(name)}"
    )


def test_extra_apps_are_atoms_each_once(tmp_path: Path) -> None:
    root = write(tmp_path)
    assert "image.extra_apps" in refused(root, "image.extra_apps=['mnesia','mnesia']")
    assert "image.extra_apps" in refused(root, "image.extra_apps=['os mon']")


def test_too_long_app_and_env_names_for_an_ami_name(tmp_path: Path) -> None:
    root = write(tmp_path, BASE + "[env.a2345678901234567890123456789012.app]\n")
    line = refused(root, "app.name=" + "a" * 80, env="a2345678901234567890123456789012")
    assert "over EC2's limit of 128" in line


# -- AWS ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [".", "t3.micro ", " t3.micro", "T3.MICRO", "t3", "t3.", ".micro", "t3..micro"]
)
def test_instance_types_are_family_dot_size(tmp_path: Path, value: str) -> None:
    assert "deploy.instance_type: expected an EC2 instance type" in refused(
        write(tmp_path), f"deploy.instance_type={_toml(value)}"
    )


@pytest.mark.parametrize(
    "value", ["t3.micro", "m7i-flex.large", "u-6tb1.metal", "c7i.metal-24xl", "m3.medium"]
)
def test_real_instance_type_names_are_taken(value: str) -> None:
    assert rules.INSTANCE_TYPE.ok(value)


@pytest.mark.parametrize(
    "value",
    [
        "".join(chr(0xFF10 + int(d)) for d in "123456789012"),  # full-width digits
        "12345678901",
        "1234567890123",
        "12345678901a",
        "123456789012 ",
        "٠١٢٣٤٥٦٧٨٩٠١",
    ],
)
def test_account_ids_are_twelve_ascii_digits(tmp_path: Path, value: str) -> None:
    line = refused(write(tmp_path), f"ami.share_with=[{_toml(value)}]")
    assert "ami.share_with: expected a list of a 12-digit AWS account id (ASCII digits)" in line


def test_an_account_listed_twice_is_refused(tmp_path: Path) -> None:
    assert "each once" in refused(write(tmp_path), "ami.share_with=['111122223333','111122223333']")


@pytest.mark.parametrize(
    "value",
    [
        "not-a-key",
        "alias/",
        "alias/a b",
        "arn:aws:kms:us-east-1:1234:key/x",
        "arn:aws:s3:::bucket",
        "1234abcd-12ab-34cd-56ef-1234567890aZ",
    ],
)
def test_kms_keys_are_in_a_form_describe_key_takes(tmp_path: Path, value: str) -> None:
    assert 'ami.kms_key_id: expected "" or a KMS key id' in refused(
        write(tmp_path), f"ami.kms_key_id={_toml(value)}"
    )


@pytest.mark.parametrize(
    "value",
    [
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        "mrk-1234abcd12ab34cd56ef1234567890ab",
        "alias/images",
        "alias/aws/ebs",
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:us-east-1:123456789012:alias/images",
    ],
)
def test_kms_key_forms_that_are_taken(tmp_path: Path, value: str) -> None:
    assert config.load(write(tmp_path), overrides=[f"ami.kms_key_id={_toml(value)}"]).ami.kms_key_id == value


def test_a_key_of_another_region_is_refused(tmp_path: Path) -> None:
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    line = refused(write(tmp_path), f"ami.kms_key_id={_toml(key)}")
    assert line.startswith(
        "--set ami.kms_key_id: the key is in eu-west-1, but the images are made in us-east-1"
    )


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("deploy.vpc_id=vpc-bogus", "deploy.vpc_id"),
        ("deploy.vpc_id=vpc-123", "deploy.vpc_id"),
        ("deploy.subnet_ids=['subnet-1234567']", "deploy.subnet_ids"),
        ("aws.region=us-east-1x", "aws.region"),
        ("aws.region='us-east-1 '", "aws.region"),
        ("ami.regions=['eu west 1']", "ami.regions"),
        ("aws.profile='a\nb'", "aws.profile"),
    ],
)
def test_ids_and_names_of_aws(tmp_path: Path, override: str, field: str) -> None:
    assert refused(write(tmp_path), override).startswith(f"--set {field}: expected")


def test_subnets_come_in_twos_with_their_vpc(tmp_path: Path) -> None:
    root = write(tmp_path)
    line = refused(root, "deploy.vpc_id=vpc-12345678", "deploy.subnet_ids=['subnet-12345678']")
    assert line.startswith("--set deploy.subnet_ids: expected at least two subnets")
    line = refused(root, "deploy.vpc_id=vpc-12345678")
    assert line.startswith("--set deploy.vpc_id: deploy.vpc_id and deploy.subnet_ids must be given together")


def test_the_listener_cannot_take_the_local_aws_port(tmp_path: Path) -> None:
    line = refused(write(tmp_path), "deploy.listener_port=4566")
    assert line.startswith("--set deploy.listener_port: port 4566 is the local AWS's own port")
    assert "(pipeline.toml: local.port)" in line
    s = config.load(tmp_path, overrides=["deploy.listener_port=4566", 'aws.endpoint="aws"'])
    assert s.deploy.listener_port == 4566


# -- where a value came from -------------------------------------------------------------------------------


def test_errors_name_the_layer_the_value_came_from(tmp_path: Path) -> None:
    root = write(tmp_path, BASE + '[env.prod.deploy]\ninstance_type = "t3 .micro"\n')
    assert refused(root, env="dev").startswith("pipeline.toml: env.prod.deploy.instance_type: expected")
    root = write(tmp_path, BASE + '[image]\ntarget = "ling"\n')
    line = refused(root, "deploy.virtualization=hvm")
    assert line.startswith("--set deploy.virtualization: the ling target boots only as a Xen PV guest")


def test_settings_say_where_each_value_came_from(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        BASE.replace('name = "web"\n', 'name = "web"\nport = 81\n') + "[env.dev.deploy]\ncapacity = 2\n",
    )
    s = config.load(root, overrides=["app.health_path=/up"])
    assert s.where("app.port") == "pipeline.toml: app.port"
    assert s.where("deploy.capacity") == "pipeline.toml: env.dev.deploy.capacity"
    assert s.where("app.health_path") == "--set app.health_path"
    assert s.where("app.storage") == "pipeline.toml: app.storage"  # the default


# -- the file and the command line --------------------------------------------------------------------------


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert refused(tmp_path).startswith("pipeline.toml: starts with a UTF-8 byte order mark")


def test_invalid_utf8_in_the_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_bytes(BASE.encode() + b'[app]\ngreeting = "\xff"\n')
    assert refused(tmp_path).startswith("pipeline.toml:10: not valid UTF-8 (byte 0xff")


def test_a_directory_named_pipeline_toml_is_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").mkdir()
    assert "pipeline.toml: is not a file" in refused(tmp_path)


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (".greeting=x", "the section is missing"),
        ("app.=x", "the key is missing"),
        ("greeting=x", "expected SECTION.KEY=VALUE"),
        ("app.greeting", "expected SECTION.KEY=VALUE"),
    ],
)
def test_malformed_set_items(tmp_path: Path, item: str, says: str) -> None:
    line = refused(write(tmp_path), item)
    assert line.startswith(f"--set {rules.show(item)}: {says}")


def test_a_set_value_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    item = b"app.greeting=\xff".decode("utf-8", "surrogateescape")  # as Python hands over argv
    line = refused(write(tmp_path), item)
    assert line == '--set "app.greeting=\\udcff": not valid UTF-8 (hint: pass the value as UTF-8 text)'


def test_unknown_sections_and_keys_name_the_source(tmp_path: Path) -> None:
    assert refused(write(tmp_path), "ap.greeting=x").startswith('--set ap: unknown section "ap"')
    assert refused(tmp_path, "app.greting=x").startswith("--set app.greting: unknown key")


def test_bad_values_are_shown_short_and_on_one_line() -> None:
    assert rules.show("a\nb\0c\x1b[31m") == '"a\\nb\\u0000c\\u001b[31m"'
    assert rules.show("\u2028") == '"\\u2028"'
    long = rules.show("x" * 10_000)
    assert long == '"' + "x" * 59 + "... (10000 characters)"
    assert rules.show(["a"] * 100).endswith("... (100 in all)")


def _toml(value: str) -> str:
    return '"' + _escape(value) + '"'


def _escape(value: str) -> str:
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)
