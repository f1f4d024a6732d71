"""What OTP 17 stamps into beams (lib/compiler/src/beam_asm.erl in OTP 17.5: ``{time, ...}`` and
``{source, AbsolutePath}`` in the compile-info chunk, no ``deterministic`` option) removed by
pipeline/images/beamfile.py, on real beams: compiled here, and given OTP 17's compile info."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline import erlang
from pipeline.images import beamfile
from tests.railing_standin import make_toolchain
from tests.railing_standin.projects import tiny_app

MODULE = '-module(m).\n-export([f/1]).\nf(X) -> {ok, lists:reverse(X), "literal"}.\n'


def erl(expr: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["erl", "-noshell", "-eval", expr + ", halt()."], capture_output=True, text=True, cwd=cwd
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def compile_in(directory: Path, options: str) -> bytes:
    directory.mkdir(parents=True)
    (directory / "m.erl").write_text(MODULE)
    # relative paths, as the ling build compiles: only the absolute source path differs
    erl(f'{{ok, m}} = compile:file("m.erl", [{{outdir, "."}} | {options}])', cwd=directory)
    return (directory / "m.beam").read_bytes()


def compile_info(beam: Path) -> str:
    read = f'{{ok, {{_, [{{compile_info, I}}]}}}} = beam_lib:chunks("{beam}", [compile_info])'
    return erl(read + ', io:format("~0p", [I])')


def chunk_bytes(beam: Path, chunk: str) -> str:
    return erl(f'{{ok, {{_, [{{_, B}}]}}}} = beam_lib:chunks("{beam}", ["{chunk}"]), io:format("~w", [B])')


KEPT = '[{options, [{outdir, "ebin"}, debug_info]}, {version, "5.0.4"}]'
# the compile info as OTP 17 writes it (beam_asm:build_attributes/4): options, version, time, source
OTP17 = KEPT[:-1] + ', {time, {2015,3,31,12,24,6}}, {source, "/home/build/x/src/m.erl"}]'


def test_an_otp_17_compile_info_loses_time_and_source_and_keeps_the_rest(tmp_path: Path) -> None:
    beam = tmp_path / "m.beam"
    beam.write_bytes(compile_in(tmp_path / "src", "[]"))
    erl(
        f'{{ok, _, Chunks}} = beam_lib:all_chunks("{beam}"),'
        f'New = lists:keystore("CInf", 1, Chunks, {{"CInf", term_to_binary({OTP17})}}),'
        f'{{ok, Bin}} = beam_lib:build_module(New), ok = file:write_file("{beam}", Bin)'
    )
    assert "{time," in compile_info(beam)
    others = {c: chunk_bytes(beam, c) for c in ("Code", "Attr", "Line", "LitT")}
    beam.write_bytes(beamfile.normalise(beam.read_bytes()))
    assert compile_info(beam) == '[{options,[{outdir,"ebin"},debug_info]},{version,"5.0.4"}]'
    # byte for byte what Erlang encodes for the remaining list; every other chunk unchanged
    assert chunk_bytes(beam, "CInf") == erl(f'io:format("~w", [term_to_binary({KEPT})])')
    assert {c: chunk_bytes(beam, c) for c in others} == others
    loaded = erl(f'{{module, m}} = code:load_abs("{beam.with_suffix("")}"), io:format("~p", [m:f("ab")])')
    assert loaded == '{ok,"ba","literal"}'


def test_beams_of_two_directories_become_equal(tmp_path: Path) -> None:
    a = compile_in(tmp_path / "a", "[]")  # no `deterministic`: the absolute source path is recorded
    b = compile_in(tmp_path / "b", "[]")
    assert a != b
    assert beamfile.normalise(a) == beamfile.normalise(b)


def test_what_has_nothing_to_remove_is_left_alone(tmp_path: Path) -> None:
    deterministic = compile_in(tmp_path / "d", "[deterministic]")
    assert beamfile.normalise(deterministic) is deterministic
    assert beamfile.normalise(b"not a beam") == b"not a beam"


def test_the_stand_in_otp_17_stamps_as_otp_17_does_and_the_app_is_normalised(tmp_path: Path) -> None:
    """The stand-in OTP 17 records the time and its directory; the ling build removes both."""
    otp17 = erlang.Toolchain(make_toolchain(tmp_path / "otp17").parent, "17", "17.5", "6.4")
    # the same sources at the same place in two work directories (the remote build's are random)
    first, second = (
        erlang.compile_app(tiny_app(d / "tinyapp"), d / "out", otp17, cwd=d)
        for d in (tmp_path / "one", tmp_path / "two")
    )
    beam = "tinyapp_util.beam"
    assert "{source," in compile_info(first.ebin / beam) and "{time," in compile_info(first.ebin / beam)
    assert (first.ebin / beam).read_bytes() != (second.ebin / beam).read_bytes()
    assert beamfile.normalise_dir(first.ebin) == sorted(p.name for p in first.ebin.glob("*.beam"))
    beamfile.normalise_dir(second.ebin)
    assert "standin_otp_release" in compile_info(first.ebin / beam)  # the rest is kept
    # Every chunk railing reads is equal. (The stand-in stamps through compiler options, which OTP 25
    # also keeps in its Dbgi chunk; OTP 17 has no such chunk, and railing does not read it.)
    for path in first.ebin.glob("*.beam"):
        assert chunks(path) == chunks(second.ebin / path.name), path.name


def chunks(beam: Path) -> dict[str, bytes]:
    data, out, pos = beam.read_bytes(), {}, 12
    while pos < len(data):
        tag, size = data[pos : pos + 4].decode(), int.from_bytes(data[pos + 4 : pos + 8], "big")
        if tag != "Dbgi":
            out[tag] = data[pos + 8 : pos + 8 + size]
        pos += 8 + ((size + 3) & ~3)
    return out
