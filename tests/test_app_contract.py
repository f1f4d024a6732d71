"""The app's contract with the pipeline is settings: app.port, app.health_path, app.version_path.

They reach the target groups (and through them the local cloud's checks), the deploy's health gate
and ``invoke run --check``; nothing assumes /health or /version, or that the app can say its build.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import config
from pipeline.aws import stack
from pipeline.aws.health import HealthGate, Probe, Subject, Target, assess
from pipeline.aws.tags import Color
from pipeline.local import boot

BUILD = "0123456789abcdef"


def settings(tmp_path: Path, *overrides: str) -> config.Settings:
    (tmp_path / "pipeline.toml").write_text('default_env = "dev"\n[app]\nname = "shop"\n[env.dev]\n')
    return config.load(tmp_path, overrides=overrides)


def test_the_target_groups_check_the_apps_health_path(tmp_path: Path) -> None:
    s = settings(tmp_path, 'app.health_path="/ready"', "app.port=4000")
    template = stack.blueprint(stack.params_for(s)).to_dict()
    groups = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"
    ]
    assert len(groups) == 2
    assert {g["Properties"]["HealthCheckPath"] for g in groups} == {"/ready"}
    assert {g["Properties"]["Port"] for g in groups} == {4000}


class Source:
    """A health source whose targets are healthy and whose app answers ``answers`` (path -> probe)."""

    def __init__(self, answers: dict[str, Probe]) -> None:
        self.answers = answers
        self.probed: list[str] = []

    def targets(self, target_group_arn: str) -> list[Target]:
        return [Target("i-1", "healthy")]

    def probe(self, color: Color, path: str) -> Probe | None:
        self.probed.append(path)
        return self.answers.get(path, Probe(404, "not found"))

    def errors_5xx(self, load_balancer_arn: str, target_group_arn: str, minutes: int) -> int:
        return 0


def subject(health_path: str, version_path: str) -> Subject:
    return Subject("green", "tg", "lb", 1, BUILD, health_path=health_path, version_path=version_path)


def test_the_gate_probes_the_apps_paths_and_reads_a_build_id_in_any_answer() -> None:
    src = Source({"/ready": Probe(200, "ok"), "/about": Probe(200, f"shop 1.2 build {BUILD}\n")})
    verdict = HealthGate(src, lambda s: None, lambda: 0.0).check(subject("/ready", "/about"))
    assert verdict.healthy, verdict.detail
    assert src.probed == ["/ready", "/about"]
    assert "/about build 0123456789abcdef" in verdict.detail


def test_without_a_version_path_the_gate_relies_on_target_health_and_says_so() -> None:
    src = Source({"/ready": Probe(200, "ok")})
    verdict = HealthGate(src, lambda s: None, lambda: 0.0).check(subject("/ready", ""))
    assert verdict.healthy
    assert src.probed == ["/ready"]  # never a /version the app does not have
    assert "build not checked (no app.version_path): relying on target health" in verdict.detail


def test_a_version_answer_that_names_another_build_fails_the_gate() -> None:
    old = assess([Target("i-1", "healthy")], 1, Probe(200, ""), Probe(200, "build 1111"), BUILD, "/r", "/v")
    assert not old.healthy and "/v build ?" in old.detail


# -- invoke run --check ----------------------------------------------------------------------------


@pytest.fixture
def app_server() -> Iterator[int]:
    """An HTTP server answering /ready and /about (with the build id), nothing else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = {"/ready": b"ok", "/about": f"build {BUILD}".encode()}.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_run_check_asks_the_app_only_what_the_settings_say(tmp_path: Path, app_server: int) -> None:
    console = tmp_path / "console.log"
    console.write_text("[    2.1] init: scratch: /dev/vda mounted on /data\r\n")
    s = settings(tmp_path, 'app.health_path="/ready"', 'app.version_path="/about"', 'app.scratch_dir="/data"')
    checks = boot.smoke_test(app_server, s, BUILD, console)
    assert [(c.name, c.ok) for c in checks] == [
        ("GET /ready", True),
        ("GET /about", True),
        ("scratch disk", True),
    ]
    s = settings(tmp_path, 'app.health_path="/ready"', 'app.version_path=""', 'app.scratch_dir="/data"')
    assert all(c.ok for c in boot.smoke_test(app_server, s, BUILD, console))
    s = settings(tmp_path, 'app.health_path="/health"')  # an app that does not answer this
    failed = [c.name for c in boot.smoke_test(app_server, s, BUILD, console) if not c.ok]
    assert failed == ["GET /health", "GET /version", "scratch disk"]


def test_the_consoles_last_lines_fit_in_one_error_line(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\n\x1b[0;31mcrash: {undef, [{shop_app, start, 2}]}\x1b[0m\r\n\nhalted\n")
    assert boot.console_tail(console) == "boot | crash: {undef, [{shop_app, start, 2}]} | halted"
