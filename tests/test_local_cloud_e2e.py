"""Blue/green end to end on the local cloud, as a user runs it: ``invoke build ami deploy`` boots the
uploaded image as a VM behind the local load balancer, served over HTTPS with the certificate that
``invoke local.certificate`` put in the local AWS's ACM; ``invoke logs`` shows the VM's console; a
second release moves the traffic with no failed request while a load loop runs; a release that fails
its health check is rolled back by the pipeline, after its console is shown; ``invoke rollback``
returns to the previous release.

The releases build on each other (a rollback needs two of them), so they are module-scoped fixtures,
each one made once, on first use, by the tests that need it: every test passes on its own
(``pytest -k rollback`` makes the two releases it returns between) as well as in a full run, and no
test depends on another having run before it. The first release boots the exact hvm-uefi disk
through OVMF (the shipped ``local.boot``); the others boot the kernel and initramfs taken out of the
same disk (faster).

What the load loops count as failed: every request that got no answer or an answer other than 200.
The local load balancer fails open as an ALB does (a colour whose targets are all unhealthy still gets
its share of the traffic, to those targets), so a colour that broke while it had traffic would show
here as failed requests. "0 failed" rests on the health gate: it gives a colour traffic only once it is
healthy, and a broken release never gets any. The balancer's ``fail_open`` count says how many requests
went to a colour whose targets were all unhealthy: none in a good release or a rollback; in the failed
release only the gate's own probes of the broken colour (through its probe rule), never a user's.

"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline import build, config
from tests.cloud_support import LoadLoop, alive, qemu_processes, until
from tests.erlnode import free_port
from tests.project import copy_project, invoke

pytestmark = pytest.mark.slow

V1, V2, V3 = "Hello from dev", "Hello again from dev", "Hello from a broken build"
BROKEN = ["app.storage=disc", "app.scratch_dir=/proc/no-such-dir", "deploy.health_timeout_seconds=60"]


@dataclass
class Cloud:
    root: Path
    sets: list[str]
    url: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def args(self, *extra: str) -> list[str]:
        return [a for s in (*self.sets, *extra) for a in ("--set", s)]

    def run(self, *tasks: list[str], timeout: float = 900) -> Any:
        argv = [a for t in tasks for a in t]
        out = invoke(self.root, *argv, timeout=timeout)
        return out

    def settings(self, *extra: str) -> config.Settings:
        return config.load(self.root, env="dev", overrides=[*self.sets, *extra])

    def port(self, key: str) -> int:
        return int(next(s for s in self.sets if s.startswith(f"{key}=")).split("=", 1)[1])

    @property
    def cafile(self) -> str:
        return str(self.root / ".pipeline" / "local" / "ca" / "ca.pem")

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port('local.port')}/_pipeline/cloud", timeout=10
        ) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def fail_open(self) -> int:
        """Requests the local load balancer sent to a colour that had no healthy target."""
        return int(self.state()["requests"].get("fail_open", 0))

    def machines(self) -> dict[str, dict[str, Any]]:
        return {m["instance_id"]: m for m in self.state()["machines"]}

    def get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=self.cafile)
        with urllib.request.urlopen(self.url + path, timeout=10, context=context) as r:
            return r.status, r.read().decode().strip()

    def loop(self) -> LoadLoop:
        return LoadLoop(self.url, interval=0.05, max_seconds=600, cafile=self.cafile)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """A project copy with its own local AWS and listener ports, and a certificate for 127.0.0.1 in
    that local AWS's ACM (deploys serve HTTPS with it)."""
    root = copy_project(tmp_path_factory.mktemp("cloud") / "proj")
    c = Cloud(
        root,
        [
            f"local.port={free_port()}",
            f"deploy.listener_port={free_port()}",
            f"deploy.https_port={free_port()}",
        ],
    )
    try:
        issued = c.run(["local.certificate", *c.args()])
        assert issued.returncode == 0, issued.stderr
        c.sets.append(f'deploy.certificate_arn="{issued.stdout.strip()}"')
        yield c
    finally:
        down = invoke(root, "local.down", *c.args(), timeout=120)
        assert down.returncode == 0, down.stderr
        left = {pid: line for pid, line in qemu_processes(str(root)).items()}
        assert left == {}, f"QEMU processes left behind: {left}"


