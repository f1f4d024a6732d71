"""The deploy stage: roll a build's AMI out as a health-gated blue/green release, and its companions
(plan, rollback, status, destroy).

All deployment state lives in the stack's parameters (which image each colour runs, how many
instances, which share of the traffic); every change is a stack update passing all of them, so the
stack never drifts and there is no local state. The flow of a release is plan, confirm, apply step by
step, verify (see :mod:`pipeline.aws.rollout` for the steps); any failure before the new colour has
baked at 100% (a failed update, unhealthy targets, a timeout, Ctrl-C) rolls back to the old colour.

Nothing here prompts: the caller passes ``confirm`` (tasks.py asks the user, or ``--yes`` answers).
Waiting uses the injected ``sleep`` and ``clock``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline import build, ui
from pipeline.aws import cfn, rollout, stack, tags
from pipeline.aws.health import AwsHealth, HealthGate, HealthSource, Subject, Target
from pipeline.aws.rollout import Step, opposite
from pipeline.aws.session import Clients
from pipeline.aws.stack import COLORS, Color, Release, StackState
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError
from pipeline.images.devices import Virtualization
from pipeline.manifest import MANIFEST

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import FilterTypeDef

log = logging.getLogger(__name__)


def _never(_question: str) -> bool:
    return False


@dataclass
class Runtime:
    """How a rollout waits, asks and judges health (tests replace all of it)."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    confirm: Callable[[str], bool] = _never  # asked before any change; tasks.py prompts or --yes
    health: HealthSource | None = None  # None: ELBv2 target health, CloudWatch and HTTP probes


@dataclass(frozen=True)
class Outcome:
    """What a deploy or rollback did."""

    action: str  # created | released | unchanged | planned | rolled back
    stack: str
    live: Color | None
    build_id: str
    image_id: str
    url: str = ""


