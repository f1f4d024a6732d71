"""The beam image's init script raises the open-files limit before it starts the Erlang VM.

The kernel starts PID 1 with a soft limit of 1024 open files (and a hard limit of 4096), which the
VM inherits: an app with 1,024 connections runs out of descriptors. ``image.max_open_files`` sets
both limits in the init script; the rendered line runs here in busybox's shell, the one the image
runs it in.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import build, config, render
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def init_script(settings: config.Settings) -> str:
    context = {
        **build.template_context(settings, "b-1", "sha256:0", "0.1.0"),
        "kernel_release": "6.1.0-test",
        "platforms": [],
        "net": {"interface": "eth0", "wait_ticks": 50, "dhcp_tries": 3},
        "boot_label": "boot",
        "scratch_label": "scratch",
        "mke2fs": "/sbin/mke2fs",
        "console_config": "/etc/erlang/console",
        "erlang": {"root": "/erlang", "erts_version": "13.0", "release_version": "0.1.0"},
    }
    return render.render(REPO / "templates", "init.sh.j2", context)


def limit_line(script: str) -> str:
    lines = [line for line in script.splitlines() if line.startswith("ulimit -n")]
    assert len(lines) == 1, lines
    # it comes before the VM is started, which inherits it
    assert script.index(lines[0]) < script.index('"$BINDIR/erlexec"')
    return lines[0]


def run_line(line: str) -> subprocess.CompletedProcess[str]:
    """The line in busybox's shell with the init script's log(), then the limits it left."""
    shell = f'log() {{ echo "init: $*"; }}\n{line}\necho "status $?"\nulimit -n\nulimit -Hn\n'
    return subprocess.run(["busybox", "sh", "-c", shell], capture_output=True, text=True, check=True)


needs_busybox = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is installed by setup.sh")


@needs_busybox
def test_the_init_script_sets_the_configured_open_files_limit_for_the_vm() -> None:
    # PID 1 may raise its hard limit; here stay within this process's own.
    value = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    settings = config.load(REPO, overrides=[f"image.max_open_files={value}"])
    out = run_line(limit_line(init_script(settings)))
    assert out.stdout.split() == ["status", "0", str(value), str(value)], out


@needs_busybox
def test_a_limit_the_kernel_refuses_is_logged_and_the_boot_goes_on() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard >= 1_048_576:
        pytest.skip("no value above this process's hard limit is a valid setting")
    settings = config.load(REPO, overrides=[f"image.max_open_files={hard + 1}"])
    out = run_line(limit_line(init_script(settings)))
    if f"\n{hard + 1}\n" in out.stdout:
        pytest.skip("this process may raise its hard limit (CAP_SYS_RESOURCE)")
    assert f"init: cannot raise the open-files limit to {hard + 1}\nstatus 0\n" in out.stdout


def test_the_default_leaves_room_for_the_default_app_and_matches_the_vms_port_limit() -> None:
    settings = config.load(REPO)
    # the Erlang VM opens at most 65536 ports (sockets, files) unless told otherwise (+Q)
    assert settings.image.max_open_files == 65536
    assert "ulimit -n 65536 " in init_script(settings)


@pytest.mark.parametrize("value", ["1000", "2000000", '"lots"'])
def test_an_open_files_limit_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"image\.max_open_files: expected integer 1024-1048576"):
        config.load(REPO, overrides=[f"image.max_open_files={value}"])
