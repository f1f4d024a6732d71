"""Auto scaling on the local cloud, with real VMs and a load loop through the local load balancer: the
live colour's group is scaled out as its scaling alarm would scale it (SetDesiredCapacity on the local
AWS), the local cloud boots a VM for the new instance, and the next deploy starts the new colour at
that size, with no failed request; scaled in again, the local cloud drains the VM it lets go, with no
failed request.

One build only: the second release is the same image on another instance type (``t3.small``), which
is a release of its own (the deploy moves it to the other colour), so the test boots VMs but builds
once. The VMs boot the kernel and initramfs taken out of the uploaded disk (``local.boot=direct``),
four at most (two per colour during the cutover). A failed request is one with no answer or an
answer other than 200.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.aws.session import Clients
from tests.cloud_support import LoadLoop, qemu_processes, until
from tests.erlnode import free_port
from tests.project import copy_project, invoke

pytestmark = pytest.mark.slow

GREETING = "Hello from dev"


@dataclass
class Cloud:
    root: Path
    sets: list[str]
    url: str = ""

    def args(self, *extra: str) -> list[str]:
        return [a for s in (*self.sets, *extra) for a in ("--set", s)]

    def port(self, key: str) -> int:
        return int(next(s for s in self.sets if s.startswith(f"{key}=")).split("=", 1)[1])

    def run(self, *argv: str, timeout: float = 900) -> Any:
        return invoke(self.root, *argv, timeout=timeout)

    def machines(self, color: str | None = None) -> dict[str, dict[str, Any]]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port('local.port')}/_pipeline/cloud", timeout=10
        ) as r:
            found = json.loads(r.read())["machines"]
        return {m["instance_id"]: m for m in found if color is None or m["color"] == color}

    def healthy(self, color: str) -> set[str]:
        return {i for i, m in self.machines(color).items() if m["health"] == "healthy"}

    def status(self) -> dict[str, dict[str, Any]]:
        out = self.run("status", "--json", *self.args())
        assert out.returncode == 0, out.stderr[-2000:]
        return {c["color"]: c for c in json.loads(out.stdout)["colors"]}

    def scale(self, color: str, n: int) -> None:
        """What the colour's scaling alarm does: SetDesiredCapacity on its group."""
        self.api().autoscaling().set_desired_capacity(
            AutoScalingGroupName=self.group(color), DesiredCapacity=n
        )

    def api(self) -> Clients:
        return Clients(region="us-east-1", endpoint_url=f"http://127.0.0.1:{self.port('local.port')}")

    def group(self, color: str) -> str:
        stack = self.api().cloudformation().describe_stacks(StackName="erlang-web-dev")["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        return outputs[f"{color.capitalize()}ServerGroupName"]

    def loop(self) -> LoadLoop:
        return LoadLoop(self.url, interval=0.05, max_seconds=900)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = copy_project(tmp_path_factory.mktemp("scaling") / "proj")
    c = Cloud(
        root,
        [
            f"local.port={free_port()}",
            f"deploy.listener_port={free_port()}",
            "local.boot=direct",
            'deploy.scale_on="requests"',
            "deploy.max_capacity=2",  # local.capacity 1 is the first release's size: bounds 1-2
        ],
    )
    try:
        yield c
    finally:
        down = invoke(root, "local.down", *c.args(), timeout=120)
        assert down.returncode == 0, down.stderr
        assert qemu_processes(str(root)) == {}, "QEMU processes left behind"


def test_the_next_release_starts_at_the_size_the_live_colour_scaled_to_and_scale_in_drains(
    cloud: Cloud,
) -> None:
    out = cloud.run("build", *cloud.args())
    assert out.returncode == 0, out.stderr[-3000:]
    out = cloud.run("ami", *cloud.args())
    assert out.returncode == 0, out.stderr[-3000:]
    out = cloud.run("deploy", "--yes", *cloud.args())
    assert out.returncode == 0, out.stderr[-3000:]
    cloud.url = out.stdout.strip().splitlines()[-1]
    (first,) = cloud.healthy("blue")
    assert cloud.status()["blue"]["scales"] is True

    # blue's alarm: one more instance; the local cloud boots its VM and it joins the traffic
    cloud.scale("blue", 2)
    blue = until(
        "blue's second VM is healthy", lambda: len(cloud.healthy("blue")) == 2 and cloud.healthy("blue"), 300
    )
    assert first in blue
    assert (cloud.status()["blue"]["capacity"], cloud.status()["blue"]["desired"]) == (1, 2)

    # the next release (the same build on another instance type) starts at blue's 2, under load
    with cloud.loop() as loop:
        started = time.monotonic()
        out = cloud.run("deploy", "--yes", *cloud.args("deploy.instance_type=t3.small"))
        took = time.monotonic() - started
        time.sleep(1)
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"\nrelease at the scaled size: {loop.summary()}, deploy {took:.0f}s")
    assert loop.failed == [], loop.summary()
    assert "start 2 instance(s) of build" in out.stderr
    green = until("blue's VMs are gone", lambda: not cloud.machines("blue") and cloud.healthy("green"), 120)
    assert len(green) == 2
    st = cloud.status()
    assert (st["green"]["capacity"], st["green"]["desired"], st["green"]["scales"]) == (2, 2, True)
    assert (st["blue"]["capacity"], st["blue"]["scales"]) == (0, False)

    # green's alarm scales in: the VM it lets go drains (its requests finish) and stops
    with cloud.loop() as loop:
        cloud.scale("green", 1)
        left = until(
            "one green VM is left", lambda: len(cloud.machines("green")) == 1 and cloud.machines("green"), 120
        )
        time.sleep(2)
    print(f"scale-in: {loop.summary()}")
    assert loop.failed == [], loop.summary()
    assert set(left) < green
    assert {a.body for a in loop.answers} == {GREETING}
