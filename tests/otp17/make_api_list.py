#!/usr/bin/env python3
"""Write ``otp17_api.txt``: every function Erlang/OTP 17.5's kernel, stdlib, mnesia, inets and erts
export, from OTP's own sources, for the OTP 17 API check of the app (``tests/otp17/__init__.py``).

Usage: ``python3 tests/otp17/make_api_list.py --git-dir OTP.git > tests/otp17/otp17_api.txt``, where
OTP.git is a clone of github.com/erlang/otp (any clone holding the commit below). Runs the host's
``erl`` to parse the sources with ``epp`` (macros, includes and ``-ifdef`` resolved as the compiler
would, no ``TEST`` or debug macros defined).

What is listed, per module ``M`` and function ``F/A`` as ``M:F/A``:
- the ``-export`` attributes of each module an application's ``.app.src`` lists (kernel, stdlib,
  mnesia, inets: ``lib/<app>/src/**``), or every function of a module compiled with ``export_all``;
- the same for the preloaded modules of the runtime (``erts/preloaded/src``: ``erlang``, ``init``, ...);
- the BIFs of ``erts/emulator/beam/bif.tab`` (``bif``/``ubif`` lines), which the emulator exports
  whether or not a module declares them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

COMMIT = "545890576542e4be630df8772654b99bd0306f62"  # OTP_VERSION 17.5, 2015-03-31, "Updated OTP version"
APPS = ("kernel", "stdlib", "mnesia", "inets")
PATHS = [f"lib/{a}/src" for a in APPS] + [f"lib/{a}/include" for a in APPS]
PATHS += ["erts/preloaded/src", "erts/emulator/beam/bif.tab", "OTP_VERSION"]
PATHS += [f"lib/{a}/vsn.mk" for a in APPS] + ["erts/vsn.mk"]

# Prints "M:F/A" for each exported function of each file given, parsed with epp.
EXPORTS_ERL = r"""
main(Args) ->
    {Includes, Files} = lists:partition(fun(A) -> lists:prefix("-I", A) end, Args),
    Dirs = [D || "-I" ++ D <- Includes],
    [print(F, Dirs) || F <- Files],
    ok.

print(File, Dirs) ->
    {ok, Forms} = epp:parse_file(File, [{includes, [filename:dirname(File) | Dirs]}, {macros, []}]),
    Module = hd([M || {attribute, _, module, M} <- Forms]),
    Options = lists:append([to_list(O) || {attribute, _, compile, O} <- Forms]),
    Exports = case lists:member(export_all, Options) of
                  true -> [{F, A} || {function, _, F, A, _} <- Forms];
                  false -> lists:append([E || {attribute, _, export, E} <- Forms])
              end,
    [io:format("~s:~s/~b~n", [Module, F, A]) || {F, A} <- lists:usort(Exports)].

to_list(L) when is_list(L) -> L;
to_list(O) -> [O].
"""


def git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True).stdout


def app_modules(src: Path, app: str) -> list[str]:
    """The modules ``lib/<app>/src/**/<app>.app.src`` lists."""
    text = next(src.rglob(f"{app}.app.src")).read_text(errors="replace")
    listed = re.search(r"\{modules,\s*\[(.*?)\]\}", text, re.S)
    if listed is None:
        raise SystemExit(f"{app}.app.src: no modules list")
    return re.findall(r"[a-z][A-Za-z0-9_@]*", listed.group(1))


def version(tree: Path, path: str, name: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(\S+)", (tree / path).read_text(), re.M)
    return m.group(1) if m else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", type=Path, required=True, help="a clone of erlang/otp (its .git)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "otp"
        tree.mkdir()
        archive = git(args.git_dir, "archive", COMMIT, *PATHS)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        files: list[Path] = []
        for app in APPS:
            src = tree / "lib" / app / "src"
            by_name = {p.stem: p for p in src.rglob("*.erl")}
            files += [by_name[m] for m in app_modules(src, app) if m in by_name]
        files += sorted((tree / "erts" / "preloaded" / "src").glob("*.erl"))
        script = Path(tmp) / "exports.escript"
        script.write_text("#!/usr/bin/env escript\n" + EXPORTS_ERL)
        includes = [f"-I{tree / 'lib'}"] + [f"-I{tree / 'lib' / a / 'include'}" for a in APPS]
        includes += [f"-I{d}" for d in sorted({str(f.parent) for f in files})]
        done = subprocess.run(
            ["escript", str(script), *includes, *map(str, files)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"parsing OTP's sources failed: {done.stderr.strip()[-500:]}")
        functions = set(done.stdout.split())
        bif_tab = (tree / "erts/emulator/beam/bif.tab").read_text()
        functions |= set(re.findall(r"^u?bif\s+([a-z_']+:[^/\s]+/\d+)", bif_tab, re.M))
        functions = {f.replace("'", "") for f in functions}
        versions = ", ".join(
            [f"{a} {version(tree, f'lib/{a}/vsn.mk', a.upper() + '_VSN')}" for a in APPS]
            + [f"erts {version(tree, 'erts/vsn.mk', 'VSN')}"]
        )
        otp = (tree / "OTP_VERSION").read_text().strip()
    out = sys.stdout
    out.write(f"# The functions Erlang/OTP {otp} exports from kernel, stdlib, mnesia, inets and erts\n")
    out.write(f"# ({versions}), one Module:Function/Arity per line, sorted.\n")
    out.write(f"# Source: github.com/erlang/otp at commit {COMMIT} (OTP_VERSION {otp}):\n")
    out.write("# -export attributes of the modules in lib/{kernel,stdlib,mnesia,inets}/src/<app>.app.src\n")
    out.write("# and of erts/preloaded/src/*.erl (all functions with export_all), and the BIFs in\n")
    out.write("# erts/emulator/beam/bif.tab. Made by tests/otp17/make_api_list.py; regenerate with:\n")
    out.write("#   python3 tests/otp17/make_api_list.py --git-dir OTP.git > tests/otp17/otp17_api.txt\n")
    for f in sorted(functions):
        out.write(f + "\n")


if __name__ == "__main__":
    main()
