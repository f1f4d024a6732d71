"""The pipeline's own local AWS (moto behind ``pipeline.local.moto_app``) on a free port, for tests.

One server per test session (started the way the pipeline starts it), reset before each test that
asks for the ``aws`` fixture. Also two fault injectors (``before-send``, once per HTTP attempt): one
answers a share of calls with throttling or 503 errors the way AWS does, before they reach the server;
the other lets the server apply a call and then loses its answer, as a dropped connection does.
(The recorder of calls and the sessions are in ``awstest.py``.)
"""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from awstest import Recorder, new_session
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError
from botocore.httpsession import URLLib3Session

from pipeline import config
from pipeline.aws.session import Clients
from pipeline.local import server
from tests.erlnode import free_port


def write_project(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # only AWS stages run here (on synthetic builds): the app is named, its project need not exist
    (root / "pipeline.toml").write_text(
        'default_env = "dev"\n[app]\nname = "erlang_web"\n[env.dev]\n[env.prod]\n'
    )


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
class LostAnswers:
    """Stands in for a network that drops the connection after the server applied a request and before
    its answer arrived: the first ``times`` HTTP attempts of each request of the chosen operations
    (a request: its operation and body, the same for its retries) are sent to the server here, their
    answers thrown away, and the SDK sees the connection closed (and retries, as botocore's standard
    mode does for ``ConnectionClosedError``). ``attempts`` counts the HTTP attempts per operation."""

    operations: tuple[str, ...]
    times: int = 1
    attempts: Counter[str] = field(default_factory=Counter)
    lost: Counter[tuple[str, int]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    http: URLLib3Session = field(default_factory=URLLib3Session)

    def __call__(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if operation not in self.operations:
            return
        body = request.body or b""
        key = (operation, hash(body.encode() if isinstance(body, str) else bytes(body)))
        with self.lock:
            self.attempts[operation] += 1
            if self.lost[key] >= self.times:
                return
            self.lost[key] += 1
        answer = self.http.send(request)  # the server applies the request ...
        assert answer.status_code < 500, answer.content
        raise ConnectionClosedError(endpoint_url=request.url)  # ... and its answer never arrives


@dataclass
class LocalAws:
    url: str
    port: int
    root: Path
    listener_port: int = 0

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    def settings(self, *overrides: str, env: str = "dev") -> config.Settings:
        # A free listener port, so that nothing on this machine holding the default port 80 (the quick
        # start's local cloud, say) decides the outcome; a test's own override comes later and wins.
        if self.listener_port == 0:
            self.listener_port = free_port()
        defaults = [f"local.port={self.port}", f"deploy.listener_port={self.listener_port}"]
        return config.load(root=self.root, env=env, overrides=[*defaults, *overrides])

    def clients(
        self,
        region: str = "us-east-1",
        recorder: Recorder | None = None,
        faults: Faults | LostAnswers | None = None,
        hooks: tuple[tuple[str, Callable[..., Any]], ...] = (),
    ) -> Clients:
        session = new_session()
        if recorder is not None:
            recorder.attach(session)
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
