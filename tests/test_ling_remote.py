"""The ling target on a remote build host, through Fabric, against a real OpenSSH server on 127.0.0.1.

The test starts Debian's sshd with its own config, a throwaway host key and user key (ssh-keygen), and
the railing stand-in on the remote PATH (sshd SetEnv). The "remote" host is this machine, so the tests
can look into the remote work directory afterwards: it must be empty after every build, good or bad.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.errors import PipelineError, ToolMissing
from tests.project import copy_project
from tests.railing_standin import make_toolchain, railing_dir, wrapper
from tests.railing_standin.projects import leftovers, ling_project, ling_settings

SSHD = Path("/usr/sbin/sshd")
pytestmark = pytest.mark.skipif(not SSHD.exists(), reason="openssh-server is not installed (run ./setup.sh)")


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    key: Path
    other_key: Path  # a key the server does not accept
    known_hosts: Path
    remote_dir: Path  # ling.remote_dir: per-build directories are made here on the "remote" side
    otp17: Path
    otp25: Path
    log: Path  # the stand-in's record of its calls

    def settings(self, bin_dir: Path | None = None, **more: str) -> list[str]:
        return ling_settings(
            bin_dir or self.otp17,
            **{
                "ling.toolchain": f'"ssh://{self.user}@127.0.0.1:{self.port}"',
                "ling.key_file": f'"{self.key}"',
                "ling.known_hosts": f'"{self.known_hosts}"',
                "ling.remote_dir": f'"{self.remote_dir}"',
                "ling.connect_timeout_s": "5",
                **more,
            },
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    root = tmp_path_factory.mktemp("sshd")
    host_key = keygen(root / "host_key")
    key = keygen(root / "user_key")
    other = keygen(root / "other_key")
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    remote_bin = railing_dir(root / "remote-bin")  # the stand-in, on the remote PATH as "railing"
    remote_dir = root / "remote-work"
    log = root / "railing-calls.jsonl"
    port = free_port()
    cfg = root / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        f"SetEnv PATH={remote_bin}:/usr/local/bin:/usr/bin:/bin RAILING_STANDIN_LOG={log}\n"
    )
    # Debian's sshd refuses to start without its privilege separation directory (made at boot by
    # systemd on a normal system, absent in containers).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError as err:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"sshd did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                ) from err
            time.sleep(0.05)
    pub = (root / "host_key.pub").read_text().split()
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    yield Sshd(
        port=port,
        user=getpass.getuser(),
        key=key,
        other_key=other,
        known_hosts=known,
        remote_dir=remote_dir,
        otp17=make_toolchain(root / "otp17"),
        otp25=make_toolchain(root / "otp25", release="25"),
        log=log,
    )
    proc.terminate()
    proc.wait(timeout=10)


def remote_leftovers(sshd: Sshd) -> list[str]:
    return sorted(p.name for p in sshd.remote_dir.iterdir()) if sshd.remote_dir.is_dir() else []


def calls(sshd: Sshd) -> list[dict[str, object]]:
    return [json.loads(line) for line in sshd.log.read_text().splitlines()] if sshd.log.exists() else []


def test_remote_build_through_fabric_matches_the_local_build(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = copy_project(tmp_path / "remote")
    before = len(calls(sshd))
    remote = build.build(config.load(project, overrides=sshd.settings()))
    made = calls(sshd)[before:]
    image_call = next(c for c in made if c["args"][0] == "image")  # type: ignore[index]
    # railing ran on the build host, in a per-build directory under ling.remote_dir
    assert Path(str(image_call["cwd"])).parent.parent == sshd.remote_dir
    assert remote_leftovers(sshd) == []
    assert leftovers(project) == []
    # remote output was streamed with the host as prefix
    err = capsys.readouterr().err
    assert "127.0.0.1| Generate: erlang_web.img" in err
    assert f"ling toolchain (ssh://{sshd.user}@127.0.0.1:{sshd.port}): Erlang/OTP 17" in " ".join(err.split())

    # The same inputs built locally (railing on PATH), in another work directory at another time: the
    # same build id and byte-identical results, because the build removes the compile time and the
    # directory that OTP 17 (and the stand-in for it) stamps into each beam (beamfile.py). Both builds
    # use one toolchain installation: OTP 17's own libraries are embedded as installed.
    local_bin = railing_dir(tmp_path / "local-bin")
    monkeypatch.setenv("PATH", f"{local_bin}{os.pathsep}{os.environ['PATH']}")
    local = build.build(config.load(copy_project(tmp_path / "local"), overrides=ling_settings(sshd.otp17)))
    assert local.build_id == remote.build_id
    for key in ("sha256", "boot_line", "embedded", "disks"):
        assert local.manifest["image"][key] == remote.manifest["image"][key], key


def test_unreachable_host_is_one_clear_line(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    closed = free_port()  # nothing listens there
    overrides = sshd.settings(**{"ling.toolchain": f'"ssh://{sshd.user}@127.0.0.1:{closed}"'})
    with pytest.raises(PipelineError) as err:
        build.build(config.load(project, overrides=overrides))
    msg = str(err.value)
    assert msg.startswith(f"build host ssh://{sshd.user}@127.0.0.1:{closed}: cannot connect (")
    assert "refused" in msg.lower() and "\n" not in msg
    assert leftovers(project) == [] and remote_leftovers(sshd) == []


def test_refused_key_is_one_clear_line(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    overrides = sshd.settings(**{"ling.key_file": f'"{sshd.other_key}"'})
    with pytest.raises(
        PipelineError, match=rf'user {sshd.user} refused \(key "{sshd.other_key}" not accepted'
    ):
        build.build(config.load(project, overrides=overrides))
    assert leftovers(project) == [] and remote_leftovers(sshd) == []


def test_passphrase_protected_key_is_one_clear_line(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    locked = tmp_path / "locked_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-C", "", "-f", str(locked)], check=True
    )
    overrides = sshd.settings(**{"ling.key_file": f'"{locked}"'})
    with pytest.raises(
        PipelineError, match=r"key file .*locked_key\" is protected by a passphrase .*ssh-agent"
    ):
        build.build(config.load(project, overrides=overrides))
    assert leftovers(project) == []


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    overrides = sshd.settings(**{"ling.known_hosts": f'"{empty}"'})
    with pytest.raises(PipelineError, match=r"host key ssh-ed25519 SHA256:\S+ is not listed in .*refusing"):
        build.build(config.load(project, overrides=overrides))


def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    other = (sshd.other_key.parent / "other_key.pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    overrides = sshd.settings(**{"ling.known_hosts": f'"{wrong}"'})
    with pytest.raises(PipelineError, match=r"does not match the one in .*someone is in between"):
        build.build(config.load(project, overrides=overrides))


def test_missing_key_file_is_a_settings_error(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    overrides = sshd.settings(**{"ling.key_file": f'"{tmp_path / "nope"}"'})
    with pytest.raises(PipelineError, match=r'pipeline.toml: ling.key_file: ".*nope" does not exist'):
        build.build(config.load(project, overrides=overrides))


def test_remote_railing_failing_mid_way_leaves_nothing(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    failing = wrapper(
        tmp_path / "failing-railing",
        '[ "$1" = image ] && RAILING_STANDIN_FAIL=after-embedfs && export RAILING_STANDIN_FAIL\n'
        'exec railing "$@"\n',
    )
    before = len(calls(sshd))
    with pytest.raises(PipelineError) as err:
        build.build(config.load(project, overrides=sshd.settings(railing=str(failing))))
    msg = str(err.value)
    # railing's `ok = sh(objcopy ...)` crashes the escript: exit 127 and the tool's complaint
    assert msg.startswith(
        f"railing image failed: railing on ssh://{sshd.user}@127.0.0.1:{sshd.port} failed (exit 127): "
    )
    assert "objcopy: 'embed.fs.unreadable': No such file; escript: exception error" in msg
    assert not isinstance(err.value, ToolMissing) and "\n" not in msg
    assert any(c["args"][0] == "image" for c in calls(sshd)[before:])  # type: ignore[index]  # it did run
    assert remote_leftovers(sshd) == []
    assert leftovers(project) == []
    builds = project / ".pipeline" / "builds"
    assert not builds.exists() or not any(builds.iterdir())


def test_stuck_remote_railing_is_killed_on_the_host(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    marker = tmp_path / "stuck-railing-ran"
    sleeper = f"sleep 300.{sshd.port}"  # a command line no other process has
    stuck = wrapper(
        tmp_path / "stuck-railing",
        f'if [ "$1" = image ]; then touch "{marker}"; exec {sleeper}; fi\nexec railing "$@"\n',
    )
    overrides = sshd.settings(railing=str(stuck), **{"ling.command_timeout_s": "10"})
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"railing on ssh://.* timed out after 10s"):
        build.build(config.load(project, overrides=overrides))
    assert marker.exists() and time.monotonic() - started < 60
    assert remote_leftovers(sshd) == []
    # the host's own `timeout` killed railing: nothing keeps running there
    assert subprocess.run(["pgrep", "-f", sleeper], capture_output=True).returncode == 1


def test_remote_otp_25_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    with pytest.raises(
        ToolMissing, match=r"ssh://.*\): .*/otp25/bin/erl is Erlang/OTP 25, but the ling target"
    ):
        build.build(config.load(project, overrides=sshd.settings(bin_dir=sshd.otp25)))
    assert remote_leftovers(sshd) == []


def test_remote_railing_without_the_disk_driver_is_refused_at_the_probe(sshd: Sshd, tmp_path: Path) -> None:
    """The probe fetches the railing escript from the build host and reads the LING core in it."""
    project = ling_project(tmp_path / "p")
    nodisk = railing_dir(tmp_path / "nodisk", disk_driver=False) / "railing"
    before = len(calls(sshd))
    with pytest.raises(
        ToolMissing, match=r"ssh://.*\): the LING core in .*/nodisk/railing \(vmling.o\) has no disk"
    ):
        build.build(config.load(project, overrides=sshd.settings(railing=str(nodisk))))
    assert [c["args"] for c in calls(sshd)[before:]] == [["-v"]]  # refused before railing made anything
    assert remote_leftovers(sshd) == []


def test_remote_railing_missing_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    with pytest.raises(ToolMissing, match=r'railing not found \(ling.railing = "no-railing-here"\)'):
        build.build(config.load(project, overrides=sshd.settings(railing="no-railing-here")))


CRASH = 'main(_) -> io:format("Compile: ebin/tinyapp_app.beam~n"), erlang:error({badmatch, {error, 1}}).\n'


def crashing_railing(tmp_path: Path, railing: str = "railing") -> Path:
    """A railing whose `image` crashes as an escript does (exit 127, "escript: exception error: ...").

    LING's railing is an escript: a crash in it (an ``ok = sh(...)`` that gets ``{error, Status}``, a
    beam its translator rejects) ends the escript with status 127, the status shells use for "command
    not found"."""
    script = tmp_path / "crash.escript"
    script.write_text("#!/usr/bin/env escript\n" + CRASH)
    crash = f'[ "$1" = image ] && exec escript {script}\nexec {railing} "$@"\n'
    return wrapper(tmp_path / "crashing-railing", crash)


