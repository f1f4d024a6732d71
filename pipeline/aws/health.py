"""The health gate: is a colour serving the release it should, and does it stay healthy?

A unikernel cannot run cfn-signal or a deployment agent, so health is judged from outside the guest:

- the load balancer's target health (``DescribeTargetHealth``): every instance of the colour must be
  registered and ``healthy``, and there must be as many as the colour's capacity;
- HTTP probes of the app's health path (``app.health_path``: 200) and, when the app can say which
  build it is (``app.version_path``), of its version path (an answer naming the build id the colour
  should run), sent through the load balancer with the colour's ``X-Pipeline-Color`` header and the
  release's secret ``X-Pipeline-Probe`` token (without it the load balancer's probe rules ignore the
  colour header: :mod:`pipeline.aws.probe`), where the load balancer is reachable from this machine
  (a probe that cannot connect is skipped, not failed). An app without a version path is judged by
  its targets' health and its health path, and the gate says so;
- while a colour takes traffic, its 5xx answers per minute (CloudWatch ``HTTPCode_Target_5XX_Count``).

Where the facts come from is a :class:`HealthSource`, so tests and the local cloud can supply their
own. :class:`HealthGate` does the waiting, with injected ``sleep`` and ``clock``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.aws import probe
from pipeline.aws.stack import HEALTH_PATH
from pipeline.aws.tags import Color
from pipeline.aws.wait import poll
from pipeline.errors import DeployError

if TYPE_CHECKING:
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client

log = logging.getLogger(__name__)

VERSION_PATH = "/version"
POLL_SECONDS = 10.0  # the target groups check every 10 s; polling faster only repeats answers
PROBE_TIMEOUT = 5.0  # seconds per HTTP probe
MAX_5XX_PER_MINUTE = 5  # more 5xx answers than this from a colour in one minute fails the bake


@dataclass(frozen=True)
class Target:
    """One registered target as the load balancer sees it."""

    target_id: str
    state: str  # initial | healthy | unhealthy | unused | draining | unavailable
    reason: str = ""
    description: str = ""  # ELBv2's words for the reason (why a target cannot be reached, say)


@dataclass(frozen=True)
class Probe:
    """The answer to one HTTP probe."""

    status: int
    body: str


class HealthSource(Protocol):
    """Where the health facts come from."""

    def targets(self, target_group_arn: str) -> list[Target]:
        """The target group's registered targets and their states."""
        ...

    def probe(self, color: Color, path: str) -> Probe | None:
        """GET ``path`` from ``color``; None when it cannot be reached from here (not a failure)."""
        ...

    def errors_5xx(self, load_balancer_arn: str, target_group_arn: str, minutes: int) -> int:
        """The most 5xx answers the colour's targets gave in any one minute of the last ``minutes``."""
        ...


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    detail: str  # one line: what was seen


class Unhealthy(DeployError):
    """A colour did not become healthy in time, or stopped being healthy."""


def assess(
    targets: Sequence[Target],
    expected: int,
    health: Probe | None,
    version: Probe | None,
    build_id: str,
    health_path: str = HEALTH_PATH,
    version_path: str = VERSION_PATH,
) -> Verdict:
    """Judge one observation of a colour (pure). ``expected`` is its capacity; ``version_path`` ""
    means the app cannot say which build it is."""
    # Draining targets are leaving (replaced or scaled-in instances) and take no new requests.
    serving = [t for t in targets if t.state != "draining"]
    healthy = [t for t in serving if t.state == "healthy"]
    parts = [f"{len(healthy)}/{expected} targets healthy"]
    ok = len(healthy) >= expected and len(healthy) == len(serving)
    for t in serving:
        if t.state != "healthy":
            why = ": ".join(x for x in (t.reason, t.description) if x)
            parts.append(f"{t.target_id} {t.state}" + (f" ({why})" if why else ""))
    if health is not None:
        parts.append(f"{health_path} {health.status}")
        ok = ok and health.status == 200
    if version is not None:
        served = _build_id_of(version, build_id)
        parts.append(f"{version_path} build {served or '?'}")
        ok = ok and version.status == 200 and served == build_id
        if served and served != build_id:
            parts.append(f"expected build {build_id}")
    if health is None and version is None:
        parts.append("HTTP probes not reachable from here")
    elif not version_path:
        parts.append("build not checked (no app.version_path): relying on target health")
    return Verdict(ok, ", ".join(parts))


def _build_id_of(probe: Probe, expected: str) -> str | None:
    """The build id a version answer names: its JSON ``build_id``, or the expected id where the
    answer holds it as text (an app may answer with just the id, or with it in any format)."""
    try:
        data = json.loads(probe.body)
    except ValueError:
        data = None
    value = data.get("build_id") if isinstance(data, dict) else None
    if value:
        return str(value)
    return expected if expected and expected in probe.body else None


@dataclass(frozen=True)
class Subject:
    """What the gate needs to know about the colour it judges."""

    color: Color
    target_group_arn: str
    load_balancer_arn: str
    capacity: int
    build_id: str
    health_path: str = HEALTH_PATH  # app.health_path
    version_path: str = VERSION_PATH  # app.version_path; "" = the app cannot say which build it is