def release(c: Cloud, *extra: str, loop: LoadLoop | None = None) -> Any:
    """``invoke build ami deploy --yes`` with ``extra`` settings on every task."""
    args = c.args(*extra)
    started = time.monotonic()
    out = c.run(["build", *args], ["ami", *args], ["deploy", "--yes", *args])
    c.figures["deploy_seconds"] = time.monotonic() - started
    return out


def report(name: str, loop: LoadLoop, old: str, new: str) -> dict[str, Any]:
    window = loop.window(old, new)
    figures = {
        "requests": loop.sent,
        "failed": len(loop.failed),
        # from the first answer of the new release to the last of the old one (0: a flip)
        "cutover_seconds": round(max(0.0, window[1] - window[0]), 1) if window else None,
    }
    print(f"\n{name}: {figures}")
    return figures


@dataclass(frozen=True)
class Step:
    """What one release (or rollback) did: the task's output, the load loop that ran meanwhile and
    the VMs before it."""

    out: Any
    loop: LoadLoop | None
    before: dict[str, dict[str, Any]]
    fail_open: int = 0  # requests the balancer sent to a colour without a healthy target, during it


@pytest.fixture(scope="module")
def first(cloud: Cloud) -> Step:
    """V1 live on blue (the first deploy creates the stack)."""
    out = release(cloud)
    assert out.returncode == 0, out.stderr[-3000:]
    cloud.url = out.stdout.strip().splitlines()[-1]
    return Step(out, None, {})


@pytest.fixture(scope="module")
def second(cloud: Cloud, first: Step) -> Step:
    """V2 rolled out to green while a load loop runs; V1 stays on blue for a rollback."""
    before = cloud.machines()
    fail_open = cloud.fail_open()
    with cloud.loop() as loop:
        out = release(cloud, f'app.config.greeting="{V2}"', "local.boot=direct")
        time.sleep(1)
    assert out.returncode == 0, out.stderr[-3000:]
    return Step(out, loop, before, cloud.fail_open() - fail_open)


def test_1_build_ami_deploy_serves_the_uploaded_image_over_https_through_the_local_load_balancer(
    cloud: Cloud, first: Step
) -> None:
    https_port, http_port = cloud.port("deploy.https_port"), cloud.port("deploy.listener_port")
    assert cloud.url == f"https://127.0.0.1:{https_port}"
    build_id = build.plan(cloud.settings()).build_id
    assert cloud.get("/") == (200, V1)  # verified against the checkout's CA
    assert json.loads(cloud.get("/version")[1])["build_id"] == build_id
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    conn.request("GET", "/version?x=1")
    answer = conn.getresponse()
    assert (answer.status, answer.getheader("Location")) == (
        301,
        f"https://127.0.0.1:{https_port}/version?x=1",
    )
    conn.close()
    (machine,) = cloud.machines().values()
    assert (machine["color"], machine["build_id"], machine["boot"], machine["health"]) == (
        "blue", build_id, "uefi", "healthy"
    )  # fmt: skip
    seconds = cloud.figures["deploy_seconds"]
    print(
        f"\nfirst release: UEFI boot to healthy {machine['boot_seconds']}s, build+ami+deploy {seconds:.0f}s"
    )
    status = cloud.run(["status", *cloud.args()])
    assert status.returncode == 0 and f"https://127.0.0.1:{https_port}" in status.stderr
    local = cloud.run(["local.status", "--json", *cloud.args()])
    assert local.returncode == 0 and "local cloud: 1 instance(s), uefi boot" in local.stderr
    assert f"https://127.0.0.1:{https_port}" in local.stderr
    (listed,) = json.loads(local.stdout)["machines"]
    assert (listed["instance_id"], listed["health"], listed["port"]) == (
        machine["instance_id"],
        "healthy",
        machine["port"],
    )


