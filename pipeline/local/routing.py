"""How the local load balancer picks a target for a request, as an application load balancer does (pure).

A :class:`Listener` is what ELBv2 holds for one listener: its rules in priority order and its default
action (forward, a fixed response, or a redirect: :func:`location` builds the redirect's URL).
:func:`route` finds the action of the first rule whose conditions all match the request (the
ALB condition types ``path-pattern``, ``http-header``, ``host-header`` and ``http-request-method``;
a rule with a condition of another type never matches). :func:`choose` picks a target for a forward
action: a target group by weight, then the next of its targets in turn (round robin).

Which targets of a group take requests is an ALB's rule ("Health checks for Application Load Balancer
target groups": "If a target group contains only unhealthy registered targets, the load balancer
routes requests to all those targets, regardless of their health status"): its healthy targets; when
every target it has is unhealthy, all of them (the group **fails open**, and requests to a colour that
broke while it had traffic fail until the rollback takes its weight away). Targets still in their
initial checks are not in service yet, and a draining one (deregistered, or its instance terminated)
takes no new request; a group with nothing to route to is left out of the choice, and when no group of
the action is left, :func:`choose` returns None and the request gets 503.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pipeline.local.tls import Tls


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


@dataclass(frozen=True)
class Redirect:
    """ELBv2's RedirectConfig: each part a value, ``#{...}`` keywords, or "" to keep the request's."""

    status: int  # 301 or 302
    protocol: str = ""
    host: str = ""
    port: str = ""
    path: str = ""
    query: str = ""


Action = Forward | Fixed | Redirect


@dataclass(frozen=True)
class Rule:
    priority: int
    conditions: tuple[Condition, ...]
    action: Action


@dataclass(frozen=True)
class Listener:
    """One HTTP or HTTPS listener of a load balancer."""

    port: int
    load_balancer: str  # the load balancer's name (for messages and status)
    dns_name: str
    rules: tuple[Rule, ...]  # by priority
    default: Action
    protocol: str = "HTTP"  # HTTP | HTTPS
    tls: Tls | None = None  # HTTPS: the certificate and the security policy
    idle_timeout: float = 60.0  # the load balancer's idle_timeout.timeout_seconds (AWS's default: 60)


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
        if kind == "redirect":
            r = data.get("RedirectConfig") or {}
            return Redirect(
                302 if r.get("StatusCode") == "HTTP_302" else 301,
                str(r.get("Protocol") or ""),
                str(r.get("Host") or ""),
                str(r.get("Port") or ""),
                str(r.get("Path") or ""),
                str(r.get("Query") or ""),
            )
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


def location(redirect: Redirect, listener: Listener, request: Request) -> str:
    """The URL a redirect sends ``request`` to: each part the redirect names (with ``#{protocol}``,
    ``#{host}``, ``#{port}``, ``#{path}`` without its leading "/", ``#{query}`` replaced by the
    request's own), and the request's own for the parts it does not name (ELBv2 API reference,
    RedirectActionConfig)."""
    parts = urlsplit(request.target)
    own = {
        "protocol": listener.protocol.upper(),
        "host": _without_port(request.headers.get("host", "")) or "localhost",
        "port": str(listener.port),
        "path": (parts.path or "/").lstrip("/"),
        "query": parts.query,
    }

    def fill(value: str, default: str) -> str:
        for key, text in own.items():
            value = value.replace(f"#{{{key}}}", text)
        return value or default

    protocol = fill(redirect.protocol, own["protocol"]).lower()
    path = fill(redirect.path, "/" + own["path"])
    query = fill(redirect.query, own["query"])
    url = f"{protocol}://{fill(redirect.host, own['host'])}:{fill(redirect.port, own['port'])}{path}"
    return f"{url}?{query}" if query else url


def route(listener: Listener, request: Request) -> Action:
    """The action for ``request``: the first rule (by priority) whose conditions all match, else the
    listener's default action."""
    for rule in listener.rules:
        if all(matches(c, request) for c in rule.conditions):
            return rule.action
    return listener.default


# -- choosing a target ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    target: str
    fail_open: bool  # its group had no healthy target: picked regardless of its health


@dataclass
class Chooser:
    """Picks targets: a group by weight (``rng``), then its targets in turn."""

    rng: random.Random = field(default_factory=random.Random)
    _turns: dict[str, itertools.count[int]] = field(default_factory=dict)

    def choose(
        self,
        action: Forward,
        members: Mapping[str, Sequence[str]],
        health: Callable[[str], str],
        exclude: frozenset[str] = frozenset(),
    ) -> Pick | None:
        """A target of ``action``'s groups (``members``: group ARN -> its registered targets; ``health``:
        a target's state, ``healthy``, ``initial``, ``unhealthy`` or ``draining``; "" for one the cloud
        does not run), or None if no group with a weight above 0 has one to route to. ``exclude`` are
        targets already tried."""
        candidates: list[tuple[str, int, list[str], bool]] = []
        for arn, weight in action.groups:
            if weight <= 0:
                continue
            states = {t: health(t) for t in members.get(arn, ())}
            serving = [t for t, state in states.items() if state not in ("draining", "")]
            healthy = [t for t in serving if states[t] == "healthy"]
            fail_open = bool(serving) and all(states[t] == "unhealthy" for t in serving)
            ready = [t for t in (serving if fail_open else healthy) if t not in exclude]
            if ready:
                candidates.append((arn, weight, ready, fail_open))
        if not candidates:
            return None
        arn, _, ready, fail_open = self.rng.choices(candidates, weights=[w for _, w, _, _ in candidates])[0]
        turn = next(self._turns.setdefault(arn, itertools.count()))
        return Pick(ready[turn % len(ready)], fail_open)
