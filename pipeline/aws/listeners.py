"""The load balancer's listeners and the attributes that go with them (pure: troposphere only).

Without a certificate (``deploy.certificate_arn = ""``) there is one HTTP listener on
``deploy.listener_port`` and it carries the rules. With one, an HTTPS listener on
``deploy.https_port`` carries the rules, terminating TLS with that ACM certificate under a current
security policy, and the HTTP listener only redirects to it (301, the rest of the URL kept). Either
way the listener that carries the rules answers a plain 503 when no rule matches.

The security policy is ``ELBSecurityPolicy-TLS13-1-2-2021-06``: TLS 1.3 and 1.2 with forward-secret
AEAD and SHA-2 suites only, the policy AWS recommends. A listener made through CloudFormation without
a policy would get ``ELBSecurityPolicy-2016-08``, which still allows TLS 1.0 and 1.1 ("Security
policies for your Application Load Balancer", Elastic Load Balancing user guide).

Access logs (``deploy.access_logs_bucket``) go to that bucket under the stack's name; the bucket's
policy must let Elastic Load Balancing write there (see the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from troposphere import Ref, Sub, Tags, Template
from troposphere import elasticloadbalancingv2 as elb

if TYPE_CHECKING:
    from pipeline.aws.stack import StackParams

TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
HTTP_LISTENER = "Listener"  # the logical id it always had: an existing stack keeps its listener
HTTPS_LISTENER = "HttpsListener"


def ports(p: StackParams) -> tuple[int, ...]:
    """The listener ports the load balancer's security group opens to the allowed networks."""
    return (p.listener_port, p.https_port) if p.certificate_arn else (p.listener_port,)


def add(t: Template, p: StackParams, alb: Any, common: Mapping[str, str]) -> elb.Listener:
    """Add the listeners to ``t``; return the one that carries the rules. Each carries the stack's
    tags ``common``: they let its CloudFormation service role change these listeners only."""
    no_route = elb.Action(
        Type="fixed-response",
        FixedResponseConfig=elb.FixedResponseConfig(
            StatusCode="503", ContentType="text/plain", MessageBody="no route"
        ),
    )
    if not p.certificate_arn:
        # Only the rules forward; a request no rule matches gets a plain 503.
        return t.add_resource(
            elb.Listener(
                HTTP_LISTENER,
                LoadBalancerArn=Ref(alb),
                Port=p.listener_port,
                Protocol="HTTP",
                DefaultActions=[no_route],
                Tags=Tags(**common),
            )
        )
    t.add_resource(
        elb.Listener(
            HTTP_LISTENER,
            LoadBalancerArn=Ref(alb),
            Port=p.listener_port,
            Protocol="HTTP",
            # Host, path and query stay as they were (what a redirect does not name it keeps).
            DefaultActions=[
                elb.Action(
                    Type="redirect",
                    RedirectConfig=elb.RedirectConfig(
                        Protocol="HTTPS", Port=str(p.https_port), StatusCode="HTTP_301"
                    ),
                )
            ],
            Tags=Tags(**common),
        )
    )
    return t.add_resource(
        elb.Listener(
            HTTPS_LISTENER,
            LoadBalancerArn=Ref(alb),
            Port=p.https_port,
            Protocol="HTTPS",
            SslPolicy=TLS_POLICY,
            Certificates=[elb.Certificate(CertificateArn=p.certificate_arn)],
            DefaultActions=[no_route],
            Tags=Tags(**common),
        )
    )


def access_log_attributes(p: StackParams) -> list[elb.LoadBalancerAttributes]:
    """The load balancer attributes that turn access logs on (none without a bucket)."""
    if not p.access_logs_bucket:
        return []
    return [
        elb.LoadBalancerAttributes(Key="access_logs.s3.enabled", Value="true"),
        elb.LoadBalancerAttributes(Key="access_logs.s3.bucket", Value=p.access_logs_bucket),
        elb.LoadBalancerAttributes(Key="access_logs.s3.prefix", Value=p.stack_name),
    ]


def url(p: StackParams, alb: Any) -> Sub:
    """The app's address: the HTTPS listener's with a certificate, else the HTTP listener's."""
    https = bool(p.certificate_arn)
    scheme, port = ("https", p.https_port) if https else ("http", p.listener_port)
    suffix = "" if port == (443 if https else 80) else f":{port}"
    return Sub(f"{scheme}://${{{alb.title}.DNSName}}{suffix}")
