"""The pipeline's own local AWS (moto behind ``pipeline.local.moto_app``) on a free port, for tests.

One server per test session (started the way the pipeline starts it), reset before each test that
asks for the ``aws`` fixture. Also: a recorder of the calls the pipeline makes (botocore's
``before-parameter-build`` event, once per API call whatever the retries) and a fault injector
(``before-send``, once per HTTP attempt) that answers a share of calls with throttling or 503 errors
the way AWS does, before they reach the server.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse

from pipeline import config
from pipeline.aws.session import Clients
from pipeline.local import server

READS = ("Describe", "List", "Get")
# One loader for every session the tests make: it caches the parsed service models (EC2's takes about
# a second to load), while each session keeps its own event hooks.
_LOADER = botocore.loaders.create_loader()


def new_session() -> boto3.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_project(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.toml").write_text('default_env = "dev"\n[env.dev]\n[env.prod]\n')


@dataclass
class Recorder:
    """Every API call the clients make: (service, operation, parameters)."""

    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self.lock:
            self.calls.append((model.service_model.service_name, model.name, dict(params)))

    def named(self, operation: str) -> list[dict[str, Any]]:
        return [p for _, op, p in self.calls if op == operation]

    def mutating(self) -> list[tuple[str, str]]:
        return [(svc, op) for svc, op, _ in self.calls if not op.startswith(READS)]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


@dataclass
class Faults:
    """Answers every ``every``-th HTTP attempt of the chosen operations with a retryable error.

    EBS throttling is HTTP 429 ``ThrottlingException``; EC2's is ``RequestLimitExceeded``; every other
    fault is a bare 503 (Service Unavailable), as AWS front ends send it.
    """

    every: int = 3
    operations: tuple[str, ...] = ("PutSnapshotBlock", "StartSnapshot", "CompleteSnapshot", "CreateTags")
    attempts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    delivered_blocks: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in self.operations:
            return None
        with self.lock:
            self.attempts[operation] += 1
            n = sum(self.attempts.values())
            if n % self.every == 0:
                self.injected[operation] += 1
                return self._fault(request, operation, n)
            if operation == "PutSnapshotBlock":
                self.delivered_blocks[int(request.url.rsplit("/", 1)[-1])] += 1
        return None

    @staticmethod
    def _fault(request: Any, operation: str, n: int) -> AWSResponse:
        if operation == "PutSnapshotBlock" and n % 2 == 0:
            headers = {"x-amzn-ErrorType": "ThrottlingException", "Content-Type": "application/json"}
            return AWSResponse(request.url, 429, headers, _Raw(b'{"message": "Rate exceeded"}'))
        if operation == "CreateTags":
            body = (
                b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
                b"<Message>Request limit exceeded.</Message></Error></Errors></Response>"
            )
            return AWSResponse(request.url, 503, {"Content-Type": "text/xml"}, _Raw(body))
        return AWSResponse(request.url, 503, {}, _Raw(b""))


@dataclass
class LocalAws:
    url: str
    port: int
    root: Path

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    def settings(self, *overrides: str, env: str = "dev") -> config.Settings:
        return config.load(root=self.root, env=env, overrides=[f"local.port={self.port}", *overrides])

    def clients(
        self,
        region: str = "us-east-1",
        recorder: Recorder | None = None,
        faults: Faults | None = None,
        hooks: tuple[tuple[str, Callable[..., Any]], ...] = (),
    ) -> Clients:
        session = new_session()
        if recorder is not None:
            session.events.register("before-parameter-build", recorder)
        if faults is not None:
            session.events.register("before-send", faults)
        for event, handler in hooks:
            session.events.register(event, handler)
        return Clients(region=region, endpoint_url=self.url, session=session)

    @property
    def builds(self) -> Path:
        return self.root / ".pipeline" / "builds"


@pytest.fixture(scope="session")
def local_aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    root = tmp_path_factory.mktemp("project")
    write_project(root)
    port = free_port()
    settings = config.load(root=root, overrides=[f"local.port={port}"])
    url = server.ensure_running(settings)
    try:
        yield LocalAws(url, port, root)
    finally:
        server.stop(settings)


@pytest.fixture
def aws(local_aws_server: LocalAws) -> LocalAws:
    """The session's local AWS, emptied (and Amazon's images seeded again) for this test."""
    local_aws_server.reset()
    return local_aws_server
