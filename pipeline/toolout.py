"""What a toolchain program printed: its lines as they come, and the line that says why it failed."""

from __future__ import annotations

from collections.abc import Callable


class LineWriter:
    """A file-like sink for a remote command's output: emits complete lines to ``emit``."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.buffer = ""

    def write(self, data: str) -> int:
        self.buffer += data
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.emit(line.rstrip("\r"))
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.emit(self.buffer)
            self.buffer = ""


# railing's own progress lines (railing/railing.erl): not the cause of a failure.
_PROGRESS = ("Run: ", "Generate: ", "Compile: ", "railing build arch: ")


def crash_report(stdout: str, stderr: str) -> str | None:
    """What made an escript crash (railing is one), or None if it did not.

    The escript's report, ``escript: exception error: ...``, is followed by the stack trace, so the
    last line alone would not say what failed; a program railing ran that failed (``ok = sh(...)``
    then crashes on ``{error, Status}``) printed the reason on the line before, with railing's output.
    """
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines()]
    crash = next((ln for ln in lines if ln.startswith("escript: exception")), None)
    if crash is None:
        return None
    before = [ln for ln in map(str.strip, stdout.splitlines()) if ln and not ln.startswith("escript:")]
    if before and not before[-1].startswith(_PROGRESS):
        return f"{before[-1]}; {crash}"
    return crash


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
