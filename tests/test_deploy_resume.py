"""Deploys and rollbacks stopped anywhere, against in-process moto: a kill (the process gone, no
chance to roll back) at each step, then what the next command does; the history that decides it;
rollback to the last live release (its AMI put back when the idle colour holds another); and a failed
update that stopped half-way, undone from the stack's previous parameters.

A kill is the exception :class:`Killed`, raised where the pipeline prints a step's line: like
SIGKILL, nothing in the pipeline catches it. (The same with real processes and real VMs:
tests/test_local_cloud_kill.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from awstest import FakeClock, Recorder

from pipeline import config, ui
from pipeline.aws import deploy, history, rollback
from pipeline.aws import status as stack_status
from pipeline.aws.colors import DEREGISTRATION_DELAY
from pipeline.aws.deploy import Runtime
from pipeline.config import Settings
from pipeline.errors import DeployError
from tests.deploy_support import TargetHealth, make_clients
from tests.test_deploy import B1, B2, B3, OVERRIDES, REPO, RETENTION, STACK, World, colors, stack_outputs

T0 = 1_800_000_000.0


class Killed(BaseException):
    """The process is gone (SIGKILL): not an Exception, not a KeyboardInterrupt, so nothing handles it."""


class Kill:
    """Raises :class:`Killed` the first time the pipeline prints a line starting with ``at``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at: str | None = None
        self.seen: list[str] = []
        original = ui.say

        def say(message: str) -> None:
            self.seen.append(message)
            if self.at is not None and message.startswith(self.at):
                self.at = None
                raise Killed(message)
            original(message)

        monkeypatch.setattr(ui, "say", say)

    def when(self, at: str) -> None:
        self.at = at


class Clock(FakeClock):
    def wall(self) -> float:
        return T0 + self.now


class Resumable(World):
    clock: Clock

    def runtime(self, answer: bool = True) -> Runtime:
        rt = super().runtime(answer)
        rt.now = self.clock.wall
        return rt

    def rollback(self, to: str | None = None, settings: Settings | None = None) -> deploy.Outcome:
        return rollback.rollback(settings or self.settings, self.clients, self.runtime(), to)

    def entries(self) -> list[tuple[str, str, str]]:
        """(kind, build, outcome) of each history entry, oldest first."""
        return [(e.kind, e.release.build_id, e.outcome) for e in history.decode(self.params()["History"])]

    def status(self) -> dict[str, tuple[int, bool]]:
        st = stack_status.status(self.settings, self.clients)
        assert st is not None
        return {c.color: (c.weight, c.was_live) for c in st.colors}


@pytest.fixture
def w(aws_in_process: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Resumable]:
    rec = Recorder()
    yield Resumable(
        config.load(REPO, env="dev", overrides=OVERRIDES),
        make_clients(rec),
        rec,
        Clock(),
        TargetHealth(monkeypatch),
    )


@pytest.fixture
def kill(monkeypatch: pytest.MonkeyPatch) -> Kill:
    return Kill(monkeypatch)


def two_live(w: Resumable) -> tuple[str, str, str]:
    """v1 went live on blue, then v2 on green; v3's AMI is registered."""
    v1, v2, v3 = w.ami(B1), w.ami(B2), w.ami(B3)
    w.deploy(B1)
    w.deploy(B2)
    return v1, v2, v3


# -- the case that started it: rollback after a deploy killed while the idle colour started -----------


