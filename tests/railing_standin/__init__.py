"""Test doubles for the LING toolchain, which cannot exist on the test machines.

- ``railing``: a stand-in for LING's railing escript (see its header for what it follows and where it
  differs).
- ``fake_otp.py``: a stand-in for an OTP 17 installation (reports release 17, compiles with the host's
  OTP); :func:`make_toolchain` lays one out.

The pipeline is not told about either: tests point ``ling.otp_bin`` / ``ling.railing`` (or PATH) at
them exactly as a user points the settings at a real OTP 17 and a real railing.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAILING = HERE / "railing"
FAKE_OTP = HERE / "fake_otp.py"


def make_toolchain(dest: Path, release: str = "17", version: str | None = None) -> Path:
    """Lay out a stand-in OTP installation of ``release`` under ``dest``; return its ``bin`` directory."""
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("erl", "erlc", "escript"):
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(FAKE_OTP)
    rel = dest / "releases" / release
    rel.mkdir(parents=True, exist_ok=True)
    (rel / "OTP_VERSION").write_text((version or f"{release}.5") + "\n")
    return bin_dir


def railing_dir(dest: Path) -> Path:
    """A directory holding ``railing`` (the stand-in), to put on PATH; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "railing"
    if not target.exists():
        shutil.copy2(RAILING, target)
    return dest


def wrapper(path: Path, script: str) -> Path:
    """Write an executable ``sh`` script (a railing that misbehaves in a chosen way); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nset -e\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def path_with(*dirs: Path) -> str:
    return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", "")])
