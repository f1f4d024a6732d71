"""A certificate authority of this checkout and a certificate for 127.0.0.1, in the local AWS's ACM.

With ``aws.endpoint = "local"`` the load balancer's HTTPS listener is served by the local load
balancer, with the certificate the listener names, read from the local AWS's ACM, as an ALB does.
``invoke local.certificate`` provides one: it makes a CA (once; ``.pipeline/local/ca/ca.pem`` is what
clients trust, its key stays beside it, readable by the owner only), issues a certificate for
``localhost`` and ``127.0.0.1`` signed by it, and imports both into the local ACM (ImportCertificate,
tagged as the pipeline's). Running it again reuses the imported certificate while it is valid for
more than :data:`RENEW_DAYS` and was issued by this CA; otherwise a new one is imported under the same
ARN, so the setting that names it stays right.

Keys are ECDSA P-256 (the TLS 1.2 suites of the listener's policy include ECDHE-ECDSA ones, and ACM
imports such keys). The ``cryptography`` package is moto's own dependency.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.aws import tags
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.manifest import write_atomic

CA_NAME = "erlang-unikernel-pipeline local CA"
CA_DAYS = 3650
LEAF_DAYS = 397  # the longest a publicly trusted TLS certificate may be valid (CA/Browser Forum)
RENEW_DAYS = 30
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1",)
PURPOSE = "local-tls"  # the Name tag of the imported certificate


@dataclass(frozen=True)
class Issued:
    arn: str
    ca_file: Path  # what a client verifies the local load balancer's certificate against
    imported: bool  # False: the certificate in the local ACM was still good and is reused


def ca_dir(settings: Settings) -> Path:
    return settings.work_dir / "local" / "ca"


def ensure_ca(
    directory: Path, now: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of ``directory`` (made, with its key readable by the owner only, when there is none)."""
    cert_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
    if cert_file.is_file() and key_file.is_file():
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cert, key
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key)
    write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime | None = None
) -> tuple[bytes, bytes]:
    """A server certificate for :data:`NAMES` and :data:`ADDRESSES` signed by ``ca``: (cert, key) PEM."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ensure_certificate(settings: Settings, clients: Clients, now: dt.datetime | None = None) -> Issued:
    """The local ACM's certificate for 127.0.0.1, imported (or renewed in place) when needed; whether
    the one there is still good is judged at ``now`` (default: the current time)."""
    now = now or dt.datetime.now(dt.UTC)
    directory = ca_dir(settings)
    ca, ca_key = ensure_ca(directory)
    acm = clients.client("acm")
    wanted = tags.scope(settings.app.name, settings.env, {tags.NAME: PURPOSE})
    existing = _find(acm, wanted)
    if existing is not None:
        arn, cert = existing
        fresh = cert.get("NotAfter") and cert["NotAfter"] > now + dt.timedelta(days=RENEW_DAYS)
        if fresh and cert.get("Issuer") == CA_NAME and cert.get("Status") == "ISSUED":
            return Issued(arn, directory / "ca.pem", imported=False)
    leaf, key = issue(ca, ca_key)
    chain = ca.public_bytes(serialization.Encoding.PEM)
    request: dict[str, Any] = {"Certificate": leaf, "PrivateKey": key, "CertificateChain": chain}
    if existing is not None:
        request["CertificateArn"] = existing[0]  # renewed in place: the ARN in the settings stays right
    else:
        request["Tags"] = tags.to_aws(wanted)
    arn = str(acm.import_certificate(**request)["CertificateArn"])
    return Issued(arn, directory / "ca.pem", imported=True)


def _find(acm: Any, wanted: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    for page in acm.get_paginator("list_certificates").paginate():
        for summary in page.get("CertificateSummaryList", []):
            arn = summary["CertificateArn"]
            have = tags.from_aws(acm.list_tags_for_certificate(CertificateArn=arn).get("Tags"))
            if not tags.missing(wanted, have):
                return arn, acm.describe_certificate(CertificateArn=arn)["Certificate"]
    return None