def test_rollback_after_a_killed_deploy_returns_to_the_last_live_release_not_the_untested_one(
    w: Resumable, kill: Kill, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2, v3 = two_live(w)
    kill.when("wait until blue is healthy")
    with pytest.raises(Killed):
        w.deploy(B3)
    # status: green (v2) has all the traffic; blue holds v3, which never went live
    assert colors(w.params()) == {"blue": (v3, "1", "0"), "green": (v2, "1", "100")}
    assert w.status() == {"blue": (0, False), "green": (100, True)}
    monkeypatch.setattr(ui.console, "width", 200)
    st = stack_status.status(w.settings, w.clients)
    stack_status.show_status(st, STACK)
    assert "blue (never live)" in capsys.readouterr().err
    # rollback: v1, the release live before v2, goes back on blue, then gets the traffic
    mark = w.rec.mark()
    out = w.rollback()
    assert (out.action, out.live, out.build_id, out.image_id) == ("rolled back", "blue", B1, v1)
    assert [colors(p) for p in w.rec.stack_parameter_sets(mark)] == [
        {"blue": (v3, "0", "0"), "green": (v2, "1", "100")},  # v3's instances go first
        {"blue": (v1, "1", "0"), "green": (v2, "1", "100")},  # v1's AMI back on blue
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},
        {"blue": (v1, "1", "100"), "green": (v2, "1", "0")},  # recorded live
        {"blue": (v1, "1", "100"), "green": (v2, "0", "0")},
    ]
    assert w.entries() == [
        ("deploy", B1, "baked"),
        ("deploy", B2, "rolled back by hand"),
        ("deploy", B3, "interrupted"),
        ("rollback", B1, "baked"),
    ]
    # and a second rollback has nowhere to go: v2 was rolled back by hand, v3 never went live
    with pytest.raises(DeployError, match="no earlier live release to return to"):
        w.rollback()
    with pytest.raises(DeployError, match="build 3333333333cc was never live"):
        w.rollback(to=B3[:6])


def test_a_rollback_to_a_build_whose_ami_is_gone_is_refused_naming_the_build(w: Resumable) -> None:
    v1, _v2, v3 = two_live(w)
    w.deploy(B3)  # v3 live on blue; v1's AMI would have to go back on green
    w.clients.ec2().deregister_image(ImageId=v1)
    before = w.params()
    mark = w.rec.mark()
    with pytest.raises(DeployError) as err:
        w.rollback(to=B1)
    assert str(err.value) == (
        f"cannot return to build {B1}: its AMI {v1} in us-east-1 is gone (hint: invoke history "
        "lists the other releases (invoke rollback --to BUILD); or rebuild it: invoke build ami deploy "
        "with that build's settings)"
    )
    assert [c for c in w.rec.since(mark) if c.mutating] == [] and w.params() == before
    # to the release before v3 (v2, which green still holds): no AMI has to move
    assert w.rollback().image_id == _v2 and colors(w.params())["green"][2] == "100"
    assert colors(w.params())["blue"] == (v3, "0", "0")


def test_rollback_to_a_build_puts_its_ami_back_on_the_idle_colour(w: Resumable) -> None:
    v1, _v2, v3 = two_live(w)
    w.deploy(B3)  # blue v3 live, green v2 idle
    mark = w.rec.mark()
    assert w.rollback(to=B1).live == "green"
    sent = [colors(p) for p in w.rec.stack_parameter_sets(mark)]
    assert sent[0] == {"blue": (v3, "1", "100"), "green": (v1, "1", "0")}
    assert sent[-1] == {"blue": (v3, "0", "0"), "green": (v1, "1", "100")}
    assert w.entries()[-1] == ("rollback", B1, "baked")


# -- a deploy killed at each step is resumed by the next deploy ---------------------------------------