def test_logs_show_the_live_colours_console_line_by_line(cloud: Cloud, first: Step) -> None:
    """``invoke logs``: the VM's real serial console through GetConsoleOutput of the local AWS."""
    live = next(m for m in cloud.machines().values() if m["health"] == "healthy")
    instance, color = live["instance_id"], live["color"]
    out = cloud.run(["logs", "--tail", "200", *cloud.args()])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(line.startswith(f"{instance} {color} | ") for line in lines)
    text = "\n".join(line.split(" | ", 1)[1] for line in lines)
    assert re.search(r"^\[\d+\.\d+\] init: starting the Erlang VM$", text, re.MULTILINE)
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z notice: erlang_web: started \(build ", text, re.M
    )
    tail = cloud.run(["logs", "--tail", "3", "--colour", color, *cloud.args()])
    assert tail.returncode == 0, tail.stderr
    last = tail.stdout.splitlines()
    # The console goes on (each health check of a starting colour may add a line), so the last three
    # lines are those of a full read taken just after, three in a row, not those of the read before.
    after = cloud.run(["logs", "--tail", "200", *cloud.args()]).stdout.splitlines()
    assert len(last) == 3 and any(after[i : i + 3] == last for i in range(len(after) - 2)), (last, after)


def test_2_a_new_release_takes_over_with_no_failed_request(cloud: Cloud, second: Step) -> None:
    loop, before = second.loop, second.before
    assert loop is not None
    figures = report("second release", loop, V1, V2)
    assert loop.failed == [], loop.summary()
    assert second.fail_open == 0  # no request went to a colour without a healthy target
    assert loop.bodies() == [V1, V2]  # the old greeting, then the new one, never back
    assert figures["cutover_seconds"] is not None and loop.answers[-1].body == V2
    new_build = build.plan(cloud.settings(f'app.config.greeting="{V2}"')).build_id
    assert json.loads(cloud.get("/version")[1])["build_id"] == new_build
    (old,) = before
    after = until("the old VM is gone", lambda: old not in cloud.machines() and cloud.machines(), 60)
    assert not alive(before[old]["pid"]) and not qemu_processes(old)
    (new,) = after.values()
    assert (new["color"], new["boot"], new["health"]) == ("green", "direct", "healthy")


def test_3_a_release_that_fails_its_health_check_is_rolled_back_by_the_pipeline(
    cloud: Cloud, second: Step
) -> None:
    before = cloud.machines()
    with cloud.loop() as loop:
        out = release(cloud, f'app.config.greeting="{V3}"', "local.boot=direct", *BROKEN)
        time.sleep(1)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    live = next(m["color"] for m in before.values())
    idle = "blue" if live == "green" else "green"
    assert (
        last.startswith(f"error: wait until {idle} is healthy: {idle} (build ")
        and f"rolled back: {live} has 100%" in last
    )
    # the VM booted and its app answered, with 503: the storage it was told to use cannot exist
    assert (
        "unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [503])" in out.stderr
    )
    # its console, shown before the rollback: the app's own line says why
    shown = out.stderr.index("console lines of ")
    assert shown < out.stderr.index("stack update: roll back")
    assert re.search(
        f"{idle} \\| .*Z warning: erlang_web: GET /health answered 503: .*storage_failed", out.stderr
    )
    report("failed release", loop, V2, V3)
    # 0 failed: the broken colour never had a weight, so failing open took no user's request there
    # (only the gate's own probes of it, through its probe rule, may have been sent there)
    assert loop.failed == [], loop.summary()
    assert loop.bodies() == [V2]
    until("the broken VM is gone", lambda: set(cloud.machines()) == set(before), 60)
    assert set(qemu_processes(str(cloud.root))) == {m["pid"] for m in before.values()}


def test_4_rollback_returns_to_the_previous_release_with_no_failed_request(
    cloud: Cloud, second: Step
) -> None:
    fail_open = cloud.fail_open()
    with cloud.loop() as loop:
        out = cloud.run(["rollback", "--yes", *cloud.args("local.boot=direct")])
        time.sleep(1)
    assert out.returncode == 0, out.stderr[-3000:]
    report("rollback", loop, V2, V1)
    assert loop.failed == [], loop.summary()
    assert cloud.fail_open() == fail_open
    assert loop.bodies() == [V2, V1]
    left = until(
        "the newer release's VM is gone", lambda: len(cloud.machines()) == 1 and cloud.machines(), 60
    )
    (machine,) = left.values()
    assert (machine["color"], machine["health"]) == ("blue", "healthy")
