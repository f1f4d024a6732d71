"""One app/env stack during a rollout: read it, apply parameter sets, judge a colour's health, and run
the steps of :mod:`pipeline.aws.rollout` with rollback on failure.

Nothing here prompts: the caller passes ``confirm`` in :class:`Runtime` (tasks.py asks the user, or
``--yes`` answers). Waiting uses the injected ``sleep`` and ``clock``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import ui
from pipeline.aws import calls, cfn, probe, rollout, stack, tags
from pipeline.aws.health import POLL_SECONDS, AwsHealth, HealthGate, HealthSource, Subject
from pipeline.aws.params import StackState
from pipeline.aws.rollout import Step, opposite
from pipeline.aws.session import Clients
from pipeline.aws.tags import Color
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError

log = logging.getLogger(__name__)

LOCAL_POLL_SECONDS = 1.0  # the local cloud checks its targets every second (AWS: every 10 s)


def capacity(settings: Settings) -> int:
    """Instances per colour: ``deploy.capacity`` on AWS; ``local.capacity`` with the local AWS, whose
    instances are VMs on this machine."""
    return settings.local.capacity if settings.aws.endpoint == "local" else settings.deploy.capacity


def _never(_question: str) -> bool:
    return False


@dataclass
class Runtime:
    """How a rollout waits, asks and judges health (tests replace all of it)."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    confirm: Callable[[str], bool] = _never  # asked before any change; tasks.py prompts or --yes
    health: HealthSource | None = None  # None: ELBv2 target health, CloudWatch and HTTP probes


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
            tags.scope(settings.app.name, settings.env, {tags.TARGET: settings.image.target})
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

    def local_cloud(self) -> bool:
        """Whether the stack lives in the embedded local AWS (a server on this machine, not a moto a
        test runs in-process), whose instances run as VMs behind the local load balancer."""
        return self.settings.aws.endpoint == "local" and self.clients.endpoint_url is not None

    def url(self, info: cfn.StackInfo | None = None) -> str:
        """The app's address: the stack's ``Url`` output, or where the local load balancer answers it."""
        info = info or self.info
        url = info.outputs.get("Url", "") if info else ""
        if url and self.local_cloud():
            from pipeline.local.control import local_url

            return local_url(url)
        return url

    def preflight(self, new_instances: int) -> None:
        """Before a change that starts ``new_instances``: in the local cloud, refuse what this machine
        cannot run (memory for the VMs, the listener's port)."""
        if not self.local_cloud():
            return
        from pipeline.local import control

        control.check_listener(self.settings, self.info.outputs.get("Url", "") if self.info else "")
        control.check_room(self.settings, new_instances)

    def live_template_differs(self) -> bool:
        body = self.cf.get_template(StackName=self.name, TemplateStage="Original")["TemplateBody"]
        deployed = json.loads(body) if isinstance(body, str) else body
        return bool(deployed != json.loads(self.template))

    def parameters(self, state: StackState) -> list[dict[str, str]]:
        """Every parameter of ``state`` and the probe token: the stack's while the releases stay, a new
        one when a colour gets another release (:mod:`pipeline.aws.probe`)."""
        return probe.with_token(state.parameters(), self.info.parameters if self.info else None)

    # -- changing ---------------------------------------------------------------------------------------

    def events(self, stack_id: str) -> cfn.EventStream:
        return cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]")).open()

    def create(self, state: StackState) -> None:
        ui.say(f"creating stack {self.name}")
        stack_id = cfn.create(self.cf, self.name, self.template, self.parameters(state), self.stack_tags)
        self.template_sent = True
        events = cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]"))
        self.info = cfn.wait(self.cf, stack_id, events, self.waiter, "create")

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
        changed = cfn.update(self.cf, self.name, self.template, self.parameters(state), self.stack_tags)
        self.template_sent = True
        if changed:
            self.info = cfn.wait(self.cf, info.stack_id, events, self.waiter, f"update ({label})")

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
        if self.local_cloud():
            probe_url = self.url()  # the local load balancer
        token = self.info.parameters.get(probe.PARAMETER, "") if self.info else ""
        return AwsHealth(self.clients.elbv2(), self.clients.client("cloudwatch"), probe_url, token)

    def gate(self) -> HealthGate:
        return HealthGate(
            self.source(),
            self.runtime.sleep,
            self.runtime.clock,
            lambda line: ui.say(f"  {line}"),
            poll=LOCAL_POLL_SECONDS if self.local_cloud() else POLL_SECONDS,
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
    if isinstance(err, (ClientError, BotoCoreError)):
        err = calls.describe(err)
    if isinstance(err, PipelineError):
        return " ".join(err.message.split()), err.hint
    return str(err) or type(err).__name__, None
