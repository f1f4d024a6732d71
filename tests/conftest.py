"""Shared pytest fixtures."""

from localaws import aws, local_aws_server  # noqa: F401 - fixtures of the local AWS
