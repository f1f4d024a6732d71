"""The ling target with a REAL LING toolchain: what a user with LING runs.

Runs only where LING's railing and an Erlang/OTP 17 exist; skipped otherwise, with the reason. Point it
at them with:

    LING_HOME=/path/to/ling          # a LING checkout with railing/railing built (or LING_RAILING=...)
    LING_OTP_BIN=/path/to/otp17/bin  # OTP 17's bin directory (default: erl on PATH, if it is OTP 17)

It builds the real app into a real LING image and checks what the pipeline verified and recorded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import build, config
from pipeline.config import LingSettings
from pipeline.errors import PipelineError
from pipeline.images.ling import probe
from pipeline.remote import LocalHost
from tests.project import copy_project


def real_toolchain(tmp: Path) -> tuple[str, str]:
    """``(otp_bin, railing)`` of a real LING toolchain, or skip the test saying what is missing."""
    railing = os.environ.get("LING_RAILING", "")
    if not railing and os.environ.get("LING_HOME"):
        railing = str(Path(os.environ["LING_HOME"]) / "railing" / "railing")
    if not railing:
        railing = shutil.which("railing") or ""
    if not railing or not Path(railing).is_file():
        pytest.skip("no real LING railing: set LING_HOME (a LING checkout, railing built) or LING_RAILING")
    otp_bin = os.environ.get("LING_OTP_BIN", "")
    settings = LingSettings(otp_bin=otp_bin, railing=railing)
    try:
        found = probe(LocalHost(tmp, 60), settings)
    except PipelineError as err:
        pytest.skip(f"no usable LING toolchain here: {err}")
    if "standin" in found.railing_version:
        pytest.skip(f"{railing} is the test stand-in, not LING's railing")
    return otp_bin, railing


def test_real_railing_builds_a_verified_image(tmp_path: Path) -> None:
    otp_bin, railing = real_toolchain(tmp_path)
    project = copy_project(tmp_path / "proj")
    overrides = ['image.target="ling"', f'ling.otp_bin="{otp_bin}"', f'ling.railing="{railing}"']
    result = build.build(config.load(project, overrides=overrides))
    image = result.manifest["image"]
    # build() verified the ELF, __xen_guest and every embedded file, or it would have raised
    assert image["xen_guest"].startswith("GUEST_OS=Ling")
    assert image["toolchain"]["otp_release"] == "17"
    assert result.manifest["app"]["otp_release"] == "17"  # real OTP 17 compiled the beams
    assert "-dhcp" in image["boot_line"] and "-home /erlang_web" in image["boot_line"]
    names = {e["name"] for e in image["embedded"]}
    assert {f"{m}.ling" for m in result.manifest["app"]["modules"]} <= names
    assert image["disks"][0]["boot_mode"] == "pv-grub"
