"""One factory for every AWS client the pipeline uses.

Clients get explicit connect/read timeouts and exactly one retry layer (botocore's ``standard`` mode,
which retries throttling and 5xx with exponential back-off); nothing in the pipeline wraps its own
retry loop around them. With ``aws.endpoint = "local"`` every client points at the embedded local
AWS (a moto server on 127.0.0.1, started on demand) with throwaway credentials; when that server stops
answering in the middle of a task (killed, or the machine slept), the error says so and what to do
(:class:`LocalAwsDown`) instead of botocore's "Could not connect to the endpoint URL".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from pipeline.config import Settings
from pipeline.errors import AwsError

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sts import STSClient

CONNECT_TIMEOUT = 5  # seconds; an endpoint that does not accept a connection by then is down
READ_TIMEOUT = 60  # seconds; PutSnapshotBlock of 512 KiB on a slow uplink stays well under this
MAX_ATTEMPTS = 8  # standard mode: exponential back-off with jitter, capped at 20 s per wait

LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# What botocore raises, after its retries, when nothing serves the endpoint any more.
NOT_ANSWERING = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)


class LocalAwsDown(AwsError):
    """The local AWS stopped answering during a task."""


def _local_down(endpoint: str) -> Any:
    """A botocore ``after-call-error`` handler for the clients of the local AWS at ``endpoint``."""

    def handler(exception: Exception, **_: Any) -> None:
        if isinstance(exception, NOT_ANSWERING):
            raise LocalAwsDown(
                f"the local AWS at {endpoint} is not answering: it was stopped or killed, or this "
                f"machine slept ({type(exception).__name__})",
                hint="run the task again: any task starts the local AWS again with all its state "
                "(invoke local.status shows it), and the task resumes where it stopped",
            ) from exception

    return handler


@dataclass
class Clients:
    """Creates (and caches) boto3 clients for one AWS target."""

    region: str
    endpoint_url: str | None = None  # None: real AWS
    session: boto3.Session = field(default_factory=boto3.Session)
    pool: int = 10  # connections per client; the uploader raises it to its worker count
    _cache: dict[tuple[str, str, int], Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """Which AWS this is, for the first line every task prints."""
        if self.endpoint_url:
            return f"local AWS (moto) at {self.endpoint_url}, region {self.region}"
        profile = self.session.profile_name or "default credential chain"
        return f"AWS ({profile}), region {self.region}"

    def client(self, service: str, region: str | None = None, pool: int | None = None) -> Any:
        key = (service, region or self.region, pool or self.pool)
        if key not in self._cache:
            cfg = Config(
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                max_pool_connections=key[2],
                tcp_keepalive=True,
            )
            kwargs: dict[str, Any] = {"region_name": key[1], "config": cfg}
            if self.endpoint_url:
                kwargs.update(endpoint_url=self.endpoint_url, **LOCAL_CREDENTIALS)
            client = self.session.client(service, **kwargs)  # type: ignore[call-overload]
            if self.endpoint_url:
                client.meta.events.register("after-call-error", _local_down(self.endpoint_url))
            self._cache[key] = client
        return self._cache[key]

    def ec2(self, region: str | None = None) -> EC2Client:
        return self.client("ec2", region)  # type: ignore[no-any-return]

    def ebs(self, region: str | None = None, pool: int | None = None) -> EBSClient:
        return self.client("ebs", region, pool)  # type: ignore[no-any-return]

    def cloudformation(self, region: str | None = None) -> CloudFormationClient:
        return self.client("cloudformation", region)  # type: ignore[no-any-return]

    def elbv2(self, region: str | None = None) -> ElasticLoadBalancingv2Client:
        return self.client("elbv2", region)  # type: ignore[no-any-return]

    def autoscaling(self, region: str | None = None) -> AutoScalingClient:
        return self.client("autoscaling", region)  # type: ignore[no-any-return]

    def kms(self, region: str | None = None) -> KMSClient:
        return self.client("kms", region)  # type: ignore[no-any-return]

    def iam(self) -> IAMClient:
        return self.client("iam")  # type: ignore[no-any-return]

    def sts(self) -> STSClient:
        return self.client("sts")  # type: ignore[no-any-return]


def clients(settings: Settings) -> Clients:
    """Clients for the AWS that ``settings`` selects; starts the embedded local AWS when that is it."""
    if settings.aws.endpoint == "local":
        from pipeline.local import server as local_server

        return Clients(region=settings.aws.region, endpoint_url=local_server.ensure_running(settings))
    session = boto3.Session(profile_name=settings.aws.profile or None)
    return Clients(region=settings.aws.region, session=session)
