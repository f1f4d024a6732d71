"""The OTP 17 API check: does code call only functions that Erlang/OTP 17 (LING's) exports?

LING runs OTP 17's kernel, stdlib, mnesia and inets, and the tests compile with OTP 25 (OTP 17 cannot
be installed here), so a call to something later releases added (``maps:take/2``, ``rand``,
``logger``, ``erlang:timestamp/0``, ...) compiles and runs here and fails on LING. This module lists
the external calls of compiled code (``calls.escript``, from the debug info) and checks each call into
kernel, stdlib, mnesia, inets or the runtime (erts) against ``otp17_api.txt``, the functions those
export in OTP 17.5 (made from OTP's sources by ``make_api_list.py``, provenance in its header).

- :func:`check_app` compiles an app's sources as OTP 17 would see them: code under
  ``-ifdef(OTP_RELEASE)`` (defined from OTP 21 on) is left out and its ``-else`` branch compiled, so
  the OTP 17 branch is what is checked.
- :func:`check_beams` checks beams compiled elsewhere (an app's dependencies): their OTP 17 branches
  were not compiled, so calls on lines inside ``-ifdef(OTP_RELEASE)``/``-ifndef(OTP_RELEASE)`` regions
  of their sources are skipped (the beam's compile info names the source); beams without debug info
  are checked by their import table, without lines.

Calls into other applications (crypto, ssl, the app's own modules, dependencies) are not judged.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
API = HERE / "otp17_api.txt"
CALLS = HERE / "calls.escript"
COVERED = ("kernel", "stdlib", "mnesia", "inets", "erts")
# -ifdef(OTP_RELEASE). / -ifndef(OTP_RELEASE). as OTP 17's preprocessor sees them: never defined
_DIRECTIVE = re.compile(r"^(\s*-\s*if(?:n?def)\s*\(\s*)OTP_RELEASE(\s*\))", re.M)
UNDEFINED = "NOT_DEFINED_BY_OTP_17"


@dataclass(frozen=True)
class Call:
    caller: str
    file: str
    line: int
    module: str
    function: str
    arity: int
    app: str  # the application of the running OTP that has the module, "other" or "none"
    source: str = "-"  # the beam's source file (its compile info), "-" if not recorded

    @property
    def mfa(self) -> str:
        return f"{self.module}:{self.function}/{self.arity}"


@cache
def api() -> frozenset[str]:
    """Every ``Module:Function/Arity`` OTP 17.5's kernel, stdlib, mnesia, inets and erts export."""
    lines = API.read_text().splitlines()
    return frozenset(ln for ln in lines if ln and not ln.startswith("#"))


@cache
def api_modules() -> frozenset[str]:
    return frozenset(mfa.split(":", 1)[0] for mfa in api())


def calls(beams: Iterable[Path]) -> list[Call]:
    """The external calls in ``beams`` (see calls.escript)."""
    paths = [str(b) for b in beams]
    if not paths:
        return []
    done = subprocess.run(["escript", str(CALLS), *paths], capture_output=True, text=True, check=True)
    out = []
    for line in done.stdout.splitlines():
        caller, file, number, module, function, arity, app, source = line.split("\t")
        out.append(Call(caller, file, int(number), module, function, int(arity), app, source))
    return out


def problem(call: Call) -> str | None:
    """Why OTP 17 cannot run ``call``, or None."""
    if call.module in api_modules():
        return None if call.mfa in api() else f"calls {call.mfa}, which OTP 17 does not export"
    if call.app in COVERED:
        return f"calls {call.mfa}, and OTP 17's {call.app} has no module {call.module}"
    return None


def check_beams(beams: Iterable[Path], skip_guarded: bool = True) -> list[str]:
    """``FILE:LINE: CALLER calls ...`` for each call in ``beams`` that OTP 17 lacks, outside the
    ``OTP_RELEASE``-conditional regions of their sources (``skip_guarded``)."""
    found = []
    for call in calls(beams):
        why = problem(call)
        if why is None or (skip_guarded and call.line in release_guarded_lines(_source_file(call))):
            continue
        found.append(f"{call.file}:{call.line}: {call.caller} {why}")
    return sorted(set(found))


def _source_file(call: Call) -> str:
    """Where to read the file of ``call``: as named if absolute, else next to the beam's source."""
    if Path(call.file).is_absolute() or call.source == "-":
        return call.file
    source = Path(call.source)
    return str(source if source.name == Path(call.file).name else source.parent / call.file)


def check_app(app_dir: Path, relative_to: Path | None = None) -> list[str]:
    """Compile the app in ``app_dir`` as OTP 17 sees it (see the module notes) and check its calls;
    files are named relative to ``relative_to`` (default: ``app_dir``'s parent)."""
    base = relative_to or app_dir.parent
    with tempfile.TemporaryDirectory(prefix="otp17-") as tmp:
        copy = Path(tmp) / app_dir.relative_to(base)
        shutil.copytree(app_dir, copy, ignore=shutil.ignore_patterns("_build", "ebin", "*.beam"))
        for source in copy.rglob("*.[eh]rl"):
            source.write_text(_DIRECTIVE.sub(rf"\g<1>{UNDEFINED}\g<2>", source.read_text()))
        ebin = Path(tmp) / "ebin"
        ebin.mkdir()
        sources = sorted((copy / "src").rglob("*.erl"))
        subprocess.run(
            ["erlc", "+debug_info", "-I", str(copy / "include"), "-o", str(ebin), *map(str, sources)],
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        found = check_beams(sorted(ebin.glob("*.beam")), skip_guarded=False)
    return [f.replace(f"{tmp}/", "", 1) for f in found]


@cache
def release_guarded_lines(file: str) -> frozenset[int]:
    """Lines of ``file`` inside ``-ifdef(OTP_RELEASE)`` or ``-ifndef(OTP_RELEASE)`` blocks (both
    branches: only one was compiled, by whichever release compiled it)."""
    try:
        text = Path(file).read_text(errors="replace")
    except OSError:
        return frozenset()
    guarded: set[int] = set()
    depth, stack = 0, []  # nesting of all conditionals; depths of the OTP_RELEASE ones
    for number, line in enumerate(text.splitlines(), start=1):
        directive = line.strip().replace(" ", "")
        if directive.startswith(("-ifdef(", "-ifndef(", "-if(")):
            depth += 1
            if "OTP_RELEASE" in directive:
                stack.append(depth)
        elif directive.startswith("-endif"):
            if stack and stack[-1] == depth:
                stack.pop()
                guarded.add(number)
            depth -= 1
        if stack:
            guarded.add(number)
    return frozenset(guarded)
