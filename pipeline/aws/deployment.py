"""One app/env stack during a rollout: read it (its release state and history), apply parameter sets,
judge a colour's health. (Running the steps of a rollout, with rollback on failure:
:mod:`pipeline.aws.runner`.)

Nothing here prompts: the caller passes ``confirm`` in :class:`Runtime` (the task asks the user, or
``--yes`` answers). Waiting uses the injected ``sleep`` and ``clock``; the history's times come from
``now`` (the wall clock).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pipeline import ui
from pipeline.aws import cfn, colors, history, probe, rollout, scaling, stack, tags
from pipeline.aws.health import POLL_SECONDS, AwsHealth, HealthGate, HealthSource, Subject
from pipeline.aws.history import History
from pipeline.aws.params import StackState
from pipeline.aws.session import Clients
from pipeline.aws.tags import COLORS, Color
from pipeline.config import Settings
from pipeline.errors import DeployError

log = logging.getLogger(__name__)

LOCAL_POLL_SECONDS = 1.0  # the local cloud checks its targets every second (AWS: every 10 s)


def capacity(settings: Settings) -> int:
    """The first release's instances: ``deploy.capacity`` on AWS; ``local.capacity`` with the local
    AWS, whose instances are VMs on this machine. (A later release starts at the live colour's size:
    :func:`pipeline.aws.scaling.start_capacity`.)"""
    return settings.local.capacity if settings.aws.endpoint == "local" else settings.deploy.capacity


def _never(_question: str) -> bool:
    return False


@dataclass
class Runtime:
    """How a rollout waits, asks and judges health (tests replace all of it)."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    confirm: Callable[[str], bool] = _never  # asked before any change; the task prompts or --yes
    health: HealthSource | None = None  # None: ELBv2 target health, CloudWatch and HTTP probes
    now: Callable[[], float] = time.time  # the wall clock: when a release started and went live


