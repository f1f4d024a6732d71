"""Blue/green end to end on the local cloud, as a user runs it: ``invoke build ami deploy`` boots the
uploaded image as a VM behind the local load balancer; a second release moves the traffic with no failed
request while a load loop runs; a release that fails its health check is rolled back by the pipeline;
``invoke rollback`` returns to the previous release.

What the load loops count as failed: every request that got no answer or an answer other than 200.
The local load balancer fails open as an ALB does (a colour whose targets are all unhealthy still gets
its share of the traffic, to those targets), so a colour that broke while it had traffic would show
here as failed requests. "0 failed" rests on the health gate: it gives a colour traffic only once it is
healthy, and a broken release never gets any. The balancer's ``fail_open`` count says how many requests
went to a colour whose targets were all unhealthy: none in a good release or a rollback; in the failed
release only the gate's own probes of the broken colour (through its probe rule), never a user's.

The tests run in order on one project copy and one local AWS (each builds on the state the one before
left), on free ports. The first release boots the exact hvm-uefi disk through OVMF (the shipped
``local.boot``); the others boot the kernel and initramfs taken out of the same disk (faster).
"""

from __future__ import annotations

import json
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

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.sets[0].split('=')[1]}/_pipeline/cloud", timeout=10
        ) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def fail_open(self) -> int:
        """Requests the local load balancer sent to a colour that had no healthy target."""
        return int(self.state()["requests"].get("fail_open", 0))

    def machines(self) -> dict[str, dict[str, Any]]:
        return {m["instance_id"]: m for m in self.state()["machines"]}

    def get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.status, r.read().decode().strip()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = copy_project(tmp_path_factory.mktemp("cloud") / "proj")
    c = Cloud(root, [f"local.port={free_port()}", f"deploy.listener_port={free_port()}"])
    try:
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


def test_1_build_ami_deploy_serves_the_uploaded_image_through_the_local_load_balancer(cloud: Cloud) -> None:
    out = release(cloud)
    assert out.returncode == 0, out.stderr[-3000:]
    cloud.url = out.stdout.strip().splitlines()[-1]
    port = cloud.sets[1].split("=")[1]
    assert cloud.url == f"http://127.0.0.1:{port}"
    build_id = build.plan(cloud.settings()).build_id
    assert cloud.get("/") == (200, V1)
    assert json.loads(cloud.get("/version")[1])["build_id"] == build_id
    (machine,) = cloud.machines().values()
    assert (machine["color"], machine["build_id"], machine["boot"], machine["health"]) == (
        "blue", build_id, "uefi", "healthy"
    )  # fmt: skip
    seconds = cloud.figures["deploy_seconds"]
    print(
        f"\nfirst release: UEFI boot to healthy {machine['boot_seconds']}s, build+ami+deploy {seconds:.0f}s"
    )
    status = cloud.run(["status", *cloud.args()])
    assert status.returncode == 0 and f"http://127.0.0.1:{port}" in status.stderr
    local = cloud.run(["local.status", "--json", *cloud.args()])
    assert local.returncode == 0 and "local cloud: 1 instance(s), uefi boot" in local.stderr
    (listed,) = json.loads(local.stdout)["machines"]
    assert (listed["instance_id"], listed["health"], listed["port"]) == (
        machine["instance_id"],
        "healthy",
        machine["port"],
    )


def test_2_a_new_release_takes_over_with_no_failed_request(cloud: Cloud) -> None:
    before = cloud.machines()
    fail_open = cloud.fail_open()
    with LoadLoop(cloud.url, interval=0.05, max_seconds=600) as loop:
        out = release(cloud, f'app.greeting="{V2}"', "local.boot=direct")
        time.sleep(1)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = report("second release", loop, V1, V2)
    assert loop.failed == [], loop.summary()
    assert cloud.fail_open() == fail_open  # no request went to a colour without a healthy target
    assert loop.bodies() == [V1, V2]  # the old greeting, then the new one, never back
    assert figures["cutover_seconds"] is not None and loop.answers[-1].body == V2
    new_build = build.plan(cloud.settings(f'app.greeting="{V2}"')).build_id
    assert json.loads(cloud.get("/version")[1])["build_id"] == new_build
    (old,) = before
    after = until("the old VM is gone", lambda: old not in cloud.machines() and cloud.machines(), 60)
    assert not alive(before[old]["pid"]) and not qemu_processes(old)
    (new,) = after.values()
    assert (new["color"], new["boot"], new["health"]) == ("green", "direct", "healthy")


def test_3_a_release_that_fails_its_health_check_is_rolled_back_by_the_pipeline(cloud: Cloud) -> None:
    before = cloud.machines()
    fail_open = cloud.fail_open()
    with LoadLoop(cloud.url, interval=0.05, max_seconds=600) as loop:
        out = release(cloud, f'app.greeting="{V3}"', "local.boot=direct", *BROKEN)
        time.sleep(1)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: wait until blue is healthy: blue (build ")
        and "rolled back: green has 100%" in last
    )
    # the VM booted and its app answered, with 503: the storage it was told to use cannot exist
    assert (
        "unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [503])" in out.stderr
    )
    report("failed release", loop, V2, V3)
    # 0 failed: the broken colour never had a weight, so failing open took no user's request there;
    # the gate's probes did reach it (its probe rule has only that colour), as they would on an ALB
    assert loop.failed == [], loop.summary()
    assert cloud.fail_open() > fail_open
    assert loop.bodies() == [V2]
    until("the broken VM is gone", lambda: set(cloud.machines()) == set(before), 60)
    assert set(qemu_processes(str(cloud.root))) == {m["pid"] for m in before.values()}


def test_4_rollback_returns_to_the_previous_release_with_no_failed_request(cloud: Cloud) -> None:
    fail_open = cloud.fail_open()
    with LoadLoop(cloud.url, interval=0.05, max_seconds=600) as loop:
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
