"""The deploy stage: roll a build's AMI out as a health-gated blue/green release; plan and rollback.

All deployment state lives in the stack's parameters (which image each colour runs, how many
instances, which share of the traffic); every change is a stack update passing all of them, so the
stack never drifts and there is no local state. The flow of a release is plan, confirm, apply step by
step, verify (see :mod:`pipeline.aws.rollout` for the steps); any failure before the new colour has
baked at 100% (a failed update, unhealthy targets, a timeout, Ctrl-C) rolls back to the old colour.

Nothing here prompts: the caller passes ``confirm`` (tasks.py asks the user, or ``--yes`` answers).
Waiting uses the injected ``sleep`` and ``clock``. :mod:`pipeline.aws.status` has status and destroy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import build, ui
from pipeline.aws import ami, cfn, pv, rollout, stack
from pipeline.aws.calls import one_line_errors
from pipeline.aws.deployment import Deployment, Runtime, capacity
from pipeline.aws.params import Release, StackState
from pipeline.aws.rollout import Step, opposite
from pipeline.aws.session import Clients
from pipeline.aws.tags import Color
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError
from pipeline.manifest import MANIFEST

__all__ = ["Outcome", "Runtime", "StagePlan", "deploy", "plan", "rollback"]


@dataclass(frozen=True)
class Outcome:
    """What a deploy or rollback did."""

    action: str  # created | released | unchanged | planned | rolled back
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
    live release. Idempotent: the release that is already live makes no change at all.

    Raises a one-line :class:`PipelineError` before any change for bad input (instance type, AMI
    missing, stack busy or stuck) and a :class:`DeployError` after rolling back a failed release.
    """
    runtime = runtime or Runtime()
    pv.check_instance_type(settings.deploy.instance_type, settings.virtualization)
    d = Deployment(settings, clients, runtime)
    info = d.read()
    cfn.check_ready(info, d.name)
    bid = build_id or _current_build(settings)
    release = _release(clients, settings, bid)
    if info is None or info.status == "REVIEW_IN_PROGRESS":
        return _create(d, info, release, dry_run)

    current = d.state(info)
    live = current.live
    if live is None:
        raise DeployError(
            f"stack {d.name}: the traffic is split (blue {current.blue.weight}%, "
            f"green {current.green.weight}%): an earlier rollout did not finish",
            hint="choose where it goes first: invoke rollback --to blue (or green)",
        )
    url = d.url(info)
    if current.side(live).release == release:
        if not d.live_template_differs():
            ui.done(f"build {bid} ({release.image_id}) is already live on {live}: nothing to do")
            return Outcome("unchanged", d.name, live, bid, release.image_id, url)
        return _update_template(d, current, live, release, dry_run)

    target = opposite(live)
    deploy_cfg = settings.deploy
    steps = rollout.rollout_steps(
        current,
        target,
        release,
        capacity(settings),
        deploy_cfg.weight_steps,
        deploy_cfg.bake_seconds,
        deploy_cfg.retention_seconds,
    )
    _show_plan(d, current, steps, f"plan-{bid}")
    if dry_run:
        return Outcome("planned", d.name, live, bid, release.image_id, url)
    d.preflight(capacity(settings))
    if not runtime.confirm(f"roll build {bid} out to {target} on stack {d.name}?"):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
    d.run(current, target, steps)
    ui.done(f"build {bid} is live on {target} ({release.image_id})")
    return Outcome("released", d.name, target, bid, release.image_id, url)


def _create(d: Deployment, info: cfn.StackInfo | None, release: Release, dry_run: bool) -> Outcome:
    s = d.settings
    state = rollout.first_state(release, capacity(s), s.deploy.vpc_id, s.deploy.subnet_ids)
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
        cfn.delete(d.cf, info.stack_id)
        cfn.wait(d.cf, info.stack_id, d.events(info.stack_id), d.waiter, "delete of the empty stack")
    d.create(state)
    try:
        d.gate().wait_healthy(d.subject("blue", state), s.deploy.health_timeout_seconds)
    except PipelineError as err:
        raise DeployError(
            f"stack {d.name} was created but the first release is not healthy: {err}",
            hint="there is no earlier release to return to; fix the build and deploy again (or destroy)",
        ) from err
    url = d.url()
    ui.done(f"build {release.build_id} is live on blue ({release.image_id}) at {url}")
    return Outcome("created", d.name, "blue", release.build_id, release.image_id, url)


def _update_template(
    d: Deployment, current: StackState, live: Color, release: Release, dry_run: bool
) -> Outcome:
    """The release is live but the stack's shape changed (settings such as the allowed networks)."""
    _show_changes(d, current, f"plan-{release.build_id}-template", "the stack's template changed")
    url = d.url()
    if dry_run:
        return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
    if not d.runtime.confirm(f"update the template of stack {d.name}?"):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
    d.apply(current, "template change (same release)")
    ui.done(f"stack {d.name} updated; build {release.build_id} stays live on {live}")
    return Outcome("released", d.name, live, release.build_id, release.image_id, url)


