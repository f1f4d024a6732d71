"""HTTPS before a deploy changes anything: the certificate can serve, or HTTP only is said once.

A load balancer can only use an ACM certificate of its own region, one that ACM has issued (or that
was imported) and that has not expired ("Certificates for your Application Load Balancer", Elastic
Load Balancing user guide). CloudFormation would find out only half-way through the stack update, with
the listener failing; these checks find out first, with one line naming the setting. (The pre-flight
checks of the other settings are elsewhere; this module holds only the certificate's.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws.calls import error_code
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import ConfigError

FIELD = "deploy.certificate_arn"


def region_of(arn: str) -> str:
    """The region part of an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)."""
    parts = arn.split(":")
    return parts[3] if len(parts) > 5 else ""


def check(
    clients: Clients,
    settings: Settings,
    say: Callable[[str], None] = ui.warn,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Refuse, with a one-line :class:`ConfigError`, a certificate the load balancer could not use;
    without one, say once that the app is served over plain HTTP. Changes nothing."""
    arn = settings.deploy.certificate_arn
    region = settings.aws.region
    where = settings.where(FIELD)
    if not arn:
        say(
            f"no {FIELD}: the load balancer serves plain HTTP on port {settings.deploy.listener_port} "
            "(set an ACM certificate to serve HTTPS)"
        )
        return
    if region_of(arn) != region:
        raise ConfigError(
            f"{where}: the certificate is in {region_of(arn)}, not in {region} where the load balancer is",
            hint=f"ACM certificates serve only their own region: import or request one in {region}",
        )
    try:
        cert = clients.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]
    except ClientError as err:
        if error_code(err) not in ("ResourceNotFoundException", "ValidationException", "InvalidArnException"):
            raise
        raise ConfigError(
            f"{where}: no certificate {arn} in {region}",
            hint=f"aws acm list-certificates --region {region} lists those there",
        ) from err
    status = str(cert.get("Status", "?"))
    if status != "ISSUED":
        raise ConfigError(
            f"{where}: certificate {arn} is {status}, not ISSUED",
            hint="finish its validation in ACM, or import a valid one",
        )
    expires = cert.get("NotAfter")
    if isinstance(expires, datetime) and expires <= now():
        raise ConfigError(
            f"{where}: certificate {arn} expired on {expires:%Y-%m-%d}",
            hint="renew it (or import a new one) and set its ARN",
        )
