"""Run external programs with one-line errors.

Every subprocess the pipeline starts goes through :func:`run`, so a missing program and a failing one
are reported the same way everywhere: the program, the reason, and a hint.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.errors import ToolFailed, ToolMissing

log = logging.getLogger(__name__)

SETUP_HINT = "run ./setup.sh as root to install the Debian packages the pipeline needs"


def which(program: str, hint: str = SETUP_HINT) -> str:
    """Return the absolute path of ``program`` on PATH, or raise :class:`ToolMissing`."""
    found = shutil.which(program)
    if found is None:
        raise ToolMissing(f"{program}: not found on PATH", hint=hint)
    return found


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    hint: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return the finished process (stdout and stderr captured).

    Raises :class:`ToolMissing` when the program does not exist and :class:`ToolFailed` when it exits
    non-zero or times out; the message carries the last line the program printed on stderr (or stdout).
    ``env`` entries are added to the current environment.
    """
    args = [os.fspath(a) for a in argv]
    label = what or Path(args[0]).name
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    log.debug("run %s", " ".join(args))
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=full_env, input=input, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as err:
        raise ToolMissing(f"{args[0]}: not found", hint=hint or SETUP_HINT) from err
    except subprocess.TimeoutExpired as err:
        raise ToolFailed(f"{label}: timed out after {timeout:g}s", hint=hint) from err
    if proc.returncode != 0:
        raise ToolFailed(
            f"{label} failed (exit {proc.returncode}): {last_line(proc)}",
            hint=hint,
            stdout=proc.stdout.decode(errors="replace"),
            stderr=proc.stderr.decode(errors="replace"),
        )
    return proc


def last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The last non-empty line of stderr, else of stdout, for one-line error messages."""
    for stream in (proc.stderr, proc.stdout):
        lines = [ln.strip() for ln in (stream or b"").decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "no output"


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running: it exists (even as another user's) and is not a zombie
    (a process that exited and waits for its parent to reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
