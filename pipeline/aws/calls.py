"""AWS errors as the pipeline's one-line errors.

botocore raises ``ClientError`` (the service answered with an error) and ``BotoCoreError`` (no answer:
no credentials, no connection, a timeout after the retries). Stages that talk to AWS are wrapped in
:func:`one_line_errors`, so a user sees one line naming the call, the code and the message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from pipeline.errors import AwsError

P = ParamSpec("P")
R = TypeVar("R")

HINTS = {
    "AccessDenied": "the credentials lack a permission; see the IAM policy of the pipeline",
    "UnauthorizedOperation": "the credentials lack a permission; see the IAM policy of the pipeline",
    "AuthFailure": "check the credentials (aws.profile) and the region",
    "ExpiredToken": "the session has expired; log in again (aws sso login, or new credentials)",
}


def describe(err: ClientError | BotoCoreError) -> AwsError:
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        code = str(e.get("Code", "?"))
        message = str(e.get("Message", "")).strip() or "no message"
        return AwsError(f"AWS {err.operation_name} failed: {code}: {message}", hint=HINTS.get(code))
    if isinstance(err, NoCredentialsError):
        return AwsError(
            "AWS: no credentials found",
            hint='configure them (aws configure, AWS_PROFILE, aws.profile), or use aws.endpoint = "local"',
        )
    return AwsError(f"AWS: {err}", hint="check the network, aws.region and, for the local AWS, local.port")


def one_line_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn botocore's exceptions raised by ``func`` into :class:`AwsError`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ClientError, BotoCoreError) as err:
            raise describe(err) from err

    return wrapper