class Deployment:
    """One app/env stack and the calls that read and change it."""

    def __init__(self, settings: Settings, clients: Clients, runtime: Runtime) -> None:
        self.settings = settings
        self.clients = clients
        self.runtime = runtime
        self.params = stack.params_for(settings)
        self.name = self.params.stack_name
        self.template = stack.render(self.params)
        self.cf = clients.cloudformation()
        self.waiter = cfn.Waiter(runtime.sleep, runtime.clock)
        self.stack_tags = tags.to_aws(
            {
                tags.MANAGED: tags.MANAGED_BY,
                tags.APP: settings.app.name,
                tags.ENV: settings.env,
                tags.TARGET: settings.image.target,
            }
        )
        self.template_sent = False
        self.info: cfn.StackInfo | None = None

    # -- reading ----------------------------------------------------------------------------------------

    def read(self) -> cfn.StackInfo | None:
        self.info = cfn.describe(self.cf, self.name)
        return self.info

    def state(self, info: cfn.StackInfo) -> StackState:
        try:
            return StackState.from_parameters(
                info.parameters, self.settings.deploy.vpc_id, self.settings.deploy.subnet_ids
            )
        except (KeyError, ValueError) as err:
            raise DeployError(
                f"stack {self.name}: its parameters do not describe a blue/green release ({err})",
                hint="was it made by another tool? remove it with invoke destroy or pick another env",
            ) from err

    def live_template_differs(self) -> bool:
        body = self.cf.get_template(StackName=self.name, TemplateStage="Original")["TemplateBody"]
        deployed = json.loads(body) if isinstance(body, str) else body
        return bool(deployed != json.loads(self.template))

    # -- changing ---------------------------------------------------------------------------------------

    def events(self, stack_id: str) -> cfn.EventStream:
        return cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]")).open()

    def create(self, state: StackState) -> None:
        ui.say(f"creating stack {self.name}")
        stack_id = cfn.create(self.cf, self.name, self.template, state.parameters(), self.stack_tags)
        self.template_sent = True
        events = cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]"))
        cfn.wait(self.cf, stack_id, events, self.waiter, "create")
        self.read()

    def apply(self, state: StackState, label: str, restoring: bool = False) -> None:
        """Update the stack to ``state`` (every parameter passed) and wait for it. A no-op when the stack
        already has exactly these parameters and this run already sent the template (or, ``restoring``,
        whatever template it has: a rollback is about the release, not the template)."""
        info = self.read()
        if info is None:
            raise DeployError(f"stack {self.name} disappeared during the rollout", hint="invoke status")
        wanted = {p["ParameterKey"]: p["ParameterValue"] for p in state.parameters()}
        keys = rollout.color_keys()
        if (self.template_sent or restoring) and all(info.parameters.get(k) == wanted[k] for k in keys):
            log.info("%s: stack already has these parameters", label)
            return
        ui.say(f"stack update: {label}")
        events = self.events(info.stack_id)
        changed = cfn.update(self.cf, self.name, self.template, state.parameters(), self.stack_tags)
        self.template_sent = True
        if changed:
            cfn.wait(self.cf, info.stack_id, events, self.waiter, f"update ({label})")
        self.read()

    def wait_stable(self) -> cfn.StackInfo | None:
        """Let an operation that is still running finish (after Ctrl-C during a wait)."""
        info = self.read()
        if info is not None and info.status.endswith("_IN_PROGRESS") and info.status != "REVIEW_IN_PROGRESS":
            ui.say(f"waiting for {self.name} to finish {info.status}")
            try:
                cfn.wait(
                    self.cf, info.stack_id, self.events(info.stack_id), self.waiter, "the interrupted update"
                )
            except cfn.StackFailed as err:
                log.info("interrupted operation ended badly: %s", err)
            info = self.read()
        return info

    # -- health -----------------------------------------------------------------------------------------

    def source(self) -> HealthSource:
        if self.runtime.health is not None:
            return self.runtime.health
        outputs = self.info.outputs if self.info else {}
        probe_url = outputs.get("Url") if self.settings.aws.endpoint == "aws" else None
        return AwsHealth(self.clients.elbv2(), self.clients.client("cloudwatch"), probe_url)

    def gate(self) -> HealthGate:
        return HealthGate(
            self.source(), self.runtime.sleep, self.runtime.clock, lambda line: ui.say(f"  {line}")
        )

    def subject(self, color: Color, state: StackState) -> Subject:
        outputs = self.info.outputs if self.info else {}
        try:
            return Subject(
                color=color,
                target_group_arn=outputs[f"{color.capitalize()}TargetGroupArn"],
                load_balancer_arn=outputs["LoadBalancerArn"],
                capacity=state.side(color).capacity,
                build_id=state.side(color).release.build_id,
            )
        except KeyError as err:
            raise DeployError(f"stack {self.name} has no output {err}", hint="invoke status") from err

    # -- the rollout ------------------------------------------------------------------------------------

    def run(self, original: StackState, target: Color, steps: list[Step]) -> None:
        """Carry out ``steps``; roll back to :func:`rollout.restore_state` on any failure before the
        target has baked at 100%."""
        settled = False
        current = original
        step = steps[0]
        try:
            for step in steps:
                if step.kind == "update" and step.state is not None:
                    self.apply(step.state, step.label)
                    current = step.state
                elif step.kind == "wait_healthy":
                    ui.say(step.label)
                    self.gate().wait_healthy(
                        self.subject(target, current), self.settings.deploy.health_timeout_seconds
                    )
                elif step.kind == "bake":
                    ui.say(f"{step.label} for {step.seconds:g}s")
                    self.gate().watch(self.subject(target, current), step.seconds)
                    settled = settled or step.full
                elif step.kind == "retain":
                    ui.say(step.label)
                    self.hold(step.seconds)
        except (Exception, KeyboardInterrupt) as err:
            if settled:
                other = opposite(target)
                ui.warn(
                    f"{target} is live with all the traffic; {other} still runs its instances "
                    "(invoke rollback returns to it; the next deploy scales it down)"
                )
                raise
            cause, hint = (
                ("interrupted (Ctrl-C)", None) if isinstance(err, KeyboardInterrupt) else _describe(err)
            )
            ui.warn(f"{step.label}: {cause}; rolling back")
            back = rollout.restore_state(original, target)
            try:
                self.wait_stable()
                self.apply(back, f"roll back: {opposite(target)} 100%, {target} 0 instances", restoring=True)
            except (Exception, KeyboardInterrupt) as rb:
                raise DeployError(
                    f"{step.label}: {cause}; the rollback failed too: {_describe(rb)[0]}",
                    hint=hint or "invoke status shows the state; invoke rollback retries",
                ) from err
            raise DeployError(
                f"{step.label}: {cause}; rolled back: {opposite(target)} has 100% of the traffic, "
                f"{target} has no instances",
                hint=hint or "invoke status shows the state; fix the release and deploy again",
            ) from err

    def hold(self, seconds: float) -> None:
        end = self.runtime.clock() + seconds
        while (remaining := end - self.runtime.clock()) > 0:
            self.runtime.sleep(min(remaining, 60.0))


