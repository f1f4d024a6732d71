"""Kill anywhere, lose nothing: real ``invoke`` processes on the local cloud (real VMs, the local load
balancer, a load loop through it the whole time), killed with SIGKILL at each step of a deploy and of
a rollback, and stopped with SIGTERM (what a CI system sends when it cancels a job).

After every kill ``invoke status`` is consistent (it shows which colour has the traffic and marks a
release that never went live), the next ``invoke deploy`` resumes where the killed one stopped (a kill
during the final bake or the retention included: the re-run finishes the scale-down), ``invoke
rollback`` returns to the last live release (never to a build that never took traffic) and resumes
when killed itself, an automatic rollback is followed by a manual one, and no request fails.

The steps run in order on one project copy, one local AWS and one set of builds (made once by the
module fixture); each step starts from the state the one before left. VMs boot the kernel and
initramfs taken out of the uploaded disk (``local.boot=direct``), which is faster under emulation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline import build, config
from tests.cloud_support import LoadLoop, qemu_processes
from tests.erlnode import free_port
from tests.project import REPO, copy_project, invoke

pytestmark = pytest.mark.slow

V1, V2, V3 = "Hello from dev", "Hello again from dev", "A third release"
V4 = "A release that cannot start"
BROKEN = ["app.storage=disc", "app.scratch_dir=/proc/no-such-dir"]
# Short bakes and a retention long enough to be killed in.
TIMING = ["local.boot=direct", "deploy.bake_seconds=2", "deploy.retention_seconds=10"]


@dataclass
class Killed:
    returncode: int
    stderr: str
    signalled: bool  # False: the process ended before the line it was to be killed at


@dataclass
class Cloud:
    root: Path
    sets: list[str]
    builds: dict[str, str] = field(default_factory=dict)  # greeting -> build id
    url: str = ""

    def args(self, *extra: str) -> list[str]:
        return [a for s in (*self.sets, *TIMING, *extra) for a in ("--set", s)]

    def run(self, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return invoke(self.root, *argv, timeout=timeout)

    def kill_at(self, line: str, *argv: str, sig: int = signal.SIGKILL, timeout: float = 900) -> Killed:
        """Run ``invoke ARGV`` and send ``sig`` the moment its output shows a line starting with ``line``
        (the step being carried out; the plan's table lists the same steps inside its borders)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "--search-root", str(REPO), *argv],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[str] = []
        signalled = threading.Event()

        def watch() -> None:
            assert proc.stderr is not None
            for text in proc.stderr:
                seen.append(text)
                if text.startswith(line) and not signalled.is_set():
                    signalled.set()
                    os.kill(proc.pid, sig)

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        code = proc.wait(timeout=timeout)
        reader.join(timeout=30)
        return Killed(code, "".join(seen), signalled.is_set())

    def status(self) -> dict[str, Any]:
        out = self.run("status", "--json", *self.args())
        assert out.returncode == 0, out.stderr[-2000:]
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def colours(self) -> dict[str, tuple[int, int, bool, str]]:
        """colour -> (weight, capacity, went live, build)"""
        st = self.status()
        return {c["color"]: (c["weight"], c["capacity"], c["was_live"], c["build_id"]) for c in st["colors"]}

    def history(self) -> list[tuple[str, str, str]]:
        out = self.run("history", "--json", *self.args())
        assert out.returncode == 0, out.stderr[-2000:]
        return [
            (r["kind"], r["build_id"], r["outcome"]) for r in reversed(json.loads(out.stdout)["releases"])
        ]

    def deploy(self, greeting: str, *extra: str) -> list[str]:
        return ["deploy", "--yes", "--build-id", self.builds[greeting], *self.args(*extra)]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = copy_project(tmp_path_factory.mktemp("kill") / "proj")
    c = Cloud(root, [f"local.port={free_port()}", f"deploy.listener_port={free_port()}"])
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"  # rich wraps what the tasks print at the terminal's width
    try:
        for greeting, extra in ((V1, []), (V2, []), (V3, []), (V4, BROKEN)):
            sets = [f'app.config.greeting="{greeting}"', *extra]
            out = c.run("build", *c.args(*sets), "ami", *c.args(*sets))
            assert out.returncode == 0, out.stderr[-3000:]
            s = config.load(root, env="dev", overrides=[*c.sets, *TIMING, *sets])
            c.builds[greeting] = build.plan(s).build_id
        first = c.run(*c.deploy(V1))
        assert first.returncode == 0, first.stderr[-3000:]
        c.url = first.stdout.strip().splitlines()[-1]
        yield c
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
        down = invoke(root, "local.down", *c.args(), timeout=120)
        assert down.returncode == 0, down.stderr
        assert qemu_processes(str(root)) == {}


def serving(loop: LoadLoop, *bodies: str) -> None:
    assert loop.failed == [], loop.summary()
    assert set(loop.bodies()) <= set(bodies), loop.bodies()


def test_1_a_deploy_killed_at_each_step_is_resumed_by_the_next_one_with_no_failed_request(
    cloud: Cloud,
) -> None:
    v1, v2 = cloud.builds[V1], cloud.builds[V2]
    with LoadLoop(cloud.url, interval=0.05, max_seconds=1200) as loop:
        # the first stack update is being sent: either it happened or not; status says which
        k = cloud.kill_at("stack update: start", *cloud.deploy(V2))
        assert k.signalled and k.returncode == -signal.SIGKILL
        state = cloud.colours()
        assert state["blue"][:3] == (100, 1, True) and state["blue"][3] == v1
        assert state["green"][0] == 0 and (state["green"][3] == v1 or not state["green"][2])
        # green starts, then takes 10%: killed there, the traffic is split
        k = cloud.kill_at("bake green at 10%", *cloud.deploy(V2))
        assert k.signalled
        state = cloud.colours()
        assert (state["blue"][0], state["green"][0], state["green"][2:]) == (90, 10, (False, v2))
        # each re-run resumes (no new release, no going back), and is killed one step further
        for at, weights in (("bake green at 50%", (50, 50)), ("bake green at 100%", (0, 100))):
            k = cloud.kill_at(at, *cloud.deploy(V2))
            assert k.signalled, k.stderr[-2000:]
            assert "resuming the deploy of build" in k.stderr
            state = cloud.colours()
            assert (state["blue"][0], state["green"][0]) == weights
        assert state["green"][2] is False  # all the traffic, but its bake never finished: not live
        # the re-run bakes again, records it live, and is killed in the retention: blue still runs
        k = cloud.kill_at("keep blue running", *cloud.deploy(V2))
        assert k.signalled
        state = cloud.colours()
        assert state["green"][:3] == (100, 1, True) and state["blue"][:2] == (0, 1)
        # not "nothing to do": the re-run finishes the retention and scales blue down
        out = cloud.run(*cloud.deploy(V2))
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"build {v2} is live on green; blue is scaled down" in out.stderr
        assert cloud.colours()["blue"][:2] == (0, 0)
        again = cloud.run(*cloud.deploy(V2))
        assert "is already live on green: nothing to do" in again.stderr
        time.sleep(1)
    print(f"\ndeploy killed five times: {loop.summary()}")
    serving(loop, V1, V2)
    assert loop.bodies() == [V1, V2]
    assert cloud.history() == [("deploy", v1, "baked"), ("deploy", v2, "baked")]


def test_2_an_automatic_rollback_followed_by_invoke_rollback_returns_to_the_last_live_release(
    cloud: Cloud,
) -> None:
    v1, v4 = cloud.builds[V1], cloud.builds[V4]
    with LoadLoop(cloud.url, interval=0.05, max_seconds=1200) as loop:
        out = cloud.run(*cloud.deploy(V4, "deploy.health_timeout_seconds=40"))
        assert out.returncode == 1
        assert "rolled back: green has 100% of the traffic" in last_line(out.stderr)
        # blue went back to the release it had (v1, no instances); the failed one is in the history
        assert cloud.colours()["blue"][:2] == (0, 0)
        back = cloud.run("rollback", "--yes", *cloud.args())
        assert back.returncode == 0, back.stderr[-3000:]
        assert f"rolled back: build {v1} is live on blue" in back.stderr
        time.sleep(1)
    print(f"\nautomatic rollback, then invoke rollback: {loop.summary()}")
    serving(loop, V1, V2)
    assert loop.bodies() == [V2, V1]  # never the release that failed
    assert [h[1:] for h in cloud.history()[-2:]] == [(v4, "rolled back"), (v1, "baked")]


def test_3_rollback_after_a_killed_deploy_returns_to_a_live_release_putting_its_ami_back(
    cloud: Cloud,
) -> None:
    """The case that started it: a deploy killed while the idle colour starts a build that never took
    traffic. invoke rollback must not give that build the traffic."""
    v2, v3 = cloud.builds[V2], cloud.builds[V3]
    with LoadLoop(cloud.url, interval=0.05, max_seconds=1200) as loop:
        k = cloud.kill_at("wait until green is healthy", *cloud.deploy(V3))
        assert k.signalled
        state = cloud.colours()
        assert state["blue"][:3] == (100, 1, True) and state["green"][1:] == (1, False, v3)
        # v2 was rolled back by hand, v3 never went live: no default target; one line says so
        nowhere = cloud.run("rollback", "--yes", *cloud.args())
        assert nowhere.returncode == 1
        assert "there is no earlier live release to return to" in last_line(nowhere.stderr)
        # to v2 by its build: its AMI goes back on green (v3's instance first goes); killed in the bake
        k = cloud.kill_at("bake green at 100%", "rollback", "--yes", "--to", v2[:10], *cloud.args())
        assert k.signalled, k.stderr[-2000:]
        assert "green holds build" in k.stderr
        state = cloud.colours()
        assert (state["green"][0], state["green"][3]) == (100, v2)
        # the next rollback resumes it and scales blue down after its connections drained
        out = cloud.run("rollback", "--yes", *cloud.args())
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resuming the rollback" in out.stderr
        time.sleep(1)
    print(f"\nrollback after a killed deploy, itself killed and resumed: {loop.summary()}")
    serving(loop, V1, V2)
    assert V3 not in loop.bodies()
    state = cloud.colours()
    assert state["green"][:3] == (100, 1, True) and state["blue"][:2] == (0, 0)
    assert [h[1:] for h in cloud.history()[-2:]] == [(v3, "interrupted"), (v2, "baked")]


def test_4_sigterm_during_a_deploy_rolls_back_like_ctrl_c(cloud: Cloud) -> None:
    with LoadLoop(cloud.url, interval=0.05, max_seconds=1200) as loop:
        k = cloud.kill_at("bake blue at 10%", *cloud.deploy(V3), sig=signal.SIGTERM)
        assert k.signalled and k.returncode == 1
        assert "interrupted (Ctrl-C or SIGTERM); rolled back: green has 100% of the traffic" in last_line(
            k.stderr
        )
        time.sleep(1)
    print(f"\nSIGTERM during a deploy: {loop.summary()}")
    serving(loop, V2, V3)
    state = cloud.colours()
    assert (state["green"][0], state["blue"][:2]) == (100, (0, 0))  # not left split
    plan = cloud.run(*cloud.deploy(V3), "--dry-run")  # and the next deploy is not blocked
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert cloud.history()[-1][1:] == (cloud.builds[V3], "interrupted")