class HealthGate:
    """Waits for a colour to become healthy and watches it while it bakes.

    ``sleep`` and ``clock`` are injected (tests pass a fake clock); ``report`` receives one line per
    change of what was seen.
    """

    def __init__(
        self,
        source: HealthSource,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        report: Callable[[str], None] = lambda _line: None,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.source = source
        self.sleep = sleep
        self.clock = clock
        self.report = report
        self.poll = poll

    def check(self, c: Subject) -> Verdict:
        """One observation of ``c``."""
        targets = self.source.targets(c.target_group_arn)
        health = self.source.probe(c.color, c.health_path)
        probe_version = health is not None and bool(c.version_path)
        version = self.source.probe(c.color, c.version_path) if probe_version else None
        return assess(targets, c.capacity, health, version, c.build_id, c.health_path, c.version_path)

    def wait_healthy(self, c: Subject, timeout: float) -> Verdict:
        """Poll until ``c`` is healthy; raise :class:`Unhealthy` when ``timeout`` seconds pass first."""
        seen: list[Verdict] = []

        def healthy() -> Verdict | None:
            verdict = self.check(c)
            if not seen or verdict.detail != seen[-1].detail:
                self.report(f"{c.color}: {verdict.detail}")
            seen[:] = [verdict]
            return verdict if verdict.healthy else None

        return poll(
            healthy,
            what=f"{c.color} health",
            timeout=timeout,
            sleep=self.sleep,
            clock=self.clock,
            first=self.poll,
            most=self.poll,
            expired=lambda: Unhealthy(
                f"{c.color} (build {c.build_id}) did not become healthy within {timeout:g}s: "
                f"{seen[-1].detail}",
                hint="the instances' console output and the target group's health checks show why",
            ),
        )

    def watch(self, c: Subject, seconds: float) -> None:
        """Hold for ``seconds`` while ``c`` takes traffic; raise :class:`Unhealthy` as soon as it is
        not healthy or answers with too many 5xx."""
        end = self.clock() + seconds
        minutes = max(1, int(seconds // 60) + 1)
        while True:
            verdict = self.check(c)
            if not verdict.healthy:
                raise Unhealthy(f"{c.color} (build {c.build_id}) became unhealthy: {verdict.detail}")
            errors = self.source.errors_5xx(c.load_balancer_arn, c.target_group_arn, minutes)
            if errors > MAX_5XX_PER_MINUTE:
                raise Unhealthy(
                    f"{c.color} (build {c.build_id}) answered {errors} requests with 5xx in one minute "
                    f"(limit {MAX_5XX_PER_MINUTE})"
                )
            remaining = end - self.clock()
            if remaining <= 0:
                return
            self.sleep(min(self.poll, remaining))


class AwsHealth:
    """Health facts from ELBv2, CloudWatch and HTTP probes through the load balancer.

    ``probe_url`` is the load balancer's URL (the stack's ``Url`` output), or None to skip the HTTP
    probes (the local AWS has no load balancer that answers); ``probe_token`` the release's secret
    (the stack's ``ProbeToken`` parameter), without which the probes reach the weighted rule instead.
    """

    def __init__(
        self,
        elbv2: ElasticLoadBalancingv2Client,
        cloudwatch: Any,
        probe_url: str | None,
        probe_token: str = "",
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.elbv2 = elbv2
        self.cloudwatch = cloudwatch
        self.probe_url = probe_url.rstrip("/") if probe_url else None
        self.probe_token = probe_token
        self.timeout = timeout
        self._unreachable_logged = False

    def targets(self, target_group_arn: str) -> list[Target]:
        resp = self.elbv2.describe_target_health(TargetGroupArn=target_group_arn)
        return [
            Target(
                d["Target"]["Id"],
                d["TargetHealth"]["State"],
                d["TargetHealth"].get("Reason", ""),
                d["TargetHealth"].get("Description", ""),
            )
            for d in resp["TargetHealthDescriptions"]
        ]

    def probe(self, color: Color, path: str) -> Probe | None:
        if self.probe_url is None:
            return None
        return http_probe(self.probe_url + path, probe.headers(color, self.probe_token), self.timeout)

    def errors_5xx(self, load_balancer_arn: str, target_group_arn: str, minutes: int) -> int:
        # Whole minutes, the last one still running (CloudWatch aggregates per period from StartTime).
        end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        resp = self.cloudwatch.get_metric_statistics(
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_Target_5XX_Count",
            Dimensions=[
                {"Name": "LoadBalancer", "Value": arn_suffix(load_balancer_arn, "loadbalancer/")},
                {"Name": "TargetGroup", "Value": arn_suffix(target_group_arn, "targetgroup/")},
            ],
            StartTime=end - timedelta(minutes=minutes + 1),
            EndTime=end,
            Period=60,
            Statistics=["Sum"],
        )
        return int(max((p.get("Sum", 0.0) for p in resp.get("Datapoints", [])), default=0.0))


def arn_suffix(arn: str, marker: str) -> str:
    """The CloudWatch dimension value of a load balancer or target group ARN: ``app/name/id`` or
    ``targetgroup/name/id``."""
    _, sep, rest = arn.partition(marker)
    if not sep:
        raise DeployError(f"not an ELBv2 ARN with {marker!r}: {arn}")
    return rest if marker == "loadbalancer/" else marker + rest


def http_probe(url: str, headers: dict[str, str], timeout: float) -> Probe | None:
    """GET ``url``: its status and body, or None when nothing answers (refused, unresolvable, timeout)."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) URL from the stack
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return Probe(int(resp.status), resp.read(65536).decode("utf-8", "replace"))
    except urllib.error.HTTPError as err:
        return Probe(int(err.code), err.read(65536).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as err:
        log.info("probe %s not reachable: %s", url, err)
        return None
