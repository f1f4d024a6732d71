"""setup.sh's apt helpers, run by the shell that runs setup.sh: package lists are found however apt
keeps them (plain or compressed), and another apt holding the lock is waited for with a message."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` after setup.sh's functions are defined (SETUP_FUNCTIONS_ONLY: main does not run)."""
    return subprocess.run(
        ["sh", "-c", f". ./setup.sh\n{script}"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "SETUP_FUNCTIONS_ONLY": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


LIST = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"


def test_package_lists_are_found_plain_or_compressed(tmp_path: Path) -> None:
    check = "if have_package_lists; then echo yes; else echo no; fi"
    lists = tmp_path / "lists"
    lists.mkdir()
    assert sh(check, SETUP_APT_LISTS=str(lists)).stdout == "no\n"
    (lists / f"{LIST}.diff_Index").write_text("")  # an index of diffs is not a package list
    assert sh(check, SETUP_APT_LISTS=str(lists)).stdout == "no\n"
    for name in (f"{LIST}.lz4", f"{LIST}.gz", LIST):
        (lists / name).write_text("")
        assert sh(check, SETUP_APT_LISTS=str(lists)).stdout == "yes\n", name
        (lists / name).unlink()


def fake_proc(tmp_path: Path, pid: int, name: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "comm").write_text(name + "\n")
    (proc / "self").mkdir()
    return proc


def test_another_apt_is_waited_for_with_a_message(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "apt-get")
    done = threading.Timer(3.0, lambda: (proc / "4242" / "comm").unlink())
    done.start()
    started = time.monotonic()
    out = sh("wait_for_apt && echo free", SETUP_PROC=str(proc), SETUP_APT_WAIT="30")
    done.join()
    assert out.returncode == 0 and out.stdout == "free\n"
    assert time.monotonic() - started >= 3.0
    assert out.stderr == "setup.sh: waiting for another package manager to finish (pid 4242: apt-get)\n"


def test_an_apt_that_never_finishes_stops_setup_with_a_hint(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 77, "unattended-upgr")
    out = sh("wait_for_apt", SETUP_PROC=str(proc), SETUP_APT_WAIT="2")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == (
        "setup.sh: unattended-upgr (pid 77) still holds apt's lock after 2s "
        "(hint: let it finish, or stop it, then run ./setup.sh again)"
    )
    assert sh("wait_for_apt && echo free", SETUP_PROC=str(tmp_path / "empty")).stdout == "free\n"
