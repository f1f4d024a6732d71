"""How the local load balancer picks a target for a request, as an application load balancer does (pure).

A :class:`Listener` is what ELBv2 holds for one listener: its rules in priority order and its default
action. :func:`route` finds the action of the first rule whose conditions all match the request (the
ALB condition types ``path-pattern``, ``http-header``, ``host-header`` and ``http-request-method``;
a rule with a condition of another type never matches). :func:`choose` picks a target for a forward
action: a target group by weight, then the next of its routable targets in turn (round robin).

One deliberate difference from an ALB: a target group with no routable (healthy, not draining)
target is left out of the weighted choice instead of failing open to its unhealthy targets, so a
colour that is still booting or draining never gets a request; when no group of the action has a
routable target, :func:`choose` returns None and the request gets 503.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Condition:
    field: str  # path-pattern | http-header | host-header | http-request-method | (other: never matches)
    values: tuple[str, ...]
    header: str = ""  # http-header: the header's name


@dataclass(frozen=True)
class Forward:
    groups: tuple[tuple[str, int], ...]  # (target group ARN, weight)


@dataclass(frozen=True)
class Fixed:
    status: int
    content_type: str = "text/plain"
    body: str = ""


Action = Forward | Fixed


@dataclass(frozen=True)
class Rule:
    priority: int
    conditions: tuple[Condition, ...]
    action: Action


@dataclass(frozen=True)
class Listener:
    """One HTTP listener of a load balancer."""

    port: int
    load_balancer: str  # the load balancer's name (for messages and status)
    dns_name: str
    rules: tuple[Rule, ...]  # by priority
    default: Action


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the request target as sent: path and query
    headers: Mapping[str, str]  # names in lower case

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"


# -- reading ELBv2's listener rules ----------------------------------------------------------------------


def action_of(actions: Sequence[Mapping[str, Any]]) -> Action:
    """The action of a rule as ELBv2 stores it (``Type`` forward or fixed-response; the last one counts,
    as earlier ones can only be authentication actions)."""
    for data in reversed(actions):
        kind = data.get("Type")
        if kind == "forward":
            config = data.get("ForwardConfig") or {}
            groups = config.get("TargetGroups") or []
            if groups:
                return Forward(tuple((str(g["TargetGroupArn"]), int(g.get("Weight", 1))) for g in groups))
            return Forward(((str(data["TargetGroupArn"]), 1),))
        if kind == "fixed-response":
            fixed = data.get("FixedResponseConfig") or {}
            return Fixed(
                int(fixed.get("StatusCode", 503)),
                str(fixed.get("ContentType") or "text/plain"),
                str(fixed.get("MessageBody") or ""),
            )
    return Fixed(503, body="no supported action")


def condition_of(data: Mapping[str, Any]) -> Condition:
    """A rule condition as ELBv2 stores it (the ``*Config`` form, or the older plain ``Values``)."""
    kind = str(data.get("Field", ""))
    configs = {
        "path-pattern": "PathPatternConfig",
        "host-header": "HostHeaderConfig",
        "http-header": "HttpHeaderConfig",
        "http-request-method": "HttpRequestMethodConfig",
    }
    config = data.get(configs.get(kind, ""), {}) or {}
    values = tuple(str(v) for v in (config.get("Values") or data.get("Values") or ()))
    return Condition(kind, values, str(config.get("HttpHeaderName", "")))


# -- matching --------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _pattern(value: str, ignore_case: bool) -> re.Pattern[str]:
    """An ALB wildcard pattern: ``*`` any run of characters, ``?`` exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def matches(condition: Condition, request: Request) -> bool:
    kind = condition.field
    if kind == "path-pattern":  # case-sensitive, on the path without the query string
        return any(_pattern(v, False).fullmatch(request.path) for v in condition.values)
    if kind == "http-header":
        value = request.headers.get(condition.header.lower())
        return value is not None and any(_pattern(v, True).fullmatch(value) for v in condition.values)
    if kind == "host-header":
        host = _without_port(request.headers.get("host", ""))
        return any(_pattern(v, True).fullmatch(host) for v in condition.values)
    if kind == "http-request-method":
        return request.method in condition.values
    return False


def _without_port(host: str) -> str:
    if host.startswith("["):  # [::1]:80
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0]


def route(listener: Listener, request: Request) -> Action:
    """The action for ``request``: the first rule (by priority) whose conditions all match, else the
    listener's default action."""
    for rule in listener.rules:
        if all(matches(c, request) for c in rule.conditions):
            return rule.action
    return listener.default


# -- choosing a target ---------------------------------------------------------------------------------


@dataclass
class Chooser:
    """Picks targets: a group by weight (``rng``), then its routable targets in turn."""

    rng: random.Random = field(default_factory=random.Random)
    _turns: dict[str, itertools.count[int]] = field(default_factory=dict)

    def choose(
        self,
        action: Forward,
        members: Mapping[str, Sequence[str]],
        routable: Callable[[str], bool],
        exclude: frozenset[str] = frozenset(),
    ) -> str | None:
        """A routable target of ``action``'s groups (``members``: group ARN -> its registered targets),
        or None if no group with a weight above 0 has one. ``exclude`` are targets already tried."""
        candidates: list[tuple[str, int, list[str]]] = []
        for arn, weight in action.groups:
            if weight <= 0:
                continue
            ready = [t for t in members.get(arn, ()) if t not in exclude and routable(t)]
            if ready:
                candidates.append((arn, weight, ready))
        if not candidates:
            return None
        arn, _, ready = self.rng.choices(candidates, weights=[w for _, w, _ in candidates])[0]
        turn = next(self._turns.setdefault(arn, itertools.count()))
        return ready[turn % len(ready)]