def test_remote_railing_that_crashes_is_a_failure_with_its_output_not_a_missing_tool(
    sshd: Sshd, tmp_path: Path
) -> None:
    project = ling_project(tmp_path / "p")
    with pytest.raises(PipelineError) as err:
        build.build(config.load(project, overrides=sshd.settings(railing=str(crashing_railing(tmp_path)))))
    assert not isinstance(err.value, ToolMissing)
    msg = str(err.value)
    assert msg.startswith(
        f"railing image failed: railing on ssh://{sshd.user}@127.0.0.1:{sshd.port} failed (exit 127): "
        "escript: exception error: no match of right hand side value {error,1}"
    ), msg
    assert "\n" not in msg and "not found" not in msg
    assert remote_leftovers(sshd) == []


def test_local_railing_that_crashes_is_reported_the_same_way(sshd: Sshd, tmp_path: Path) -> None:
    project = ling_project(tmp_path / "p")
    railing = crashing_railing(tmp_path, str(railing_dir(tmp_path / "bin") / "railing"))
    with pytest.raises(PipelineError) as err:
        build.build(config.load(project, overrides=ling_settings(sshd.otp17, railing=railing)))
    assert not isinstance(err.value, ToolMissing)
    assert str(err.value).startswith(
        "railing image failed: railing failed (exit 127): "
        "escript: exception error: no match of right hand side value {error,1}"
    ), str(err.value)