@pytest.mark.parametrize(
    ("at", "left"),
    [
        ("stack update: start", ("1", "100", "0", "0")),  # about to send the first update: green v1
        ("wait until green is healthy", ("1", "100", "1", "0")),
        ("bake green at 10%", ("1", "90", "1", "10")),
        ("bake green at 50%", ("1", "50", "1", "50")),
        ("bake green at 100%", ("1", "0", "1", "100")),
    ],
)
def test_a_deploy_killed_before_it_went_live_is_resumed_by_the_next_deploy(
    w: Resumable, kill: Kill, at: str, left: tuple[str, str, str, str]
) -> None:
    v1, v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    kill.when(at)
    with pytest.raises(Killed):
        w.deploy(B2)
    p = w.params()
    assert (p["BlueCapacity"], p["BlueWeight"], p["GreenCapacity"], p["GreenWeight"]) == left
    assert w.status()["green"][1] is (at == "stack update: start")  # v2 never live; v1 was
    if at == "bake green at 100%":  # all the traffic, bake not over: not live, so not "nothing to do"
        assert w.status()["green"] == (100, False)
    mark = w.rec.mark()
    out = w.deploy(B2)
    assert (out.action, out.live) == ("released", "green")
    sent = [colors(q) for q in w.rec.stack_parameter_sets(mark)]
    assert sent[-1] == {"blue": (v1, "0", "0"), "green": (v2, "1", "100")}
    reached = int(left[3])
    assert all(int(s["green"][2]) >= reached for s in sent)  # never backwards
    if reached:
        assert f"bake green at {reached}%" in " ".join(s for s in kill.seen[-20:])
    # one entry for the release, resumed (or, killed before any update, started by the re-run)
    assert w.entries() == [("deploy", B1, "baked"), ("deploy", B2, "baked")]
    assert w.deploy(B2).action == "unchanged"


def test_a_deploy_killed_during_the_retention_is_finished_by_the_next_deploy(
    w: Resumable, kill: Kill
) -> None:
    v1, v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    kill.when("keep blue running")
    with pytest.raises(Killed):
        w.deploy(B2)
    assert colors(w.params()) == {"blue": (v1, "1", "0"), "green": (v2, "1", "100")}
    assert w.status() == {"blue": (0, True), "green": (100, True)}  # v2 went live
    w.clock.now += 100  # 100 s of the retention passed before the re-run
    mark, started = w.rec.mark(), w.clock.now
    out = w.deploy(B2)
    assert out.action == "finished"
    assert [colors(p) for p in w.rec.stack_parameter_sets(mark)] == [
        {"blue": (v1, "0", "0"), "green": (v2, "1", "100")}
    ]
    assert RETENTION - 100 <= w.clock.now - started < RETENTION  # only what was left of it
    assert w.deploy(B2).action == "unchanged"


def test_a_killed_rollback_is_resumed_by_the_next_rollback(w: Resumable, kill: Kill) -> None:
    v1, v2, _v3 = two_live(w)
    kill.when("bake blue at 100%")
    with pytest.raises(Killed):
        w.rollback()
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v2, "1", "0")}
    mark = w.rec.mark()
    out = w.rollback()
    assert (out.live, out.build_id) == ("blue", B1)
    assert [colors(p) for p in w.rec.stack_parameter_sets(mark)][-1] == {
        "blue": (v1, "1", "100"),
        "green": (v2, "0", "0"),
    }
    assert w.entries() == [
        ("deploy", B1, "baked"),
        ("deploy", B2, "rolled back by hand"),
        ("rollback", B1, "baked"),
    ]


# -- never live is never taken for live ------------------------------------------------------------


def test_a_first_release_that_failed_its_health_gate_is_not_taken_for_live(w: Resumable) -> None:
    v1 = w.ami(B1)
    w.health.states[v1] = "unhealthy"
    with pytest.raises(DeployError, match="did not go live"):
        w.deploy(B1)
    assert w.status()["blue"] == (100, False)
    w.health.states[v1] = "healthy"  # e.g. what it depends on came back
    asked = w.health.asked[v1]
    out = w.deploy(B1)  # not "already live ... nothing to do": the health gate runs again
    assert out.action == "released" and w.health.asked[v1] > asked
    assert w.entries() == [("deploy", B1, "failed"), ("deploy", B1, "baked")]
    assert w.status()["blue"] == (100, True)
    assert w.deploy(B1).action == "unchanged"


def test_an_automatic_rollback_followed_by_invoke_rollback_returns_to_the_last_live_release(
    w: Resumable,
) -> None:
    v1, v2, v3 = two_live(w)
    w.health.states[v3] = "unhealthy"
    with pytest.raises(DeployError, match="rolled back: green has 100%"):
        w.deploy(B3)
    assert colors(w.params()) == {"blue": (v1, "0", "0"), "green": (v2, "1", "100")}
    assert w.entries()[-1][1:] == (B3, "rolled back")
    out = w.rollback()
    assert (out.live, out.image_id) == ("blue", v1)  # v1, not the release that failed
    assert w.status() == {"blue": (100, True), "green": (0, True)}


