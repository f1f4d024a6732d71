"""AWS errors as the pipeline's one-line errors (the one place that formats them).

botocore raises ``ClientError`` (the service answered with an error) and ``BotoCoreError`` (no answer:
no credentials, no connection, a timeout after the retries). Stages that talk to AWS are wrapped in
:func:`one_line_errors`, so a user sees one line naming the call, the code and the message, with a hint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from pipeline.errors import AwsError

P = ParamSpec("P")
R = TypeVar("R")

ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"}
POLICY_HINT = "invoke iam-policy prints the policy the pipeline needs; attach it to these credentials"
HINTS = {
    "AuthFailure": "check the credentials (aws.profile) and the region",
    "ExpiredToken": "the session has expired; log in again (aws sso login, or new credentials)",
}


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def error_text(err: ClientError) -> str:
    """``Code: message`` of a ClientError, on one line."""
    e = err.response.get("Error", {})
    message = " ".join(str(e.get("Message", "")).split()) or "no message"
    return f"{e.get('Code', '?')}: {message}"


def describe(err: ClientError | BotoCoreError, doing: str = "", hint: str | None = None) -> AwsError:
    """The one-line error for a failed AWS call; ``doing`` (what the pipeline was at) is its prefix,
    ``hint`` the next step when the error is not one with a hint of its own (a missing permission)."""
    prefix = f"{doing}: " if doing else ""
    if isinstance(err, ClientError):
        code = error_code(err) or "?"
        message = error_text(err).split(": ", 1)[-1]
        if code in ACCESS_DENIED or "not authorized" in message.lower():
            return AwsError(f"{prefix}AWS denied {err.operation_name} ({code}): {message}", hint=POLICY_HINT)
        return AwsError(
            f"{prefix}AWS {err.operation_name} failed ({code}): {message}", hint=HINTS.get(code, hint)
        )
    if isinstance(err, NoCredentialsError):
        return AwsError(
            f"{prefix}AWS: no credentials found",
            hint='configure them (aws configure, AWS_PROFILE, aws.profile), or use aws.endpoint = "local"',
        )
    return AwsError(
        f"{prefix}AWS: {err}",
        hint="check aws.endpoint, aws.profile and aws.region in pipeline.toml (local AWS: local.port)",
    )


def one_line_errors(doing: str = "") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: botocore's exceptions escaping the function become :func:`describe`'s AwsError."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except (ClientError, BotoCoreError) as err:
                raise describe(err, doing) from err

        return wrapper

    return wrap