def _show_plan(d: Deployment, current: StackState, steps: list[Step], change_set: str) -> None:
    first = next((s for s in steps if s.kind == "update" and s.state is not None), None)
    if first is not None and first.state is not None:
        _show_changes(d, first.state, change_set, first.label, before=current)
    ui.table("then", ("#", "step"), [(i, s.label) for i, s in enumerate(steps, start=1)])


def _show_changes(
    d: Deployment, state: StackState, change_set: str, label: str, before: StackState | None = None
) -> None:
    changes = cfn.plan_update(d.cf, d.name, change_set, d.template, d.parameters(state), d.waiter)
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


# -- rollback -----------------------------------------------------------------------------------------------


@one_line_errors("rollback")
def rollback(
    settings: Settings,
    clients: Clients,
    runtime: Runtime | None = None,
    to: Color | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Return the traffic to the previous release, which the idle colour keeps: scale it up, wait until
    it is healthy, move all the traffic to it, and scale the other colour down after the retention."""
    runtime = runtime or Runtime()
    d = Deployment(settings, clients, runtime)
    info = d.read()
    if info is None:
        raise DeployError(
            f"stack {d.name} does not exist: nothing to roll back", hint="invoke deploy creates it"
        )
    cfn.check_ready(info, d.name)
    current = d.state(info)
    live = current.live
    if live is None and to is None:
        raise DeployError(
            f"stack {d.name}: the traffic is split "
            f"(blue {current.blue.weight}%, green {current.green.weight}%)",
            hint="say which colour gets it all: invoke rollback --to blue (or green)",
        )
    target = to or opposite(live or "blue")
    release = current.side(target).release
    url = d.url(info)
    if target == live:
        ui.done(f"{target} already has all the traffic: nothing to do")
        return Outcome("unchanged", d.name, live, release.build_id, release.image_id, url)
    if live is not None and release == current.side(live).release:
        raise DeployError(
            f"stack {d.name}: blue and green run the same release (build {release.build_id}): "
            "there is no previous release to return to",
        )
    pv.check_instance_type(
        release.instance_type, release.virtualization, f"stack {d.name}: {target.capitalize()}InstanceType"
    )
    s = settings.deploy
    steps = rollout.rollout_steps(
        current, target, release, capacity(settings), (100,), s.bake_seconds, s.retention_seconds
    )
    _show_plan(d, current, steps, f"rollback-{release.build_id}")
    if dry_run:
        return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
    d.preflight(capacity(settings))
    if not runtime.confirm(f"return stack {d.name} to build {release.build_id} on {target}?"):
        raise DeployError(
            "rollback not confirmed: nothing was changed", hint="pass --yes to skip the question"
        )
    d.run(current, target, steps)
    ui.done(f"rolled back: build {release.build_id} is live on {target} ({release.image_id})")
    return Outcome("rolled back", d.name, target, release.build_id, release.image_id, url)


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
    pv.check_instance_type(settings.deploy.instance_type, virtualization)
    if info is None or info.status == "REVIEW_IN_PROGRESS":
        out.append(
            StagePlan("deploy", "would create", f"stack {d.name} with build {bp.build_id} live on blue")
        )
        return out
    current = d.state(info)
    live = current.live
    if live is None:
        out.append(
            StagePlan("deploy", "blocked", "the traffic is split; invoke rollback --to blue|green first")
        )
        return out
    if image_id is None:
        out.append(
            StagePlan(
                "deploy",
                "would roll out",
                f"build {bp.build_id} to {opposite(live)} once its AMI is available",
            )
        )
        return out
    release = Release(image_id, bp.build_id, settings.deploy.instance_type, virtualization)
    if current.side(live).release == release:
        if d.live_template_differs():
            _show_changes(d, current, f"plan-{bp.build_id}-template", "the stack's template changed")
            out.append(
                StagePlan(
                    "deploy", "would update", f"the template of {d.name}; build {bp.build_id} stays live"
                )
            )
        else:
            out.append(StagePlan("deploy", "up to date", f"build {bp.build_id} is live on {live}"))
        return out
    target = opposite(live)
    s = settings.deploy
    steps = rollout.rollout_steps(
        current, target, release, capacity(settings), s.weight_steps, s.bake_seconds, s.retention_seconds
    )
    _show_plan(d, current, steps, f"plan-{bp.build_id}")
    out.append(
        StagePlan("deploy", "would roll out", f"build {bp.build_id} to {target} in {len(steps)} steps")
    )
    return out
