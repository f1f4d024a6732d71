"""What the AWS tests share, whichever AWS they talk to (the local AWS server or in-process moto):
boto3 sessions that share one botocore loader, a recorder of the calls the pipeline makes, and a clock
whose time passes only when the code under test sleeps."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.loaders
import botocore.session

from pipeline.local.moto_app import READ_PREFIXES

# Parsed service models are cached by the loader; EC2's takes about a second to parse, so every
# session of the tests shares one loader (each session keeps its own credentials and event hooks).
_LOADER = botocore.loaders.create_loader()

# boto3 service name -> IAM action prefix, where they differ
IAM_PREFIX = {"elbv2": "elasticloadbalancing"}


def new_session(region: str | None = None, **credentials: str) -> boto3.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core, region_name=region, **credentials)


@dataclass
class Call:
    service: str  # boto3 service name
    operation: str  # API operation name, e.g. UpdateStack
    params: dict[str, Any]

    @property
    def action(self) -> str:
        """The IAM action, e.g. ``cloudformation:UpdateStack``."""
        return f"{IAM_PREFIX.get(self.service, self.service)}:{self.operation}"

    @property
    def mutating(self) -> bool:
        """Whether the call may change something (what the local AWS journals)."""
        return not self.operation.startswith(READ_PREFIXES)


@dataclass
class Recorder:
    """Every API call made through the sessions it is attached to, with its parameters (botocore's
    ``before-parameter-build`` event: once per call, whatever the retries). Thread-safe: the uploader
    calls from a pool."""

    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, session: boto3.Session) -> boto3.Session:
        session.events.register("before-parameter-build", self)
        return session

    def __call__(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        call = Call(model.service_model.service_name, model.name, copy.deepcopy(dict(params)))
        with self.lock:
            self.calls.append(call)

    def named(self, operation: str) -> list[dict[str, Any]]:
        return [c.params for c in self.calls if c.operation == operation]

    def mutating(self) -> list[tuple[str, str]]:
        return [(c.service, c.operation) for c in self.calls if c.mutating]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def stack_parameter_sets(self, since: int = 0) -> list[dict[str, str]]:
        """The parameters of every CreateStack/UpdateStack sent, in order."""
        return [
            {p["ParameterKey"]: p["ParameterValue"] for p in c.params["Parameters"]}
            for c in self.calls[since:]
            if c.operation in ("CreateStack", "UpdateStack") and "Parameters" in c.params
        ]

    def last_parameters(self) -> dict[str, str]:
        sets = self.stack_parameter_sets()
        return sets[-1] if sets else {}


class FakeClock:
    """``sleep`` and ``clock`` for the pipeline: time passes only when it sleeps. ``on_sleep`` runs
    after each sleep (tests use it to interrupt at a chosen moment)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep: Callable[[FakeClock], None] | None = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self)
