"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localaws import aws, local_aws_server  # noqa: F401 - fixtures of the local AWS (tests/localaws.py)

from pipeline.erlang import CompiledApp
from tests.deploy_support import aws_in_process, two_releases  # noqa: F401 - fixtures
from tests.erlnode import ErlangWebNode, compile_erlang_web


@pytest.fixture(scope="session")
def erlang_web_app(tmp_path_factory: pytest.TempPathFactory) -> CompiledApp:
    """apps/erlang_web compiled once per test session (host OTP)."""
    return compile_erlang_web(tmp_path_factory.mktemp("erlang_web_build"))


@pytest.fixture
def erlang_web_node(erlang_web_app: CompiledApp, tmp_path: Path) -> Iterator[Callable[..., ErlangWebNode]]:
    """Start erlang_web nodes: ``erlang_web_node(name="n1", wait="healthy", **app_env)``.

    Every node started through it is stopped (then killed if need be) when the test ends.
    """
    nodes: list[ErlangWebNode] = []

    def start(name: str = "node", wait: str | None = "healthy", **app_env: object) -> ErlangWebNode:
        node = ErlangWebNode(erlang_web_app, tmp_path / name, **app_env)
        nodes.append(node)
        return node.start(wait=wait)

    yield start
    for node in nodes:
        try:
            node.stop()
        finally:
            node.kill()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files that boot VMs first (each file keeps its own order): with the suite split over
    workers one file at a time (``invoke test``), a long file started last would leave a worker idle
    while it runs."""
    booting = {
        item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("xen")
    }
    items.sort(key=lambda item: item.path not in booting)
