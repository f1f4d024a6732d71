"""The app calls only what Erlang/OTP 17 exports (LING runs OTP 17), checked with tests/otp17 against
the list made from OTP 17.5's sources; and the check itself finds what it must, with module and line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import otp17

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "apps" / "erlang_web"

NEWER = """-module(newer).
-export([run/1]).

run(M) ->
    {V, M2} = maps:take(k, M),
    T = erlang:timestamp(),
    logger:info("~p", [V]),
    F = fun string:trim/1,
    C = ceil(1.5),
    {M2, T, F, C, random(M), lists:reverse([]), binary:split(<<>>, <<",">>)}.

-ifdef(OTP_RELEASE).
random(_) -> rand:uniform().
-else.
random(M) -> _ = maps:update_with(k, fun(X) -> X end, M), random:uniform().
-endif.
"""


def test_the_api_list_says_where_it_comes_from_and_holds_otp_17s_functions() -> None:
    header = [ln for ln in otp17.API.read_text().splitlines() if ln.startswith("#")]
    assert "github.com/erlang/otp at commit 545890576542e4be630df8772654b99bd0306f62" in " ".join(header)
    assert "make_api_list.py" in " ".join(header)
    known = {"gen_tcp:recv/3", "inet:setopts/2", "mnesia:transaction/1", "maps:get/3", "erlang:monitor/2"}
    assert known <= otp17.api()
    assert not {"maps:take/2", "rand:uniform/0", "erlang:timestamp/0", "string:trim/1"} & otp17.api()
    assert "logger" not in otp17.api_modules()


def test_the_app_calls_only_what_otp_17_exports() -> None:
    assert otp17.check_app(APP, REPO) == []


def test_the_app_check_sees_the_apps_calls(tmp_path: Path) -> None:
    """Not vacuous: the app's calls into OTP are found and counted."""
    ebin = tmp_path / "ebin"
    ebin.mkdir()
    sources = sorted(str(p) for p in (APP / "src").glob("*.erl"))
    subprocess.run(["erlc", "+debug_info", "-I", str(APP / "include"), "-o", str(ebin), *sources], check=True)
    found = otp17.calls(sorted(ebin.glob("*.beam")))
    into_otp = {c.mfa for c in found if c.module in otp17.api_modules()}
    assert {"gen_tcp:listen/2", "gen_tcp:close/1"} <= into_otp and len(into_otp) > 40


def test_calls_otp_17_lacks_are_named_with_module_and_line(tmp_path: Path) -> None:
    app = tmp_path / "newapp"
    (app / "src").mkdir(parents=True)
    (app / "src" / "newer.erl").write_text(NEWER)
    assert otp17.check_app(app, tmp_path) == [
        "newapp/src/newer.erl:15: newer calls maps:update_with/3, which OTP 17 does not export",
        "newapp/src/newer.erl:5: newer calls maps:take/2, which OTP 17 does not export",
        "newapp/src/newer.erl:6: newer calls erlang:timestamp/0, which OTP 17 does not export",
        "newapp/src/newer.erl:7: newer calls logger:info/2, and OTP 17's kernel has no module logger",
        "newapp/src/newer.erl:8: newer calls string:trim/1, which OTP 17 does not export",
        "newapp/src/newer.erl:9: newer calls erlang:ceil/1, which OTP 17 does not export",
    ]  # line 13 (rand, under -ifdef(OTP_RELEASE)) is not OTP 17's code; its -else branch is


def test_dependencies_beams_are_checked_outside_their_otp_release_regions(tmp_path: Path) -> None:
    """A dependency compiled by OTP 25 (OTP_RELEASE defined): its guarded code is not flagged."""
    (tmp_path / "newer.erl").write_text(NEWER)
    subprocess.run(["erlc", "+debug_info", "newer.erl"], cwd=tmp_path, check=True)
    found = otp17.check_beams([tmp_path / "newer.beam"])
    assert [f.split(": ", 1)[0] for f in found] == [
        "newer.erl:5",
        "newer.erl:6",
        "newer.erl:7",
        "newer.erl:8",
        "newer.erl:9",
    ]
    # without debug info only the import table is left: the calls, without lines
    subprocess.run(["erlc", "newer.erl"], cwd=tmp_path, check=True)
    stripped = otp17.check_beams([tmp_path / "newer.beam"])
    assert "-:0: newer calls maps:take/2, which OTP 17 does not export" in stripped
