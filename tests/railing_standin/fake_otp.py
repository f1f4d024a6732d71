#!/usr/bin/env python3
"""TEST DOUBLE: a stand-in for an Erlang/OTP installation of another release (OTP 17 for LING).

OTP 17 cannot be installed on the test machines, so the ling target's tests use this: a directory
laid out like an OTP installation (``bin/erl``, ``bin/erlc``, ``bin/escript``, ``releases/<R>/OTP_VERSION``)
whose programs are this script. Each one runs the host's real program of the same name, with one
difference: ``erl``, asked ``erlang:system_info(otp_release)`` in an ``-eval`` expression, answers the
release named by ``releases/<R>``. Everything is compiled by the host's OTP (25): the stand-in
toolchain *reports* 17 but its beams are OTP 25 beams, which real LING could not load. That is why
the tests that use it only check what the pipeline does with a toolchain, never that LING would run
the result. So that the railing stand-in can tell its beams from any other OTP 25 beams (which LING's
railing refuses), the compiler it runs records ``{standin_otp_release, R}`` in each beam's compile info
(``ERL_COMPILER_OPTIONS``, which OTP's compiler adds to every compilation). And like OTP 17's compiler,
which has no ``deterministic`` option (lib/compiler/src/beam_asm.erl in OTP 17.5 always writes
``{time, ...}`` and ``{source, AbsolutePath}``), it records the time and the directory it runs in.

Made by ``tests.railing_standin.make_toolchain(dest, release)``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    me = Path(os.path.abspath(sys.argv[0]))  # bin/erl etc. (a symlink to this file): do not resolve
    tool = me.name
    root = me.parent.parent
    releases = sorted(p.parent.name for p in root.glob("releases/*/OTP_VERSION"))
    if len(releases) != 1:
        sys.exit(f"{tool}: stand-in toolchain {root} needs exactly one releases/<R>/OTP_VERSION")
    release = releases[0]
    real = _real(tool, me.parent)
    args = sys.argv[1:]
    if tool == "erl":
        args = [a.replace("erlang:system_info(otp_release)", f'"{release}"') for a in args]
    now = time.gmtime()
    stamp = f"{{{now.tm_year},{now.tm_mon},{now.tm_mday},{now.tm_hour},{now.tm_min},{now.tm_sec}}}"
    cwd = os.getcwd().replace("\\", "\\\\").replace('"', '\\"')
    os.environ["ERL_COMPILER_OPTIONS"] = (
        f'[{{compile_info, [{{standin_otp_release, "{release}"}}, {{time, {stamp}}}, {{source, "{cwd}"}}]}}]'
    )
    os.execv(real, [real, *args])


def _real(tool: str, own_dir: Path) -> str:
    """The host's ``tool``: the first on PATH that is not in this stand-in's bin directory."""
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or Path(entry).resolve() == own_dir.resolve():
            continue
        candidate = Path(entry) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit(f"{tool}: the host has no {tool} on PATH for the stand-in toolchain to run")


if __name__ == "__main__":
    main()
