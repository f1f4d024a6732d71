"""HTTPS: the listeners of the stack with and without a certificate, the load balancer's attributes,
the certificate checked before any change, and the local load balancer terminating TLS with the
certificate of the local AWS's ACM (a CA of the checkout's own, ``invoke local.certificate``).

What AWS does is taken from its documentation: an HTTPS listener needs a certificate of its own
region and a security policy (CloudFormation's default, ELBSecurityPolicy-2016-08, still allows TLS 1.0;
"Security policies for your Application Load Balancer"); a redirect keeps every part of the URL it
does not name (ELBv2 API reference, RedirectActionConfig). moto creates whatever it is given, so the
assertions are on the template, on the requests the pipeline sends and on its own checks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from awstest import FakeClock, Recorder
from botocore.stub import Stubber
from cryptography import x509

from pipeline import config
from pipeline.aws import deploy, https, iam, listeners, probe, service_role, stack
from pipeline.aws.deploy import Runtime
from pipeline.aws.session import Clients
from pipeline.errors import ConfigError
from pipeline.local import ca, tls
from pipeline.local.balancer import Balancer
from pipeline.local.registry import Registry
from pipeline.local.routing import Listener, Redirect, Request, action_of, location
from tests.deploy_support import REGION, TargetHealth, make_clients, register_ami
from tests.test_iam import NOT_USED, provider_permissions
from tests.test_local_cloud_balancer import FAST, Target, _at, _free_port, fetch
from tests.test_local_cloud_units import BLUE, GREEN, listener

REPO = Path(__file__).resolve().parent.parent
ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0b6f9c1e-1111-2222-3333-444455556666"
PLAIN = stack.StackParams(
    app="erlang_web",
    env="dev",
    target="beam",
    app_port=8080,
    listener_port=80,
    allowed_cidrs=("0.0.0.0/0", "2001:db8::/32"),
    scratch_size_gib=1,
    existing_vpc=False,
)
SECURE = replace(PLAIN, certificate_arn=ARN, https_port=443, access_logs_bucket="my-alb-logs")


def rendered(p: stack.StackParams) -> dict[str, Any]:
    return json.loads(stack.render(p))


def of_type(t: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in t["Resources"].items() if r["Type"] == kind}


# -- the template ------------------------------------------------------------------------------------


def test_with_a_certificate_https_carries_the_rules_and_http_only_redirects() -> None:
    t = rendered(SECURE)
    found = of_type(t, "AWS::ElasticLoadBalancingV2::Listener")
    assert set(found) == {"Listener", "HttpsListener"}
    secure = found["HttpsListener"]
    assert (secure["Protocol"], secure["Port"], secure["SslPolicy"]) == (
        "HTTPS",
        443,
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
    )
    assert secure["Certificates"] == [{"CertificateArn": ARN}]
    assert secure["DefaultActions"][0]["FixedResponseConfig"]["StatusCode"] == "503"
    plain = found["Listener"]
    assert (plain["Protocol"], plain["Port"]) == ("HTTP", 80)
    assert plain["DefaultActions"] == [
        {"Type": "redirect", "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}}
    ]
    rules = of_type(t, "AWS::ElasticLoadBalancingV2::ListenerRule")
    assert sorted(rules) == ["BlueProbeRule", "GreenProbeRule", "WeightedRule"]
    assert {json.dumps(r["ListenerArn"]) for r in rules.values()} == {'{"Ref": "HttpsListener"}'}
    # both ports open to every allowed network, nothing else
    (sg,) = [p for n, p in of_type(t, "AWS::EC2::SecurityGroup").items() if n == "LoadBalancerSecurityGroup"]
    opened = {
        (r["FromPort"], r["ToPort"], r.get("CidrIp") or r.get("CidrIpv6")) for r in sg["SecurityGroupIngress"]
    }
    assert opened == {(p, p, c) for p in (80, 443) for c in PLAIN.allowed_cidrs}
    assert t["Outputs"]["Url"]["Value"] == {"Fn::Sub": "https://${LoadBalancer.DNSName}"}


def test_without_a_certificate_the_stack_is_http_only_as_before() -> None:
    t = rendered(PLAIN)
    found = of_type(t, "AWS::ElasticLoadBalancingV2::Listener")
    assert list(found) == ["Listener"] and found["Listener"]["Protocol"] == "HTTP"
    assert found["Listener"]["DefaultActions"][0]["Type"] == "fixed-response"
    rules = of_type(t, "AWS::ElasticLoadBalancingV2::ListenerRule")
    assert {json.dumps(r["ListenerArn"]) for r in rules.values()} == {'{"Ref": "Listener"}'}
    assert t["Outputs"]["Url"]["Value"] == {"Fn::Sub": "http://${LoadBalancer.DNSName}"}
    assert rendered(replace(SECURE, https_port=8443))["Outputs"]["Url"]["Value"] == {
        "Fn::Sub": "https://${LoadBalancer.DNSName}:8443"
    }


def test_the_load_balancer_drops_invalid_header_fields_and_logs_to_the_bucket_when_given() -> None:
    def attributes(p: stack.StackParams) -> dict[str, str]:
        (lb_props,) = of_type(rendered(p), "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
        return {a["Key"]: a["Value"] for a in lb_props["LoadBalancerAttributes"]}

    assert attributes(PLAIN) == {
        "routing.http.drop_invalid_header_fields.enabled": "true",
        "idle_timeout.timeout_seconds": "60",
    }
    assert attributes(SECURE) == {
        "routing.http.drop_invalid_header_fields.enabled": "true",
        "idle_timeout.timeout_seconds": "60",
        "access_logs.s3.enabled": "true",
        "access_logs.s3.bucket": "my-alb-logs",
        "access_logs.s3.prefix": "erlang-web-dev",
    }


def test_the_https_template_is_lint_clean_and_the_policies_cover_it() -> None:
    """The service role can make what the HTTPS template adds (every permission CloudFormation's
    resource providers list for it); the pipeline may read the one certificate it names, nothing more."""
    from cfnlint.api import lint_all

    text = stack.render(SECURE)
    assert [f"{m.rule.id} {m.message}" for m in lint_all(text) if m.rule.id[0] in "EW"] == []
    s = config.load(REPO, env="dev", overrides=[f'deploy.certificate_arn="{ARN}"'])
    granted = {a.lower() for a in iam.actions(service_role.policy(s))}
    missing = [
        p
        for p in provider_permissions(json.loads(text))
        if not any(fnmatchcase(p, pattern) for pattern in NOT_USED)
        and p.lower() not in granted
        and not ("*" in p and any(fnmatchcase(g, p.lower()) for g in granted))
    ]
    assert missing == []
    doc = json.loads(iam.policy_json(s))
    reads = [st for st in doc["Statement"] if "acm:DescribeCertificate" in st["Action"]]
    assert [(st["Action"], st["Resource"]) for st in reads] == [(["acm:DescribeCertificate"], [ARN])]
    without = json.loads(iam.policy_json(config.load(REPO, env="dev")))
    assert "acm:DescribeCertificate" not in iam.actions(iam.policy(config.load(REPO, env="dev")))
    assert without != doc


# -- settings and the checks before any change ----------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('deploy.certificate_arn="arn:aws:iam::123456789012:server-certificate/x"', "an ACM certificate ARN"),
        ('deploy.access_logs_bucket="My_Bucket"', "an S3 bucket name"),
        ("deploy.https_port=80", "deploy.https_port and deploy.listener_port are both 80"),
    ],
)
def test_bad_https_settings_are_one_line(override: str, message: str) -> None:
    extra = [f'deploy.certificate_arn="{ARN}"'] if "https_port" in override else []
    with pytest.raises(ConfigError) as err:
        config.load(REPO, env="dev", overrides=[*extra, override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def moto_env(aws_in_process: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    rec = Recorder()
    clients = make_clients(rec)
    TargetHealth(monkeypatch)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pipeline.toml").write_text('default_env = "dev"\n[app]\nname = "erlang_web"\n[env.dev]\n')
    issued = ca.ensure_certificate(config.load(project, env="dev"), clients)
    yield rec, clients, issued


def settings(*extra: str) -> config.Settings:
    return config.load(
        REPO, env="dev", overrides=["deploy.bake_seconds=0", "deploy.retention_seconds=0", *extra]
    )


def runtime() -> Runtime:
    clock = FakeClock()
    return Runtime(sleep=clock.sleep, clock=clock.clock, confirm=lambda _q: True)


@pytest.mark.parametrize(
    ("arn", "message"),
    [
        (
            ARN.replace("us-east-1", "eu-west-1"),
            "--set deploy.certificate_arn: the certificate is in eu-west-1, not in us-east-1 where the load "
            "balancer is (hint: ACM certificates serve only their own region: import or request one in "
            "us-east-1)",
        ),
        (ARN, f"--set deploy.certificate_arn: no certificate {ARN} in us-east-1"),
    ],
)
def test_a_certificate_the_load_balancer_cannot_use_is_refused_before_any_change(
    moto_env: Any, arn: str, message: str
) -> None:
    rec, clients, _ = moto_env
    s = settings(f'deploy.certificate_arn="{arn}"')
    register_ami(clients, s, "1111111111aa")
    rec.clear()
    with pytest.raises(ConfigError) as err:
        deploy.deploy(s, clients, runtime(), "1111111111aa")
    assert str(err.value).startswith(message)
    assert rec.mutating() == []


def test_a_pending_or_expired_certificate_is_refused() -> None:
    clients = Clients(region=REGION)
    acm = clients.client("acm")
    s = settings(f'deploy.certificate_arn="{ARN}"')
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    with Stubber(acm) as stub:
        for status, after in (("PENDING_VALIDATION", now), ("ISSUED", now - dt.timedelta(days=1))):
            stub.add_response(
                "describe_certificate",
                {"Certificate": {"CertificateArn": ARN, "Status": status, "NotAfter": after}},
                {"CertificateArn": ARN},
            )
        with pytest.raises(
            ConfigError, match=r"is PENDING_VALIDATION, not ISSUED \(hint: finish its validation"
        ):
            https.check(clients, s, now=lambda: now)
        with pytest.raises(ConfigError, match=r"expired on 2026-05-31 \(hint: renew it"):
            https.check(clients, s, now=lambda: now)


def test_without_a_certificate_deploy_says_once_that_it_serves_plain_http(
    moto_env: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, clients, _ = moto_env
    monkeypatch.setenv("COLUMNS", "300")
    s = settings()
    register_ami(clients, s, "1111111111aa")
    deploy.deploy(s, clients, runtime(), "1111111111aa")
    err = capsys.readouterr().err
    assert err.count("no deploy.certificate_arn: the load balancer serves plain HTTP on port 80") == 1


def test_a_live_http_stack_gains_https_and_its_rules_move_to_the_https_listener(moto_env: Any) -> None:
    rec, clients, issued = moto_env
    s1 = settings()
    s2 = settings(f'deploy.certificate_arn="{issued.arn}"', "deploy.access_logs_bucket=my-alb-logs")
    register_ami(clients, s1, "1111111111aa")
    register_ami(clients, s1, "2222222222bb")
    deploy.deploy(s1, clients, runtime(), "1111111111aa")
    deploy.deploy(s2, clients, runtime(), "2222222222bb")
    sent = json.loads(rec.named("UpdateStack")[-1]["TemplateBody"])
    assert sent == json.loads(stack.render(stack.params_for(s2)))
    # what the load balancer holds after the update (moto, with the local AWS's CloudFormation fixes)
    elbv2 = clients.elbv2()
    (balancer,) = elbv2.describe_load_balancers()["LoadBalancers"]
    found = {
        lst["Protocol"]: lst
        for lst in elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    }
    assert found["HTTPS"]["SslPolicy"] == listeners.TLS_POLICY
    assert found["HTTPS"]["Certificates"] == [{"CertificateArn": issued.arn}]
    assert found["HTTP"]["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"
    priorities = {
        proto: sorted(r["Priority"] for r in elbv2.describe_rules(ListenerArn=lst["ListenerArn"])["Rules"])
        for proto, lst in found.items()
    }
    assert priorities == {"HTTP": ["default"], "HTTPS": ["1", "10", "2", "default"]}
    attributes = elbv2.describe_load_balancer_attributes(LoadBalancerArn=balancer["LoadBalancerArn"])
    held = {a["Key"]: a["Value"] for a in attributes["Attributes"]}
    assert held["access_logs.s3.bucket"] == "my-alb-logs" and held["access_logs.s3.enabled"] == "true"
    outputs = clients.cloudformation().describe_stacks(StackName="erlang-web-dev")["Stacks"][0]["Outputs"]
    assert {o["OutputKey"]: o["OutputValue"] for o in outputs}["Url"].startswith("https://")


# -- the local CA ----------------------------------------------------------------------------------------


def test_the_local_certificate_is_for_127_0_0_1_signed_by_the_checkouts_ca_and_reused(moto_env: Any) -> None:
    _, clients, issued = moto_env
    assert issued.imported
    ca_cert = x509.load_pem_x509_certificate(issued.ca_file.read_bytes())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert os.stat(issued.ca_file.parent / "ca-key.pem").st_mode & 0o077 == 0  # the key: owner only
    described = clients.client("acm").describe_certificate(CertificateArn=issued.arn)["Certificate"]
    assert set(described["SubjectAlternativeNames"]) == {"localhost", "127.0.0.1"}
    assert (described["Status"], described["Issuer"]) == ("ISSUED", ca.CA_NAME)
    project = issued.ca_file.parent.parent.parent.parent
    again = ca.ensure_certificate(config.load(project, env="dev"), clients)
    assert (again.arn, again.imported) == (issued.arn, False)
    # close to its end it is renewed in place: the ARN in the settings stays right
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=ca.LEAF_DAYS - 10)
    renewed = ca.ensure_certificate(config.load(project, env="dev"), clients, now=later)
    assert (renewed.arn, renewed.imported) == (issued.arn, True)
    assert len(clients.client("acm").list_certificates()["CertificateSummaryList"]) == 1


# -- the local load balancer --------------------------------------------------------------------------------


@pytest.fixture
def lb() -> Iterator[tuple[Balancer, Registry, dict[str, Target], int]]:
    """The local load balancer with two healthy targets (small HTTP servers answering their name)."""
    import random

    from pipeline.local.registry import Machine
    from pipeline.local.routing import Chooser

    registry = Registry()
    balancer = Balancer(registry, chooser=Chooser(random.Random(3)))
    balancer.start()
    targets = {name: Target(name) for name in ("i-blue", "i-green")}
    for name, t in targets.items():
        registry.add(Machine(name, "us-east-1", "g", name[2:], "b", "ami", FAST))
        registry.update(
            name, lambda m, port=t.port: (setattr(m, "phase", "running"), setattr(m, "host_port", port))
        )
        registry.observe(name, 200, "")
    try:
        yield balancer, registry, targets, _free_port()
    finally:
        balancer.stop()
        for t in targets.values():
            t.close()


@pytest.fixture
def local_ca(tmp_path: Path) -> tuple[Path, tls.Tls]:
    ca_cert, ca_key = ca.ensure_ca(tmp_path / "ca")
    cert, key = ca.issue(ca_cert, ca_key)
    return tmp_path / "ca" / "ca.pem", tls.Tls(ARN, listeners.TLS_POLICY, cert, key)


def fetch_https(port: int, cafile: Path | None, path: str = "/", **context: Any) -> tuple[int, str, str, str]:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    for key, value in context.items():
        setattr(ctx, key, value)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        version = conn.sock.version() or ""
        cipher = conn.sock.cipher()[0]
        return resp.status, resp.read().decode(), version, cipher
    finally:
        conn.close()


def test_the_local_balancer_terminates_tls_with_the_acm_certificate_and_redirects_http(
    lb: tuple[Balancer, Registry, dict[str, Target], int], local_ca: tuple[Path, tls.Tls]
) -> None:
    balancer, _, targets, http_port = lb
    cafile, cert = local_ca
    https_port = _free_port()
    members = {BLUE: ("i-blue",), GREEN: ("i-green",)}
    redirect = action_of(
        [
            {
                "Type": "redirect",
                "RedirectConfig": {"Protocol": "HTTPS", "Port": str(https_port), "StatusCode": "HTTP_301"},
            }
        ]
    )
    plain = Listener(http_port, "lb", "lb-1.elb", (), redirect)
    secure = replace(_at(listener(100, 0), https_port), protocol="HTTPS", tls=cert)
    balancer.configure([plain, secure], members)
    status, body, version, _ = fetch_https(https_port, cafile, "/")
    assert (status, body, version) == (200, "i-blue", "TLSv1.3")
    forwarded = targets["i-blue"].headers[-1]
    assert (forwarded["X-Forwarded-Proto"], forwarded["X-Forwarded-Port"]) == ("https", str(https_port))
    # TLS 1.2 only with the policy's forward-secret AEAD suites
    status, _, version, cipher = fetch_https(https_port, cafile, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert (status, version) == (200, "TLSv1.2") and cipher in tls.TLS12_FS_AEAD_SHA2
    # a client that does not trust the checkout's CA gets no answer
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch_https(https_port, None)
    # plain HTTP: 301 to the same host, path and query over HTTPS
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    conn.request("GET", "/counter?x=1", headers={"Host": f"127.0.0.1:{http_port}"})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Location")) == (301, f"https://127.0.0.1:{https_port}/counter?x=1")
    conn.close()
    assert next(e for e in balancer.status() if e["port"] == https_port)["protocol"] == "HTTPS"


def test_a_listener_that_cannot_be_served_as_aws_would_is_reported_not_served(
    lb: tuple[Balancer, Registry, dict[str, Target], int], local_ca: tuple[Path, tls.Tls]
) -> None:
    balancer, _, _, port = lb
    _, cert = local_ca
    old_policy = replace(
        _at(listener(100, 0), _free_port()),
        protocol="HTTPS",
        tls=replace(cert, policy="ELBSecurityPolicy-2016-08"),
    )
    missing = replace(
        _at(listener(100, 0), _free_port()), protocol="HTTPS", tls=replace(cert, certificate=b"", key=b"")
    )
    balancer.configure([_at(listener(100, 0), port), old_policy, missing], {BLUE: ("i-blue",)})
    errors = {e["port"]: e["error"] for e in balancer.status() if e["error"]}
    assert (
        "security policy ELBSecurityPolicy-2016-08 is not one the local load balancer knows"
        in errors[old_policy.port]
    )
    assert f"certificate {ARN} is not in the local AWS's ACM" in errors[missing.port]
    assert fetch(port) == (200, "i-blue")


def test_a_redirect_keeps_what_it_does_not_name_and_fills_the_keywords() -> None:
    lst = Listener(8080, "lb", "lb-1.elb", (), Redirect(301))
    request = Request("GET", "/a/b?q=1", {"host": "example.com:8080"})
    assert (
        location(Redirect(301, protocol="HTTPS", port="443"), lst, request)
        == "https://example.com:443/a/b?q=1"
    )
    assert (
        location(Redirect(302, host="www.#{host}", path="/new/#{path}", query="#{query}&v=2"), lst, request)
        == "http://www.example.com:8080/new/a/b?q=1&v=2"
    )
    assert (
        location(Redirect(301, protocol="HTTPS"), lst, Request("GET", "/", {})) == "https://localhost:8080/"
    )
    parsed = action_of([{"Type": "redirect", "RedirectConfig": {"StatusCode": "HTTP_302", "Path": "/x"}}])
    assert dataclasses.astuple(parsed) == (302, "", "", "", "/x", "")


# -- the local AWS's own process: ACM, the stack's listeners, the local load balancer ---------------------


def test_the_local_aws_serves_the_stacks_https_listener_with_the_imported_certificate(aws: Any) -> None:
    """``invoke local.certificate``, then a stack with that certificate in the local AWS: its HTTPS
    listener answers on 127.0.0.1 with a certificate a client verifies against the checkout's CA, and
    its HTTP listener redirects there. (The stand-in image runs no VM: its target is unhealthy, the
    group fails open as an ALB's does, and the answer over TLS is the load balancer's own 502.)"""
    from pipeline.aws import cfn, rollout
    from pipeline.aws.params import Release
    from pipeline.local import control
    from tests.cloud_support import until
    from tests.erlnode import free_port
    from tests.project import invoke

    https_port = free_port()
    sets = [f"local.port={aws.port}", f"deploy.https_port={https_port}"]
    out = invoke(aws.root, "local.certificate", *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 0, out.stderr
    arn = out.stdout.strip()
    assert "certificate for localhost and 127.0.0.1 imported into the local AWS's ACM" in out.stderr
    cafile = aws.root / ".pipeline" / "local" / "ca" / "ca.pem"
    s = aws.settings(f"deploy.https_port={https_port}", f'deploy.certificate_arn="{arn}"')
    clients = aws.clients()
    https.check(clients, s)  # the local ACM holds it, issued, in the region
    image = register_ami(clients, s, "1111111111aa")
    state = rollout.first_state(Release(image, "1111111111aa", "t3.micro", "hvm"), 1)
    cf = clients.cloudformation()
    parameters = probe.with_token(state.parameters(), None)
    stack_id = cfn.create(cf, "erlang-web-dev", stack.render(stack.params_for(s)), parameters, [])
    assert cfn.describe(cf, stack_id).status == "CREATE_COMPLETE"  # type: ignore[union-attr]
    served = until(
        "the HTTPS listener is served",
        lambda: [e for e in (control.status(s) or {}).get("listeners", []) if e["port"] == https_port],
        30,
    )
    assert served[0]["protocol"] == "HTTPS" and not served[0]["error"]
    status, body, version, _ = fetch_https(https_port, cafile)
    assert (status, body, version) == (502, "bad gateway", "TLSv1.3")
    conn = http.client.HTTPConnection("127.0.0.1", s.deploy.listener_port, timeout=10)
    conn.request("GET", "/version", headers={"Host": f"127.0.0.1:{s.deploy.listener_port}"})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Location")) == (301, f"https://127.0.0.1:{https_port}/version")
    conn.close()
    again = invoke(aws.root, "local.certificate", *[a for s in sets for a in ("--set", s)])
    assert (again.returncode, again.stdout.strip()) == (0, arn)
    assert "already in the local AWS's ACM" in again.stderr