def _plain(parameters: list[dict[str, str]]) -> dict[str, str]:
    return {p["ParameterKey"]: p["ParameterValue"] for p in parameters}


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
        self.history: History = ()  # the history as this run last sent it (or read it)
        # The stack as it was before this run changed it: what a rollback restores.
        self.original: cfn.StackInfo | None = None
        self.original_template = ""
        self._role = ""

    # -- reading ----------------------------------------------------------------------------------------

    def read(self) -> cfn.StackInfo | None:
        self.info = cfn.describe(self.cf, self.name)
        return self.info

    def state(self, info: cfn.StackInfo) -> StackState:
        """The release state the stack's parameters describe (with the network and the groups' bounds
        the settings give); also loads its history."""
        try:
            state = StackState.from_parameters(
                info.parameters, self.settings.deploy.vpc_id, self.settings.deploy.subnet_ids
            )
            lo, hi = scaling.bounds(self.settings)
            state = replace(state, min_capacity=lo, max_capacity=hi)
        except (KeyError, ValueError) as err:
            raise DeployError(
                f"stack {self.name}: its parameters do not describe a blue/green release ({err})",
                hint="was it made by another tool? remove it with invoke destroy or pick another env",
            ) from err
        self.history = self.read_history(info, state)
        return state

    def read_history(self, info: cfn.StackInfo, state: StackState) -> History:
        raw = info.parameters.get(history.PARAMETER)
        if raw is None:  # a stack made before the history was kept: what it runs counts as live
            return history.seeded(state)
        try:
            return history.decode(raw) if raw else ()
        except ValueError as err:
            raise DeployError(
                f"stack {self.name}: its {history.PARAMETER} parameter is not the pipeline's ({err})",
                hint="was it edited by hand? restore the value it had from the stack's events",
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

    def deployed_template(self) -> str:
        body = self.cf.get_template(StackName=self.name, TemplateStage="Original")["TemplateBody"]
        return body if isinstance(body, str) else json.dumps(body)

    def live_template_differs(self) -> bool:
        return bool(json.loads(self.deployed_template()) != json.loads(self.template))

    def bounds_differ(self, info: cfn.StackInfo, state: StackState) -> bool:
        """Whether the settings give the groups other bounds than the stack has (a change of
        ``deploy.min_capacity``/``max_capacity`` is sent with the next update, like a template change)."""
        lo, hi = info.parameters.get(scaling.MIN_PARAMETER), info.parameters.get(scaling.MAX_PARAMETER)
        if lo is None or hi is None:
            return False  # a template from before the bounds: it differs from the one sent now anyway
        return (lo, hi) != (str(state.min_capacity), str(state.max_capacity))

    def begin(self) -> None:
        """Remember the stack as it is before the first change (what a failed rollout restores)."""
        if self.original is None and self.info is not None:
            self.original = self.info
            self.original_template = self.deployed_template()

    # -- changing ---------------------------------------------------------------------------------------

    def role(self) -> str:
        """The ARN of the CloudFormation service role every stack call passes (made on the local AWS
        when it is missing; on AWS an administrator deploys it)."""
        if not self._role:
            from pipeline.aws import bootstrap

            local = self.settings.aws.endpoint == "local"
            self._role = bootstrap.ensure_role(self.settings, self.clients, self.waiter, create=local)
        return self._role

    def events(self, stack_id: str) -> cfn.EventStream:
        return cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]")).open()

    def create(self, state: StackState) -> None:
        ui.say(f"creating stack {self.name}")
        _, wanted = self.wanted(state)
        stack_id = cfn.create(
            self.cf, self.name, self.template, _listed(wanted), self.stack_tags, self.role()
        )
        self.template_sent = True
        events = cfn.EventStream(self.cf, stack_id, lambda line: ui.say(f"  [dim]{line}[/dim]"))
        self.info = cfn.wait(self.cf, stack_id, events, self.waiter, "create")

    def wanted(self, state: StackState, restoring: bool = False) -> tuple[str, dict[str, str]]:
        """The template and every parameter an update to ``state`` sends (with the history).

        ``restoring``: the stack as it was before this run (template, network and every other
        parameter), with only the colours' release state taken from ``state``.
        """
        # the probe token: the stack's while the releases stay, a new one when a colour gets another
        # release (:mod:`pipeline.aws.probe`)
        params = _plain(probe.with_token(state.parameters(), self.info.parameters if self.info else None))
        template = self.template
        if restoring and self.original is not None:
            template = self.original_template
            keys = rollout.color_keys()
            params = {**self.original.parameters, **{k: v for k, v in params.items() if k in keys}}
        declared = set(json.loads(template).get("Parameters", {}))
        if history.PARAMETER in declared:
            on_colours = {state.side(c).release.image_id for c in COLORS}
            params[history.PARAMETER] = history.encode(history.trim(self.history, on_colours))
        return template, {k: v for k, v in params.items() if k in declared}

    def apply(self, state: StackState, label: str, restoring: bool = False) -> StackState:
        """Update the stack to ``state`` (every parameter passed, the history included) and wait for
        it; return the state sent. A colour that keeps running its release is sent at the size its
        group has now (:meth:`observed`), so the update never undoes what its scaling policy did. A
        no-op when the stack already has exactly these parameters and this run already sent the
        template (``restoring``: when it has the template it had before this run)."""
        info = self.read()
        if info is None:
            raise DeployError(f"stack {self.name} disappeared during the rollout", hint="invoke status")
        template, wanted = self.wanted(state, restoring)
        state = self.observed(state, info, _limits(wanted))
        template, wanted = self.wanted(state, restoring)
        same = all(info.parameters.get(k) == v for k, v in wanted.items())
        if same and (
            json.loads(self.deployed_template()) == json.loads(template) if restoring else self.template_sent
        ):
            log.info("%s: stack already has these parameters", label)
            return state
        ui.say(f"stack update: {label}")
        events = self.events(info.stack_id)
        changed = cfn.update(self.cf, self.name, template, _listed(wanted), self.stack_tags, self.role())
        self.template_sent = template == self.template
        if changed:
            self.info = cfn.wait(self.cf, info.stack_id, events, self.waiter, f"update ({label})")
        elif not same:
            raise DeployError(
                f"stack {self.name}: CloudFormation found nothing to change in an update of its parameters",
                hint="the template must use every parameter it declares; invoke synth and deploy again",
            )
        return state

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

    def group_capacity(self, color: Color) -> int | None:
        """How many instances the colour's Auto Scaling group wants (None: no such group)."""
        return self.group_capacities().get(color)

    def group_capacities(self, info: cfn.StackInfo | None = None) -> dict[Color, int]:
        """The desired capacity of each colour's group as Auto Scaling has it now (what a scaling
        policy or a person set), one DescribeAutoScalingGroups for both."""
        info = info or self.info
        outputs = info.outputs if info is not None else {}
        names = {outputs.get(f"{c.capitalize()}ServerGroupName", ""): c for c in COLORS}
        names.pop("", None)
        if not names:
            return {}
        groups = self.clients.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=list(names))
        return {
            names[g["AutoScalingGroupName"]]: int(g["DesiredCapacity"])
            for g in groups.get("AutoScalingGroups", [])
            if g["AutoScalingGroupName"] in names
        }

    def observed(
        self, state: StackState, info: cfn.StackInfo | None = None, limits: tuple[int, int] | None = None
    ) -> StackState:
        """``state`` with each colour that keeps running its release (it runs it on instances in the
        stack now, and ``state`` keeps it running) at the size its group wants now, within ``limits``
        (default: ``state``'s bounds). The pipeline chooses a colour's size only when it starts or
        stops it; in between the size is the scaling policy's (or a person's)."""
        info = info or self.info
        if info is None:
            return state
        try:
            deployed = StackState.from_parameters(info.parameters)
        except (KeyError, ValueError):
            return state
        keep = [
            c
            for c in COLORS
            if state.side(c).capacity > 0
            and deployed.side(c).capacity > 0
            and state.side(c).release == deployed.side(c).release
        ]
        wants = self.group_capacities(info) if keep else {}
        bounds = limits or (state.min_capacity, state.max_capacity)
        for c in keep:
            if c in wants:
                state = state.with_side(c, replace(state.side(c), capacity=scaling.clamp(wants[c], bounds)))
        return state

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
                health_path=self.settings.app.health_path,
                version_path=self.settings.app.version_path,
            )
        except KeyError as err:
            raise DeployError(f"stack {self.name} has no output {err}", hint="invoke status") from err


def _limits(params: Mapping[str, str]) -> tuple[int, int]:
    """The (min, max) size of a running colour's group that ``params`` give (a template without such
    parameters sizes a running colour by its capacity alone: any size goes)."""
    lo, hi = params.get(scaling.MIN_PARAMETER), params.get(scaling.MAX_PARAMETER)
    if lo is None or hi is None:
        return (0, colors.MAX_CAPACITY)
    return int(lo), int(hi)


def _listed(params: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())]