def _describe(err: BaseException) -> tuple[str, str | None]:
    """What went wrong (one line, no hint) and the hint that goes with it, if any."""
    if isinstance(err, ClientError):
        err = cfn.aws_failure(err, "AWS call")
    if isinstance(err, PipelineError):
        return " ".join(err.message.split()), err.hint
    return str(err) or type(err).__name__, None


def _aws_errors(doing: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn an AWS ClientError that escapes ``fn`` into a one-line :class:`AwsError`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ClientError as err:
                raise cfn.aws_failure(err, doing) from err

        inner.__doc__ = fn.__doc__
        inner.__name__ = fn.__name__
        return inner

    return wrap


# -- images -------------------------------------------------------------------------------------------------


def find_image(
    clients: Clients, settings: Settings, build_id: str, virtualization: Virtualization, region: str
) -> str | None:
    """The id of the AMI registered for ``build_id`` and ``virtualization`` in ``region``, if any.

    Selected by the pipeline's tags (never by name alone) among the account's own available images.
    """
    filters = {
        tags.MANAGED: tags.MANAGED_BY,
        tags.APP: settings.app.name,
        tags.BUILD_ID: build_id,
        tags.VIRTUALIZATION: virtualization,
    }
    wanted: list[FilterTypeDef] = [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]
    wanted.append({"Name": "state", "Values": ["available"]})
    resp = clients.ec2(region).describe_images(Owners=["self"], Filters=wanted)
    images = sorted(resp["Images"], key=lambda i: i.get("CreationDate", ""), reverse=True)
    return images[0]["ImageId"] if images else None


def _release(clients: Clients, settings: Settings, build_id: str) -> Release:
    virtualization = settings.virtualization
    region = settings.aws.region
    image = find_image(clients, settings, build_id, virtualization, region)
    if image is None:
        raise DeployError(
            f"no AMI of build {build_id} ({settings.image.target}, {virtualization}) in {region}",
            hint=f"run: invoke ami --env {settings.env} (or add {region} to ami.regions)",
        )
    return Release(image, build_id, settings.deploy.instance_type, virtualization)


def _current_build(settings: Settings) -> str:
    return build.find(settings).build_id


# -- deploy -------------------------------------------------------------------------------------------------


@_aws_errors("deploy")
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
    stack.check_instance_type(settings.deploy.instance_type, settings.virtualization)
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
    url = info.outputs.get("Url", "")
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
        deploy_cfg.capacity,
        deploy_cfg.weight_steps,
        deploy_cfg.bake_seconds,
        deploy_cfg.retention_seconds,
    )
    _show_plan(d, current, steps, f"plan-{bid}")
    if dry_run:
        return Outcome("planned", d.name, live, bid, release.image_id, url)
    if not runtime.confirm(f"roll build {bid} out to {target} on stack {d.name}?"):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
    d.run(current, target, steps)
    ui.done(f"build {bid} is live on {target} ({release.image_id})")
    return Outcome("released", d.name, target, bid, release.image_id, url)


def _create(d: Deployment, info: cfn.StackInfo | None, release: Release, dry_run: bool) -> Outcome:
    s = d.settings
    state = rollout.first_state(release, s.deploy.capacity, s.deploy.vpc_id, s.deploy.subnet_ids)
    summary = stack.template_summary(d.template)
    ui.table(
        f"plan: create stack {d.name} with build {release.build_id} live on blue",
        ("resource type", "resources", "action"),
        [(kind, ", ".join(names), "Add") for kind, names in sorted(summary.items())],
    )
    if dry_run:
        return Outcome("planned", d.name, None, release.build_id, release.image_id)
    if not d.runtime.confirm(f"create stack {d.name} in {s.aws.region}?"):
        raise DeployError("deploy not confirmed: nothing was changed", hint="pass --yes to skip the question")
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
    url = d.info.outputs.get("Url", "") if d.info else ""
    ui.done(f"build {release.build_id} is live on blue ({release.image_id}) at {url}")
    return Outcome("created", d.name, "blue", release.build_id, release.image_id, url)


