"""The [ling] settings: where the LING toolchain is, and the one-line errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import ConfigError
from pipeline.remote import SshTarget, parse_toolchain

BASE = 'default_env = "dev"\n[app]\nname = "tinyapp"\n[env.dev]\n'


def load(tmp_path: Path, *overrides: str) -> config.Settings:
    (tmp_path / "pipeline.toml").write_text(BASE)
    return config.load(tmp_path, overrides=overrides)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ssh://builder@ling-host", SshTarget("builder", "ling-host", 22)),
        ("ssh://builder@10.0.0.7:2222", SshTarget("builder", "10.0.0.7", 2222)),
    ],
)
def test_ssh_toolchain_urls_are_accepted(tmp_path: Path, url: str, expected: SshTarget) -> None:
    s = load(tmp_path, f'ling.toolchain="{url}"')
    assert parse_toolchain(s.ling.toolchain) == expected
    assert expected.label == f"ssh://{expected.user}@{expected.host}:{expected.port}"


@pytest.mark.parametrize(
    "url",
    [
        "ssh://ling-host",  # no user
        "ssh://builder:secret@ling-host",  # no passwords in settings
        "ssh://builder@ling-host:99999",
        "ssh://builder@ling-host:22/tmp",
        "sftp://builder@ling-host",
        "remote",
    ],
)
def test_bad_toolchain_is_one_line_naming_the_field(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f'ling.toolchain="{url}"')
    assert str(err.value) == (
        f'--set ling.toolchain: expected "local" or "ssh://user@host[:port]", got "{url}" '
        '(hint: the default is "local")'
    )


def test_known_hosts_and_timeouts_are_settings(tmp_path: Path) -> None:
    s = load(tmp_path, 'ling.known_hosts="/etc/ssh/ssh_known_hosts"', "ling.command_timeout_s=60")
    assert (s.ling.known_hosts, s.ling.command_timeout_s) == ("/etc/ssh/ssh_known_hosts", 60)
    with pytest.raises(ConfigError, match=r"ling.connect_timeout_s: expected integer 1-300, got 0"):
        load(tmp_path, "ling.connect_timeout_s=0")


def test_ling_cannot_boot_as_hvm(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deploy.virtualization: the ling target boots only as a Xen PV"):
        load(tmp_path, 'image.target="ling"', 'deploy.virtualization="hvm"')
    assert load(tmp_path, 'image.target="ling"').virtualization == "pv"
