"""TLS for the local load balancer's HTTPS listeners: the listener's certificate and security policy
as an ``ssl.SSLContext``.

The certificate and its key are the ones the local AWS's ACM holds for the ARN the listener names
(an ALB reads them from ACM the same way; nobody else can export an imported key). The security
policy decides the protocol versions and the TLS 1.2 cipher suites, as listed for each policy in
"Security policies for your Application Load Balancer" (Elastic Load Balancing user guide); TLS 1.3
suites are the three every TLS 1.3 policy there allows, which are also OpenSSL's defaults. A policy
that is not in :data:`POLICIES` is refused rather than served with other settings than AWS's.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

TLS12_FS_AEAD_SHA2 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
)


@dataclass(frozen=True)
class Policy:
    minimum: ssl.TLSVersion
    tls12_ciphers: tuple[str, ...]  # empty for TLS 1.3-only policies


POLICIES = {
    "ELBSecurityPolicy-TLS13-1-2-2021-06": Policy(ssl.TLSVersion.TLSv1_2, TLS12_FS_AEAD_SHA2),
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06": Policy(
        ssl.TLSVersion.TLSv1_2,
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
        ),
    ),
    "ELBSecurityPolicy-TLS13-1-3-2021-06": Policy(ssl.TLSVersion.TLSv1_3, ()),
}


@dataclass(frozen=True)
class Tls:
    """What an HTTPS listener terminates TLS with (compared whole: a change restarts the listener)."""

    certificate_arn: str
    policy: str
    certificate: bytes  # PEM; empty when the local ACM has no such certificate
    key: bytes  # PEM


def context(tls: Tls) -> ssl.SSLContext:
    """The server context for ``tls``; ``ValueError`` (one line) when it cannot be served."""
    policy = POLICIES.get(tls.policy)
    if policy is None:
        raise ValueError(f"security policy {tls.policy or '(none)'} is not one the local load balancer knows")
    if not tls.certificate or not tls.key:
        raise ValueError(f"certificate {tls.certificate_arn} is not in the local AWS's ACM")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = policy.minimum
    if policy.tls12_ciphers:
        ctx.set_ciphers(":".join(policy.tls12_ciphers))
    # load_cert_chain reads files only: a private directory that is gone again at once
    with tempfile.TemporaryDirectory(prefix="pipeline-tls-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(tls.certificate)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(tls.key)
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as err:
            raise ValueError(f"certificate {tls.certificate_arn}: {err.reason or err}") from err
    return ctx
