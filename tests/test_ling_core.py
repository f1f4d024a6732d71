"""What a railing's LING core can do (pipeline/images/vmling.py), and the railing stand-in following
LING's railing where the pipeline depends on it.

The disk-driver test builds cores the way LING's Makefile links ``core/vmling.o`` (``-Xlinker -r``)
from objects shaped like core/outlet.c's: its ``outlet_drivers`` table has a ``disk`` entry, a pointer
to ``ol_disk_factory`` (core/arch/xen/ol_disk.c), only under ``#if LING_CONFIG_DISK``."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from pipeline import erlang
from pipeline.images import elfcheck, ling_project, vmling
from tests.railing_standin import build_railing, drivers_s, make_toolchain, outlet_s, standin_railing
from tests.railing_standin.projects import tiny_app

SYS_CONFIG = b"[].\n"


def partial_link(tmp: Path, parts: dict[str, str]) -> bytes:
    objects = []
    for name, text in parts.items():
        (tmp / f"{name}.S").write_text(text)
        subprocess.run(["as", "--64", "-o", tmp / f"{name}.o", tmp / f"{name}.S"], check=True)
        objects.append(tmp / f"{name}.o")
    subprocess.run(["ld", "-r", "-o", tmp / "vmling.o", *objects], check=True)
    return (tmp / "vmling.o").read_bytes()


def test_the_disk_driver_is_there_when_the_driver_table_refers_to_it(tmp_path: Path) -> None:
    with_disk = partial_link(tmp_path, {"outlet": outlet_s(True), "drivers": drivers_s()})
    assert vmling.has_disk_driver(with_disk)
    # LING's default build: ol_disk.c is compiled and linked, but no table entry refers to it
    without = partial_link(tmp_path, {"outlet": outlet_s(False), "drivers": drivers_s()})
    assert not vmling.has_disk_driver(without)
    assert b"ol_disk_factory" in without  # the symbol alone does not make the port driver


def test_what_is_not_a_ling_core_is_refused(tmp_path: Path) -> None:
    other = partial_link(tmp_path, {"drivers": drivers_s()})  # no outlet_drivers table
    with pytest.raises(vmling.NotLingCore, match="no outlet_drivers table"):
        vmling.has_disk_driver(other)
    with pytest.raises(vmling.NotLingCore, match="not a relocatable object"):
        vmling.has_disk_driver(Path("/bin/busybox").read_bytes())
    with pytest.raises(vmling.NotLingCore, match="not an ELF object"):
        vmling.has_disk_driver(b"not an object")
    script = tmp_path / "railing"
    script.write_text('#!/bin/sh\nexec /opt/ling/railing "$@"\n')
    with pytest.raises(vmling.NoArchive):
        vmling.core_of(script)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("railing.beam", b"")
    with pytest.raises(vmling.NotLingCore, match=r"archive has no vmling\.o"):
        vmling.core_of(empty)


def test_the_core_is_read_from_the_railing_escript_as_escriptize_packs_it(tmp_path: Path) -> None:
    for disk in (True, False):
        railing = build_railing(tmp_path / f"{disk}" / "railing", disk)
        assert railing.read_bytes().startswith(b"#!/usr/bin/env escript\n")
        with zipfile.ZipFile(railing) as archive:
            assert sorted(archive.namelist()) == ["ling.lds", "railing.beam", "vmling.o"]
        assert vmling.has_disk_driver(vmling.core_of(railing)) is disk


# -- the stand-in against railing's behaviour ------------------------------------------------------


def stage(tmp: Path, toolchain: erlang.Toolchain | None) -> Path:
    tiny_app(tmp / "tinyapp")
    app = erlang.compile_app(tmp / "tinyapp", tmp / "out", toolchain)
    project = tmp / "stage" / "tinyapp"
    ling_project.stage_main(app, project)
    (project / "priv" / "sys.config").write_bytes(SYS_CONFIG)
    return project


def run_railing(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(standin_railing()), "image", "-i", "priv"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_ling_files_carry_railings_chunks_and_the_beams_compile_info(tmp_path: Path) -> None:
    otp17 = erlang.Toolchain(make_toolchain(tmp_path / "otp17").parent, "17", "17.5", "6.4")
    project = stage(tmp_path, otp17)
    done = run_railing(project)
    assert done.returncode == 0, done.stdout + done.stderr
    image = elfcheck.read(project / "tinyapp.img")
    found = image.winner("tinyapp_util.ling")
    assert found is not None
    data = found.data
    tags, pos = [], 12
    while pos < len(data):
        tags.append(data[pos : pos + 4].decode())
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        body = data[pos + 8 : pos + 8 + size]
        if tags[-1] == "CInf":
            cinf = body
        pos += 8 + ((size + 3) & ~3)
    # bc/ling_lib.erl specs_to_binary/1's order (Line needs LING code offsets: the stand-in has none)
    assert tags == ["Atom", "ExpT", "ImpT", "Code", "CatT", "FunT", "StrT", "LitT", "Attr", "CInf"]
    beam = project / "ebin" / "tinyapp_util.beam"
    info = subprocess.run(
        ["erl", "-noshell", "-eval",
         f'{{ok,{{_,[{{"CInf",B}}]}}}} = beam_lib:chunks("{beam}", ["CInf"]), '
         'io:format("~p", [binary_to_term(B)]), halt().'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "standin_otp_release" in info  # what the stand-in OTP 17 records, carried into the image
    assert b"standin_otp_release" in cinf


def test_a_beam_not_compiled_by_otp_17_crashes_railing_with_127(tmp_path: Path) -> None:
    project = stage(tmp_path, None)  # the host's OTP 25, not the stand-in OTP 17
    done = run_railing(project)
    assert done.returncode == 127  # an escript that crashes
    assert "escript: exception error: {not_compiled_by_otp17," in done.stderr + done.stdout
    assert not (project / "tinyapp.img").exists()
