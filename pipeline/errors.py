"""The one exception hierarchy of the pipeline.

Every error a user can cause or meet renders as one line: what went wrong (naming the file, field or
resource and the offending value) followed by ``(hint: ...)`` with the next thing to try. Tasks turn a
``PipelineError`` into that line on stderr and a non-zero exit.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class. ``str(err)`` is the single line shown to the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return text


class ConfigError(PipelineError):
    """pipeline.toml (or a CLI override, or a recipe) is missing, malformed or invalid."""


class ToolMissing(PipelineError):
    """A program the pipeline runs is not installed."""


class ToolFailed(PipelineError):
    """A program the pipeline ran exited non-zero (its captured output is kept for callers)."""

    def __init__(self, message: str, hint: str | None = None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message, hint)
        self.stdout = stdout
        self.stderr = stderr


class CompileError(PipelineError):
    """The Erlang app does not compile."""


class TemplateError(PipelineError):
    """A template in templates/ failed to render."""


class ImageError(PipelineError):
    """An image or disk could not be built, or a built one failed verification."""


class AwsError(PipelineError):
    """An AWS call failed in a way the pipeline cannot recover from."""


class DeployError(PipelineError):
    """A release could not be rolled out (and was rolled back where that applies)."""
