"""The deploy stage: roll a build's AMI out as a health-gated blue/green release; and the plan.

All deployment state lives in the stack's parameters (which image each colour runs, how many
instances, which share of the traffic, and the release history); every change is a stack update
passing all of them, so the stack never drifts and there is no local state. The flow of a release is
plan, confirm, apply step by step, verify (:mod:`pipeline.aws.rollout` plans the steps,
:mod:`pipeline.aws.runner` carries them out); any failure before the new colour has baked at 100% (a
failed update, unhealthy targets, a timeout, Ctrl-C or SIGTERM) rolls back to the old colour.

A deploy that was killed is resumed by the next deploy of the same build, from where it stopped: a
release that never finished its bake at 100% is not taken for live, and an old colour left running
is scaled down. (Rollback: :mod:`pipeline.aws.rollback`; status and destroy: :mod:`pipeline.aws.status`.)

Nothing here prompts: the caller passes ``confirm`` (the deploy task asks the user, or ``--yes`` answers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pipeline import build, ui
from pipeline.aws import ami, cfn, colors, history, https, preflight, pv, rollout, runner, scaling, stack
from pipeline.aws.calls import one_line_errors
from pipeline.aws.deployment import Deployment, Runtime, capacity
from pipeline.aws.history import Entry, History
from pipeline.aws.params import Release, StackState
from pipeline.aws.rollout import Step, opposite
from pipeline.aws.session import Clients
from pipeline.aws.tags import Color
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError
from pipeline.manifest import MANIFEST

__all__ = ["Outcome", "Runtime", "StagePlan", "decide", "deploy", "plan", "show_plan"]


@dataclass(frozen=True)
class Outcome:
    """What a deploy or rollback did."""

    action: str  # created | released | finished | unchanged | planned | rolled back
    stack: str
    live: Color | None
    build_id: str
    image_id: str
    url: str = ""


# -- images -------------------------------------------------------------------------------------------------


def _release(clients: Clients, settings: Settings, build_id: str) -> Release:
    """The release of ``build_id``: its AMI in the home region (found by the ami stage's lookup), which
    must be available."""
    virtualization = settings.virtualization
    region = settings.aws.region
    image = ami.find_image(clients, settings, build_id, virtualization, region)
    if image is None:
        raise DeployError(
            f"no AMI of build {build_id} ({settings.image.target}, {virtualization}) in {region}",
            hint=f"run: invoke ami --env {settings.env} (or add {region} to ami.regions)",
        )
    if image.state != "available":
        raise DeployError(
            f"AMI {image.image_id} of build {build_id} in {region} is {image.state}, not available yet",
            hint=f"run: invoke ami --env {settings.env} (it waits until the AMI is available), then deploy",
        )
    return Release(image.image_id, build_id, settings.deploy.instance_type, virtualization)


def _current_build(settings: Settings) -> str:
    return build.find(settings).build_id


# -- what a deploy of a release does, given the stack -------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a deploy of ``release`` does to a stack in ``current`` state with ``past`` history."""

    kind: Literal["rollout", "finish", "nothing"]
    target: Color
    resumed: Entry | None = None  # the running entry this deploy continues (None: a new entry)


def decide(current: StackState, past: History, release: Release, stack_name: str) -> Decision:
    """Pure: where ``release`` goes, and whether an earlier, interrupted deploy of it is resumed.

    Raises :class:`DeployError` when the traffic is split by an unfinished rollout of another release.
    """
    live = current.live
    image = release.image_id
    pending = [e for e in history.running(past) if current.side(e.color).release == e.release]
    ours = next((e for e in reversed(pending) if e.release == release), None)
    if live is None:
        if ours is None:
            last = history.last_live(past)
            back = f"invoke rollback returns to build {last.release.build_id}" if last else "invoke rollback"
            blue, green = current.blue.weight, current.green.weight
            split = f"stack {stack_name}: the traffic is split (blue {blue}%, green {green}%)"
            if not pending:
                raise DeployError(f"{split} and no unfinished deploy is recorded", hint=back)
            unfinished = pending[-1].release.build_id
            raise DeployError(
                f"{split} by an unfinished rollout of build {unfinished}",
                hint=f"invoke deploy --build-id {unfinished} finishes it; {back}",
            )
        return Decision("rollout", ours.color, ours)
    if current.side(live).release != release:
        return Decision("rollout", opposite(live), ours if ours and ours.color != live else None)
    entry = history.current(past, live, image)
    if entry is not None and entry.outcome == "running":
        return Decision("rollout", live, entry)  # killed before its bake at 100% was over
    if not history.was_live(past, image):
        return Decision("rollout", live, None)  # e.g. a first release that failed its health gate
    if current.side(opposite(live)).capacity > 0:
        return Decision("finish", live, None)  # killed during the retention: scale the old colour down
    return Decision("nothing", live, None)


def finish_steps(current: StackState, past: History, live: Color, retention: float, now: float) -> list[Step]:
    """The rest of an interrupted retention: hold what is left of it, then scale the old colour down."""
    entry = history.current(past, live, current.side(live).release.image_id)
    since = now - entry.live_at if entry is not None and entry.was_live else 0.0
    left = max(0.0, retention - since, colors.DEREGISTRATION_DELAY - since)
    return rollout.scale_down_steps(current, opposite(live), left)


# -- deploy -------------------------------------------------------------------------------------------------


@one_line_errors("deploy")
def deploy(
    settings: Settings,
    clients: Clients,
    runtime: Runtime | None = None,
    build_id: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Roll the AMI of ``build_id`` (default: the finished build of the current inputs) out as the
    live release. Idempotent: the release that is already live makes no change at all, and a deploy
    that was interrupted is resumed.

    Raises a one-line :class:`PipelineError` before any change for bad input (instance type, AMI
    missing, stack busy or stuck) and a :class:`DeployError` after rolling back a failed release.
    """
    runtime = runtime or Runtime()
    pv.check_instance_type(
        settings.deploy.instance_type,
        settings.virtualization,
        settings.where("deploy.instance_type"),
        target=settings.image.target,
    )
    preflight.for_deploy(settings, clients)
    https.check(clients, settings)
    d = Deployment(settings, clients, runtime)
    info = d.read()
    cfn.check_ready(info, d.name)
    bid = build_id or _current_build(settings)
    release = _release(clients, settings, bid)
    if info is None or info.status == "REVIEW_IN_PROGRESS":
        return _create(d, info, release, dry_run)

    current = d.observed(d.state(info))  # each running colour at the size its group has now
    past = d.history
    choice = decide(current, past, release, d.name)
    target = choice.target
    url = d.url(info)
    s = settings.deploy
    start = scaling.start_capacity(capacity(settings), current)
    if choice.kind == "nothing":
        if not d.live_template_differs() and not d.bounds_differ(info, current):
            ui.done(f"build {bid} ({release.image_id}) is already live on {target}: nothing to do")
            return Outcome("unchanged", d.name, target, bid, release.image_id, url)
        return _update_template(d, current, target, release, dry_run)
    if choice.kind == "finish":
        steps = finish_steps(current, past, target, s.retention_seconds, runtime.now())
        question = f"finish the interrupted deploy of build {bid}: scale {opposite(target)} down?"
    else:
        steps = rollout.rollout_steps(
            current, target, release, start, s.weight_steps, s.bake_seconds, s.retention_seconds
        )
        question = f"roll build {bid} out to {target} on stack {d.name}?"
        if choice.resumed is not None:
            ui.say(f"resuming the deploy of build {bid} to {target} that did not finish")
    show_plan(d, current, steps, f"plan-{bid}")
    if dry_run:
        return Outcome("planned", d.name, current.live, bid, release.image_id, url)
    d.preflight(start if choice.kind == "rollout" else 0)
    if not runtime.confirm(question):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
    if choice.kind == "finish":
        d.history = history.stopped(past)
        runner.run(d, current, target, steps, _live_entry(past, target, release), already_live=True)
        ui.done(f"build {bid} is live on {target}; {opposite(target)} is scaled down")
        return Outcome("finished", d.name, target, bid, release.image_id, url)
    entry = _begin(d, past, choice.resumed, "deploy", release, target)
    runner.run(d, current, target, steps, entry)
    ui.done(f"build {bid} is live on {target} ({release.image_id})")
    return Outcome("released", d.name, target, bid, release.image_id, url)


def _live_entry(past: History, color: Color, release: Release) -> Entry:
    entry = history.current(past, color, release.image_id)
    if entry is None:  # decide() found it in the history
        raise DeployError(f"build {release.build_id} is not in the stack's history")
    return entry


def _begin(
    d: Deployment, past: History, resumed: Entry | None, kind: history.Kind, release: Release, color: Color
) -> Entry:
    """The history entry of this run (a resumed one, or a new one); stale running ones are interrupted."""
    if resumed is not None:
        d.history = history.stopped(past, keep=resumed.n)
        return resumed
    d.history, entry = history.start(past, kind, release, color, d.runtime.now())
    return entry


def _create(d: Deployment, info: cfn.StackInfo | None, release: Release, dry_run: bool) -> Outcome:
    s = d.settings
    state = rollout.first_state(release, capacity(s), s.deploy.vpc_id, s.deploy.subnet_ids, scaling.bounds(s))
    summary = stack.template_summary(d.template)
    ui.table(
        f"plan: create stack {d.name} with build {release.build_id} live on blue",
        ("resource type", "resources", "action"),
        [(kind, ", ".join(names), "Add") for kind, names in sorted(summary.items())],
    )
    if dry_run:
        return Outcome("planned", d.name, None, release.build_id, release.image_id)
    # No question here: a new stack replaces no release, and the first ``invoke build ami deploy`` runs
    # unattended. Changing a live release (a later deploy, rollback, destroy) asks first.
    d.preflight(capacity(s))
    if info is not None:  # REVIEW_IN_PROGRESS: an empty stack left by a change set; it holds nothing
        cfn.delete(d.cf, info.stack_id, d.role())
        cfn.wait(d.cf, info.stack_id, d.events(info.stack_id), d.waiter, "delete of the empty stack")
    d.history, entry = history.start((), "deploy", release, "blue", d.runtime.now())
    d.create(state)
    steps = [
        Step("wait_healthy", "wait until blue is healthy"),
        Step("bake", "bake blue at 100%", seconds=s.deploy.bake_seconds, full=True),
        Step("record", f"record build {release.build_id} as live", replace(state, scaling="blue")),
    ]
    try:
        runner.run(d, state, "blue", steps, entry)
    except PipelineError as err:
        raise DeployError(
            f"stack {d.name} was created but the first release did not go live: {err.message}",
            hint=err.hint,
        ) from err
    url = d.url()
    ui.done(f"build {release.build_id} is live on blue ({release.image_id}) at {url}")
    return Outcome("created", d.name, "blue", release.build_id, release.image_id, url)


def _update_template(
    d: Deployment, current: StackState, live: Color, release: Release, dry_run: bool
) -> Outcome:
    """The release is live but the stack's shape changed (settings such as the allowed networks, or
    the bounds of the groups)."""
    _show_changes(d, current, f"plan-{release.build_id}-template", "the stack's template changed")
    url = d.url()
    if dry_run:
        return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
    d.preflight(0)  # the same checks as a release: a new listener port must be one this machine can take
    if not d.runtime.confirm(f"update the template of stack {d.name}?"):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
    d.history = history.stopped(d.history)
    d.apply(current, "template change (same release)")
    ui.done(f"stack {d.name} updated; build {release.build_id} stays live on {live}")
    return Outcome("released", d.name, live, release.build_id, release.image_id, url)


def show_plan(d: Deployment, current: StackState, steps: list[Step], change_set: str) -> None:
    first = next((s for s in steps if s.kind == "update" and s.state is not None), None)
    if first is not None and first.state is not None:
        _show_changes(d, first.state, change_set, first.label, before=current)
    ui.table("then", ("#", "step"), [(i, s.label) for i, s in enumerate(steps, start=1)])


def _show_changes(
    d: Deployment, state: StackState, change_set: str, label: str, before: StackState | None = None
) -> None:
    _, wanted = d.wanted(state)
    listed = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(wanted.items())]
    changes = cfn.plan_update(d.cf, d.name, change_set, d.template, listed, d.waiter, d.role())
    if changes:
        ui.table(
            f"plan: {label}",
            ("resource", "type", "action", "replacement"),
            [(c.resource, c.resource_type, c.action, c.replacement or "-") for c in changes],
        )
    else:
        ui.say(f"plan: {label} (CloudFormation lists no resource changes)")
    diff = rollout.parameter_diff(before, state) if before is not None else []
    if diff:
        ui.table("parameters", ("parameter", "now", "then"), diff)


# -- plan ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    stage: str  # build | ami | deploy
    action: str  # "up to date" or what would run
    detail: str


@one_line_errors("plan")
def plan(settings: Settings, clients: Clients, runtime: Runtime | None = None) -> list[StagePlan]:
    """What ``invoke build ami deploy`` would do, changing nothing (a deploy plan's change set is
    deleted again)."""
    runtime = runtime or Runtime()
    out: list[StagePlan] = []
    bp = build.plan(settings)
    built = (build.builds_dir(settings) / bp.build_id / MANIFEST).is_file()
    out.append(StagePlan("build", "up to date" if built else "would build", f"build {bp.build_id}"))
    virtualization = settings.virtualization
    region = settings.aws.region
    image = ami.find_image(clients, settings, bp.build_id, virtualization, region)
    if image is None:
        out.append(
            StagePlan(
                "ami", "would register", f"an AMI of build {bp.build_id} ({virtualization}) in {region}"
            )
        )
    elif image.state != "available":
        out.append(
            StagePlan(
                "ami", "would wait", f"{image.image_id} ({virtualization}) is {image.state} in {region}"
            )
        )
    else:
        out.append(StagePlan("ami", "up to date", f"{image.image_id} ({virtualization})"))
    image_id = image.image_id if image is not None and image.state == "available" else None
    d = Deployment(settings, clients, runtime)
    info = d.read()
    cfn.check_ready(info, d.name)
    pv.check_instance_type(
        settings.deploy.instance_type,
        virtualization,
        settings.where("deploy.instance_type"),
        target=settings.image.target,
    )
    preflight.for_deploy(settings, clients)
    if info is None or info.status == "REVIEW_IN_PROGRESS":
        out.append(
            StagePlan("deploy", "would create", f"stack {d.name} with build {bp.build_id} live on blue")
        )
        return out
    current = d.observed(d.state(info))
    if image_id is None:
        idle = opposite(current.live) if current.live else "the idle colour"
        out.append(
            StagePlan("deploy", "would roll out", f"build {bp.build_id} to {idle} once its AMI is available")
        )
        return out
    release = Release(image_id, bp.build_id, settings.deploy.instance_type, virtualization)
    try:
        choice = decide(current, d.history, release, d.name)
    except DeployError as err:
        out.append(StagePlan("deploy", "blocked", str(err)))
        return out
    s = settings.deploy
    if choice.kind == "nothing":
        if d.live_template_differs() or d.bounds_differ(info, current):
            _show_changes(d, current, f"plan-{bp.build_id}-template", "the stack's template changed")
            out.append(
                StagePlan(
                    "deploy", "would update", f"the template of {d.name}; build {bp.build_id} stays live"
                )
            )
        else:
            out.append(StagePlan("deploy", "up to date", f"build {bp.build_id} is live on {choice.target}"))
        return out
    if choice.kind == "finish":
        other = opposite(choice.target)
        out.append(StagePlan("deploy", "would finish", f"the interrupted deploy: scale {other} down"))
        return out
    steps = rollout.rollout_steps(
        current,
        choice.target,
        release,
        scaling.start_capacity(capacity(settings), current),
        s.weight_steps,
        s.bake_seconds,
        s.retention_seconds,
    )
    show_plan(d, current, steps, f"plan-{bp.build_id}")
    verb = "would resume" if choice.resumed or choice.target == current.live else "would roll out"
    out.append(StagePlan("deploy", verb, f"build {bp.build_id} to {choice.target} in {len(steps)} steps"))
    return out