def _update_template(
    d: Deployment, current: StackState, live: Color, release: Release, dry_run: bool
) -> Outcome:
    """The release is live but the stack's shape changed (settings such as the allowed networks)."""
    _show_changes(d, current, f"plan-{release.build_id}-template", "the stack's template changed")
    url = d.info.outputs.get("Url", "") if d.info else ""
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
    changes = cfn.plan_update(d.cf, d.name, change_set, d.template, state.parameters(), d.waiter)
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


@_aws_errors("rollback")
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
    url = info.outputs.get("Url", "")
    if target == live:
        ui.done(f"{target} already has all the traffic: nothing to do")
        return Outcome("unchanged", d.name, live, release.build_id, release.image_id, url)
    if live is not None and release == current.side(live).release:
        raise DeployError(
            f"stack {d.name}: blue and green run the same release (build {release.build_id}): "
            "there is no previous release to return to",
        )
    stack.check_instance_type(release.instance_type, release.virtualization)
    s = settings.deploy
    steps = rollout.rollout_steps(
        current, target, release, s.capacity, (100,), s.bake_seconds, s.retention_seconds
    )
    _show_plan(d, current, steps, f"rollback-{release.build_id}")
    if dry_run:
        return Outcome("planned", d.name, live, release.build_id, release.image_id, url)
    if not runtime.confirm(f"return stack {d.name} to build {release.build_id} on {target}?"):
        raise DeployError(
            "rollback not confirmed: nothing was changed", hint="pass --yes to skip the question"
        )
    d.run(current, target, steps)
    ui.done(f"rolled back: build {release.build_id} is live on {target} ({release.image_id})")
    return Outcome("rolled back", d.name, target, release.build_id, release.image_id, url)


# -- status -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorStatus:
    color: Color
    weight: int
    image_id: str
    build_id: str
    instance_type: str
    virtualization: str
    capacity: int
    instances: int
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Status:
    stack: str
    status: str
    url: str
    live: Color | None
    colors: tuple[ColorStatus, ...] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "status": self.status,
            "url": self.url,
            "live": self.live,
            "colors": [
                {
                    "color": c.color,
                    "weight": c.weight,
                    "image_id": c.image_id,
                    "build_id": c.build_id,
                    "instance_type": c.instance_type,
                    "virtualization": c.virtualization,
                    "capacity": c.capacity,
                    "instances": c.instances,
                    "targets": {t.target_id: t.state for t in c.targets},
                }
                for c in self.colors
            ],
        }


@_aws_errors("status")
def status(settings: Settings, clients: Clients, health: HealthSource | None = None) -> Status | None:
    """The stack's colours, releases, capacities, weights and target health; None if there is none."""
    d = Deployment(settings, clients, Runtime(health=health))
    info = d.read()
    if info is None:
        return None
    try:
        state = d.state(info)
    except DeployError:
        return Status(d.name, info.status, info.outputs.get("Url", ""), None)
    source = d.source()
    groups = [info.outputs.get(f"{c.capitalize()}ServerGroupName", "") for c in COLORS]
    counts: dict[str, int] = {}
    names = [g for g in groups if g]
    if names:
        resp = clients.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=names)
        counts = {g["AutoScalingGroupName"]: len(g.get("Instances", [])) for g in resp["AutoScalingGroups"]}
    rows = []
    for color, group in zip(COLORS, groups, strict=True):
        side = state.side(color)
        arn = info.outputs.get(f"{color.capitalize()}TargetGroupArn")
        rows.append(
            ColorStatus(
                color=color,
                weight=side.weight,
                image_id=side.release.image_id,
                build_id=side.release.build_id,
                instance_type=side.release.instance_type,
                virtualization=side.release.virtualization,
                capacity=side.capacity,
                instances=counts.get(group, 0),
                targets=tuple(source.targets(arn)) if arn else (),
            )
        )
    return Status(d.name, info.status, info.outputs.get("Url", ""), state.live, tuple(rows))


def show_status(st: Status | None, stack_name: str) -> None:
    """Print the status table (stderr)."""
    if st is None:
        ui.say(f"stack {stack_name} does not exist (invoke deploy creates it)")
        return
    ui.table(
        f"stack {st.stack}: {st.status}   {st.url}",
        ("colour", "traffic", "AMI", "build", "instance type", "capacity", "instances", "targets"),
        [
            (
                c.color + (" (live)" if st.live == c.color else ""),
                f"{c.weight}%",
                c.image_id,
                c.build_id,
                f"{c.instance_type} ({c.virtualization})",
                c.capacity,
                c.instances,
                _health_summary(c.targets),
            )
            for c in st.colors
        ],
    )