def test_an_automatic_rollback_moves_the_weight_first_and_scales_down_after_the_drain(
    w: Resumable,
) -> None:
    v1, v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    w.health.states[v2] = lambda n: (
        "unhealthy" if w.rec.last_parameters().get("GreenWeight") == "50" else "healthy"
    )
    times: list[tuple[float, dict[str, tuple[str, str, str]]]] = []
    w.clients.cloudformation().meta.events.register(
        "before-parameter-build.cloudformation.UpdateStack",
        lambda params, **_: times.append(
            (w.clock.now, colors({p["ParameterKey"]: p["ParameterValue"] for p in params["Parameters"]}))
        ),
    )
    with pytest.raises(DeployError, match="became unhealthy"):
        w.deploy(B2)
    (t_weight, weights), (t_scale, scaled) = times[-2:]
    assert weights == {"blue": (v1, "1", "100"), "green": (v2, "1", "0")}
    assert scaled == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}
    assert t_scale - t_weight >= DEREGISTRATION_DELAY


# -- a failed update that stopped half-way -----------------------------------------------------------


def halfway_updates(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[dict[str, str]], bool], done: dict[str, str]
) -> list[int]:
    """Stand-in for an update that stopped half-way (moto stops where a resource fails, without
    rolling back; the local AWS's own journal replays it so): the updates whose parameters satisfy
    ``when`` leave the stack with ``done`` applied on top of them (e.g. the live colour's group at 0),
    recorded as the stack's parameters, and then fail."""
    from moto.cloudformation import models

    original = models.Stack.update
    failed: list[int] = []

    def update(
        self: Any, template: str, role_arn: str | None = None, parameters: Any = None, tags: Any = None
    ) -> None:
        if parameters is None or not when({k: str(v) for k, v in parameters.items()}) or failed:
            original(self, template, role_arn, parameters=parameters, tags=tags)
            return
        failed.append(1)
        original(self, template, role_arn, parameters={**parameters, **done}, tags=tags)
        raise RuntimeError("InternalFailure: the update stopped half-way")

    monkeypatch.setattr(models.Stack, "update", update)
    return failed


def test_a_failed_update_that_stopped_half_way_is_undone_from_the_previous_parameters(
    w: Resumable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first update of a deploy (with a template change) stops half-way having scaled the live
    colour to 0, and the stack records that. The rollback does not trust what the stack says now:
    it sends the template and parameters the stack had before the deploy, which bring blue back."""
    v1, _v2 = w.ami(B1), w.ami(B2)
    w.deploy(B1)
    template_before = w.clients.cloudformation().get_template(StackName=STACK)["TemplateBody"]
    failed = halfway_updates(
        monkeypatch, lambda p: p["GreenImageId"] == _v2, {"BlueCapacity": "0", "BlueWeight": "0"}
    )
    changed = config.load(REPO, env="dev", overrides=[*OVERRIDES, "deploy.allowed_cidrs=['203.0.113.0/24']"])
    mark = w.rec.mark()
    with pytest.raises(DeployError) as err:
        deploy.deploy(changed, w.clients, w.runtime(), B2)
    assert failed == [1]
    line = str(err.value)
    assert "the update stopped half-way; rolled back: blue has 100% of the traffic" in line, line
    restore = [c.params for c in w.rec.since(mark) if c.operation == "UpdateStack"][-1]
    assert json.loads(restore["TemplateBody"]) == template_before  # the previous template: no new networks
    assert colors(w.params()) == {"blue": (v1, "1", "100"), "green": (v1, "0", "0")}
    name = stack_outputs(w.clients)["BlueServerGroupName"]
    (group,) = w.clients.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    assert group["DesiredCapacity"] == 1 and w.images_running("blue") == {v1}
    assert w.entries()[-1][1:] == (B2, "rolled back")
