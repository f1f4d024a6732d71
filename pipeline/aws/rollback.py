"""``invoke rollback`` and ``invoke history``: return to a release that was live, from the history the
stack keeps (:mod:`pipeline.aws.history`).

Without ``--to``, a rollback returns to the last live release: the newest release that went live
(all the traffic, bake finished) other than the one live now, skipping releases that were rolled
back by hand since. A release that never went live (an interrupted deploy, one the pipeline rolled
back) is never a rollback's target. When the idle colour holds the release, it is scaled up and
gets the traffic, as a deploy would; when it does not, the release's AMI is put back on the idle
colour first. Its AMI must still exist; otherwise the rollback refuses, naming the build. ``--to
BUILD`` returns to any release of the history that went live; ``--to blue|green`` to the release
that colour holds, if it went live. A rollback that was interrupted is resumed by the next one.

The traffic moves in one step, with the same health gate and bake as a deploy, and the colour that
was live keeps its instances until its connections drained (at least the target groups'
deregistration delay after the weight moved) and the retention passed. The colour returned to starts
at the size the live colour has (or keeps its instances, if it still runs the release) and gets the
scaling policy once it is live again (:mod:`pipeline.aws.scaling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws import cfn, colors, history, preflight, pv, rollout, runner, scaling
from pipeline.aws.calls import error_code, one_line_errors
from pipeline.aws.deploy import Outcome, finish_steps, show_plan
from pipeline.aws.deployment import Deployment, Runtime, capacity
from pipeline.aws.history import Entry, History
from pipeline.aws.params import Release, StackState
from pipeline.aws.rollout import opposite
from pipeline.aws.session import Clients
from pipeline.aws.tags import COLORS, Color
from pipeline.config import Settings
from pipeline.errors import DeployError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


def choose(
    current: StackState, past: History, to: str | None, stack_name: str
) -> tuple[Release, Entry | None]:
    """Pure: the release a rollback returns to, and the interrupted rollback to it that it resumes."""
    live = current.live
    live_image = current.side(live).release.image_id if live else None
    pending = [
        e
        for e in history.running(past)
        if e.kind == "rollback" and current.side(e.color).release == e.release
    ]
    hint = "invoke history lists the releases; invoke rollback --to BUILD returns to one that was live"
    if to is None and pending:
        return pending[-1].release, pending[-1]
    if to is None:
        last = history.last_live(past, exclude=live_image)
        if last is None:
            raise DeployError(f"stack {stack_name}: there is no earlier live release to return to", hint=hint)
        release = last.release
    elif to in COLORS:
        release = current.side("blue" if to == "blue" else "green").release
        if not history.was_live(past, release.image_id):
            raise DeployError(
                f"stack {stack_name}: {to} holds build {release.build_id}, which was never live",
                hint=f"{hint}; invoke deploy --build-id {release.build_id} finishes its deploy instead",
            )
    else:
        found = history.find_build(past, to)
        builds = sorted({e.release.build_id for e in found})
        if not found:
            raise DeployError(f"stack {stack_name}: build {to} is not in its history", hint=hint)
        if len(builds) > 1:
            raise DeployError(
                f"stack {stack_name}: {to} is the start of several builds ({', '.join(builds)})",
                hint="give more of the build id",
            )
        live_ones = [e for e in found if e.was_live]
        if not live_ones:
            raise DeployError(
                f"stack {stack_name}: build {builds[0]} was never live; a rollback returns only to "
                "releases that were",
                hint=f"invoke deploy --build-id {builds[0]} deploys it",
            )
        release = live_ones[0].release
    resumed = next((e for e in reversed(pending) if e.release == release), None)
    return release, resumed


def check_image(ec2: EC2Client, release: Release, region: str) -> None:
    """The release's AMI must still exist and be available (gc or a person may have removed it)."""
    try:
        images = ec2.describe_images(ImageIds=[release.image_id]).get("Images", [])
    except ClientError as err:
        if not error_code(err).startswith("InvalidAMIID"):
            raise
        images = []
    state = images[0].get("State", "unknown") if images else "gone"
    if state != "available":
        raise DeployError(
            f"cannot return to build {release.build_id}: its AMI {release.image_id} in {region} is {state}",
            hint="invoke history lists the other releases (invoke rollback --to BUILD); or rebuild it: "
            "invoke build ami deploy with that build's settings",
        )