def _health_summary(targets: tuple[Target, ...]) -> str:
    if not targets:
        return "-"
    counts: dict[str, int] = {}
    for t in targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


# -- destroy ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destroyed:
    stack: str
    deleted: bool
    images: tuple[str, ...]  # AMIs of this app and env that gc could now remove


@_aws_errors("destroy")
def destroy(
    settings: Settings, clients: Clients, runtime: Runtime | None = None, dry_run: bool = False
) -> Destroyed:
    """Delete the stack (after confirmation) and list the AMIs that no longer serve it. The AMIs
    themselves are left for gc."""
    runtime = runtime or Runtime()
    d = Deployment(settings, clients, runtime)
    info = d.read()
    images = _app_images(clients, settings, info)
    if info is None:
        ui.say(f"stack {d.name} does not exist: nothing to delete")
        return Destroyed(d.name, False, images)
    if info.status.endswith("_IN_PROGRESS") and info.status != "REVIEW_IN_PROGRESS":
        raise DeployError(
            f"stack {d.name} is {info.status}: it cannot be deleted while a change is running",
            hint="wait until it finishes (invoke status), then run invoke destroy again",
        )
    ui.say(
        f"stack {d.name} ({info.status}) and everything in it would be deleted: {info.outputs.get('Url', '')}"
    )
    if dry_run:
        return Destroyed(d.name, False, images)
    if not runtime.confirm(f"delete stack {d.name} and all its instances?"):
        raise DeployError(
            "destroy not confirmed: nothing was deleted", hint="pass --yes to skip the question"
        )
    events = d.events(info.stack_id)
    cfn.delete(d.cf, info.stack_id)
    cfn.wait(d.cf, info.stack_id, events, d.waiter, "delete")
    ui.done(f"stack {d.name} deleted")
    return Destroyed(d.name, True, images)


def _app_images(clients: Clients, settings: Settings, info: cfn.StackInfo | None) -> tuple[str, ...]:
    """The app/env's AMIs (by the pipeline's tags) plus any the stack's parameters name."""
    resp = clients.ec2().describe_images(
        Owners=["self"],
        Filters=[
            {"Name": f"tag:{tags.MANAGED}", "Values": [tags.MANAGED_BY]},
            {"Name": f"tag:{tags.APP}", "Values": [settings.app.name]},
            {"Name": f"tag:{tags.ENV}", "Values": [settings.env]},
        ],
    )
    found = {i["ImageId"] for i in resp["Images"]}
    if info is not None:
        found |= {v for k, v in info.parameters.items() if k.endswith("ImageId")}
    return tuple(sorted(found))


# -- plan ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    stage: str  # build | ami | deploy
    action: str  # "up to date" or what would run
    detail: str


@_aws_errors("plan")
def plan(settings: Settings, clients: Clients, runtime: Runtime | None = None) -> list[StagePlan]:
    """What ``invoke build ami deploy`` would do, changing nothing (a deploy plan's change set is
    deleted again)."""
    runtime = runtime or Runtime()
    out: list[StagePlan] = []
    bp = build.plan(settings)
    built = (build.builds_dir(settings) / bp.build_id / MANIFEST).is_file()
    out.append(StagePlan("build", "up to date" if built else "would build", f"build {bp.build_id}"))
    virtualization = settings.virtualization
    image = find_image(clients, settings, bp.build_id, virtualization, settings.aws.region)
    out.append(
        StagePlan(
            "ami",
            "up to date" if image else "would register",
            f"{image} ({virtualization})"
            if image
            else f"an AMI of build {bp.build_id} ({virtualization}) in {settings.aws.region}",
        )
    )
    d = Deployment(settings, clients, runtime)
    info = d.read()
    cfn.check_ready(info, d.name)
    stack.check_instance_type(settings.deploy.instance_type, virtualization)
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
    if image is None:
        out.append(
            StagePlan(
                "deploy", "would roll out", f"build {bp.build_id} to {opposite(live)} once its AMI exists"
            )
        )
        return out
    release = Release(image, bp.build_id, settings.deploy.instance_type, virtualization)
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
        current, target, release, s.capacity, s.weight_steps, s.bake_seconds, s.retention_seconds
    )
    _show_plan(d, current, steps, f"plan-{bp.build_id}")
    out.append(
        StagePlan("deploy", "would roll out", f"build {bp.build_id} to {target} in {len(steps)} steps")
    )
    return out
