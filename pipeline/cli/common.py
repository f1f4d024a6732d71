"""What every task shares: the help of the common flags, the one-line error, settings and AWS clients.

A task wraps its work in :func:`failures`, which ends it with the error's one-line message and exit
status 1, and reads its settings through :func:`load`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from invoke.exceptions import Exit

from pipeline import config, rules, ui
from pipeline.errors import (
    AwsError,
    CompileError,
    ConfigError,
    DeployError,
    ImageError,
    PipelineError,
    TemplateError,
    ToolFailed,
    ToolMissing,
)

ENV_HELP = "environment from pipeline.toml (default: its default_env)"
SET_HELP = "override a setting for this run, e.g. --set app.config.motd=Hi (repeatable)"
COMMON_HELP = {"env": ENV_HELP, "set": SET_HELP}


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI system cancelling the job) acts like Ctrl-C


@contextmanager
def failures() -> Iterator[None]:
    """Turn pipeline errors into a one-line message on stderr and exit status 1. A file system error
    that escaped the pipeline's own handling (a path it was given, a full disk) is one line too.
    SIGTERM acts like Ctrl-C (a deploy rolls back, an upload stops cleanly)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except PipelineError as err:
        if err.hint is None:
            err.hint = _fallback_hint(err)
        raise Exit(f"error: {_printable(str(err))}", code=1) from None
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise Exit(
            f"error: {_printable(where + (err.strerror or str(err)))} "
            "(hint: check the path, its permissions and the free space, then run the task again)",
            code=1,
        ) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


# The next step for an error raised without a hint of its own, by kind (most specific first).
FALLBACK_HINTS: tuple[tuple[type[PipelineError], str], ...] = (
    (ConfigError, "fix the setting or file named at the start of the line"),
    (TemplateError, "fix the template at the line named (templates/ of the project)"),
    (CompileError, "fix the Erlang source and run the build again"),
    (ToolMissing, "./setup.sh installs the programs the pipeline runs"),
    (ToolFailed, "the program's own message is above; PIPELINE_LOG_LEVEL=INFO shows more"),
    (ImageError, "nothing half-made was kept; invoke build --force builds the image again"),
    (AwsError, "check aws.endpoint, aws.profile and aws.region; invoke iam-policy prints the permissions"),
    (DeployError, "invoke status shows the stack's state"),
)


def _fallback_hint(err: PipelineError) -> str:
    for kind, hint in FALLBACK_HINTS:
        if isinstance(err, kind):
            return hint
    return "PIPELINE_LOG_LEVEL=INFO shows what led to it"


def _printable(line: str) -> str:
    """The error line as the terminal gets it: control characters (an escape sequence, a line break)
    and bytes that are not UTF-8 escaped, so a value can neither spoof nor break the line."""
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)


def load(env: str | None, overrides: list[str] | None, **cli: Any) -> config.Settings:
    """Settings for ``env`` with ``--set`` overrides and the task's own flags (``section__key=value``)."""
    flags = {}
    for name, value in cli.items():
        if value is not None:
            section, key = name.split("__")
            flags[f"--{key.replace('_', '-')}"] = f"{section}.{key}={_toml(value)}"
    return config.load(env=env, overrides=list(overrides or []), flags=flags)


def aws_clients(settings: config.Settings) -> Any:
    """The AWS clients for ``settings``, after saying which AWS they act on (every AWS task's first line)."""
    from botocore.exceptions import ProfileNotFound

    from pipeline.aws import session

    try:
        clients = session.clients(settings)
    except ProfileNotFound:
        raise ConfigError(
            f'{settings.where("aws.profile")}: there is no AWS profile "{settings.aws.profile}"',
            hint='aws configure list-profiles lists them; or set aws.profile = "" for the default '
            "credential chain",
        ) from None
    ui.say(f"AWS: {clients.describe()}")
    return clients


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def whole_number(flag: str, value: str | None, lo: int = 0, hi: int = 10**9) -> int | None:
    """A flag that takes a whole number (invoke hands flags without a default over as strings)."""
    if value is None:
        return None
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ConfigError(
            f"--{flag}: expected a whole number, got {rules.show(value)}",
            hint=f"for example --{flag} {lo + 1}",
        ) from None
    if number < lo:
        raise ConfigError(
            f"--{flag}: expected {lo} or more, got {number}", hint=f"for example --{flag} {lo + 1}"
        )
    if number > hi:
        raise ConfigError(f"--{flag}: expected at most {hi}, got {number}", hint=f"for example --{flag} {hi}")
    return number