@one_line_errors("rollback")
def rollback(
    settings: Settings,
    clients: Clients,
    runtime: Runtime | None = None,
    to: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Return to the last live release (or the one ``to`` names: a build id or a colour): put its AMI on
    the idle colour if that holds another release, scale it up, wait until healthy, move all the
    traffic to it, and scale the other colour down after its connections drained and the retention."""
    runtime = runtime or Runtime()
    preflight.check_network(settings, clients)  # the rollback's stack update passes the network settings
    d = Deployment(settings, clients, runtime)
    info = d.read()
    if info is None:
        raise DeployError(
            f"stack {d.name} does not exist: nothing to roll back", hint="invoke deploy creates it"
        )
    cfn.check_ready(info, d.name)
    current = d.observed(d.state(info))  # each running colour at the size its group has now
    past = d.history
    live = current.live
    release, resumed = choose(current, past, to, d.name)
    url = d.url(info)
    s = settings.deploy
    if live is not None and current.side(live).release == release and resumed is None:
        entry = history.current(past, live, release.image_id)
        other = opposite(live)
        if current.side(other).capacity == 0 or entry is None or not entry.was_live:
            ui.done(f"build {release.build_id} is already live on {live}: nothing to do")
            return Outcome("unchanged", d.name, live, release.build_id, release.image_id, url)
        steps = finish_steps(current, past, live, s.retention_seconds, runtime.now())
        show_plan(d, current, steps, f"rollback-{release.build_id}")
        if dry_run:
            return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
        if not runtime.confirm(f"finish returning to build {release.build_id}: scale {other} down?"):
            raise DeployError(
                "rollback not confirmed: nothing was changed", hint="pass --yes to skip the question"
            )
        d.history = history.stopped(past)
        runner.run(d, current, live, steps, entry, already_live=True)
        ui.done(f"build {release.build_id} is live on {live}; {other} is scaled down")
        return Outcome("rolled back", d.name, live, release.build_id, release.image_id, url)

    holders = [c for c in COLORS if current.side(c).release == release]
    if resumed is not None:
        target: Color = resumed.color
    elif holders and live not in holders:
        target = max(holders, key=lambda c: current.side(c).weight)
    elif live is not None:
        target = opposite(live)
    else:
        last = history.last_live(past)
        raise DeployError(
            f"stack {d.name}: the traffic is split and neither colour holds build {release.build_id}",
            hint="invoke rollback first returns to "
            + (f"build {last.release.build_id}" if last else "the last live release")
            + f", then invoke rollback --to {release.build_id}",
        )
    check_image(clients.ec2(), release, settings.aws.region)
    pv.check_instance_type(
        release.instance_type,
        release.virtualization,
        f"stack {d.name}: {target.capitalize()}InstanceType",
        target=settings.image.target,
    )
    bake = s.bake_seconds
    # The colour that was live drains before it is scaled down, whatever the retention.
    retain = max(float(s.retention_seconds), colors.DEREGISTRATION_DELAY - bake)
    start = scaling.start_capacity(capacity(settings), current)
    steps = rollout.rollout_steps(current, target, release, start, (100,), bake, retain)
    if current.side(target).release != release:
        held = current.side(target).release.build_id
        ui.say(f"{target} holds build {held}: the AMI of build {release.build_id} goes back on it")
    show_plan(d, current, steps, f"rollback-{release.build_id}")
    if dry_run:
        return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
    d.preflight(start)
    if not runtime.confirm(f"return stack {d.name} to build {release.build_id} on {target}?"):
        raise DeployError(
            "rollback not confirmed: nothing was changed", hint="pass --yes to skip the question"
        )
    entry = _begin(d, past, resumed, release, target)
    previous = current.side(opposite(target)).release.image_id
    runner.run(d, current, target, steps, entry, hand_back=previous)
    ui.done(f"rolled back: build {release.build_id} is live on {target} ({release.image_id})")
    return Outcome("rolled back", d.name, target, release.build_id, release.image_id, url)


def _begin(d: Deployment, past: History, resumed: Entry | None, release: Release, color: Color) -> Entry:
    if resumed is not None:
        ui.say(f"resuming the rollback to build {release.build_id} that did not finish")
        d.history = history.stopped(past, keep=resumed.n)
        return resumed
    d.history, entry = history.start(past, "rollback", release, color, d.runtime.now())
    return entry


# -- history ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Releases:
    stack: str
    state: StackState
    entries: History

    def live_now(self, e: Entry) -> bool:
        live = self.state.live
        return (
            live is not None
            and e.color == live
            and self.state.side(live).release == e.release
            and (e == history.current(self.entries, live, e.release.image_id))
        )

    def record(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "releases": [{**e.record(), "live_now": self.live_now(e)} for e in reversed(self.entries)],
        }


@one_line_errors("history")
def releases(settings: Settings, clients: Clients) -> Releases | None:
    """The environment's release history, from its stack (None: there is no stack)."""
    d = Deployment(settings, clients, Runtime())
    info = d.read()
    if info is None:
        return None
    state = d.state(info)
    return Releases(d.name, state, d.history)


def show_history(r: Releases | None, stack_name: str) -> None:
    """Print the history table (stderr), newest first."""
    if r is None:
        ui.say(f"stack {stack_name} does not exist: no history (invoke deploy creates it)")
        return
    ui.table(
        f"releases of stack {r.stack}, newest first",
        ("#", "what", "build", "AMI", "colour", "started", "went live", "how it ended"),
        [
            (
                e.n,
                e.kind,
                e.release.build_id,
                e.release.image_id,
                e.color,
                history.stamp(e.started),
                history.stamp(e.live_at) if e.was_live else "never",
                e.describe() + (" - live now" if r.live_now(e) else ""),
            )
            for e in reversed(r.entries)
        ],
    )
