"""The steps of a blue/green rollout, planned from the stack's current state (pure).

A rollout moves one colour (the *target*) to a release while the other colour keeps serving:

1. if the target still runs an older release on instances, scale it to 0 first (a launch template
   change does not replace running instances);
2. give the target the release and its start capacity (the live colour's current size,
   :func:`pipeline.aws.scaling.start_capacity`; a target that already runs the release keeps its
   size), weight unchanged (normally 0);
3. wait until all of its targets are healthy;
4. shift the traffic in steps (``deploy.weight_steps``), holding each for ``deploy.bake_seconds``
   while watching its health; a rollout resumed after an interruption first bakes again at the weight
   it had reached. From the first shift on no colour has a scaling policy, so neither changes size
   while the traffic moves;
5. record the release as live in the stack's history (it has all the traffic and finished its bake);
   its colour gets the scaling policy;
6. wait ``deploy.retention_seconds``, then scale the other colour to 0. Its launch template keeps its
   image, so ``invoke rollback`` can bring it back.

Any failure before step 5 returns to :func:`restore_states`: first the other colour takes all the
traffic again with its release and the scaling policy, at the size its group has (what
:meth:`pipeline.aws.deployment.Deployment.apply` sends for a colour that keeps running), then, once
the target's connections have drained (the target groups' deregistration delay), the target goes
back to its previous release with no instances. Two updates, because within one update
CloudFormation orders the listener rule and the group as it likes: the instances could leave while
the rule still sends them requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pipeline.aws import scaling
from pipeline.aws.params import Release, Side, StackState
from pipeline.aws.tags import COLORS, Color

StepKind = Literal["update", "wait_healthy", "bake", "record", "retain"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    label: str
    state: StackState | None = None  # the parameters an update sends
    seconds: float = 0.0  # how long a bake or the retention lasts
    full: bool = False  # the bake of the step that gave the target 100% of the traffic


def opposite(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


def rollout_steps(
    current: StackState,
    target: Color,
    release: Release,
    capacity: int,
    weights: Sequence[int],
    bake_seconds: float,
    retention_seconds: float,
) -> list[Step]:
    """The steps that move ``target`` to ``release`` and all the traffic to it (from wherever an
    earlier, interrupted rollout of the same release left it). ``capacity``: how many instances the
    target starts with, unless it already runs the release (then it keeps its size)."""
    other = opposite(target)
    steps: list[Step] = []
    state = current

    def update(new: StackState, label: str) -> None:
        nonlocal state
        if new != state:
            steps.append(Step("update", label, new))
            state = new

    idle = current.side(target)
    if idle.capacity > 0 and idle.release == release:
        capacity = idle.capacity
    if idle.capacity > 0 and idle.release != release:
        update(
            state.with_side(target, Side(idle.release, 0, 0)),
            f"scale {target} (build {idle.release.build_id}) to 0 before it gets the new image",
        )
    update(
        state.with_side(target, Side(release, capacity, state.side(target).weight)),
        f"start {capacity} instance(s) of build {release.build_id} as {target}",
    )
    steps.append(Step("wait_healthy", f"wait until {target} is healthy"))
    reached = state.side(target).weight
    if reached > 0:  # an interrupted rollout had given it this share: watch it again before going on
        steps.append(Step("bake", f"bake {target} at {reached}%", seconds=bake_seconds, full=reached == 100))
    for weight in weights:
        if weight <= state.side(target).weight:
            continue
        shifted = state.with_side(target, replace(state.side(target), weight=weight))
        update(
            replace(shifted.with_side(other, replace(state.side(other), weight=100 - weight)), scaling=None),
            f"shift {weight}% of the traffic to {target}",
        )
        steps.append(Step("bake", f"bake {target} at {weight}%", seconds=bake_seconds, full=weight == 100))
    if state.side(target).weight != 100:  # weight_steps always end at 100 (config checks it)
        raise ValueError(f"weight steps {list(weights)} do not end at 100")
    state = replace(state, scaling=target)
    steps.append(Step("record", f"record build {release.build_id} as live", state))
    steps.extend(scale_down_steps(state, other, retention_seconds))
    return steps


def scale_down_steps(state: StackState, color: Color, seconds: float) -> list[Step]:
    """Hold ``seconds``, then scale ``color`` (which has no traffic) to 0, if it still has instances."""
    if state.side(color).capacity == 0:
        return []
    return [
        Step("retain", f"keep {color} running for {seconds:g}s", seconds=seconds),
        Step(
            "update",
            f"scale {color} to 0 (its launch template and image stay for rollback)",
            state.with_side(color, replace(state.side(color), capacity=0)),
        ),
    ]


def restore_states(original: StackState, target: Color, now: StackState) -> tuple[StackState, StackState]:
    """Where a failed rollout returns to, in two updates: (1) the other colour takes all the traffic
    with its release and the scaling policy (its size: what its group has), the target none (its instances
    still run while they drain); (2) the target back on its previous release with no instances."""
    other = opposite(target)
    weights = original.with_side(other, replace(original.side(other), weight=100)).with_side(
        target, replace(now.side(target), weight=0)
    )
    weights = replace(weights, scaling=other)
    return weights, weights.with_side(target, Side(original.side(target).release, 0, 0))


def first_state(
    release: Release,
    capacity: int,
    vpc_id: str = "",
    subnet_ids: Sequence[str] = (),
    limits: tuple[int, int] | None = None,
) -> StackState:
    """A new stack: the release on blue with all the traffic (it scales once it went live); green
    holds the same release with no instances. ``limits``: a running colour's (min, max) size."""
    lo, hi = limits or (capacity, capacity)
    return StackState(
        Side(release, capacity, 100), Side(release, 0, 0), vpc_id, tuple(subnet_ids), lo, hi, None
    )


def parameter_diff(before: StackState | None, after: StackState) -> list[tuple[str, str, str]]:
    """(parameter, old value, new value) for every parameter an update changes."""
    old = {p["ParameterKey"]: p["ParameterValue"] for p in before.parameters()} if before else {}
    return [
        (p["ParameterKey"], old.get(p["ParameterKey"], ""), p["ParameterValue"])
        for p in after.parameters()
        if old.get(p["ParameterKey"]) != p["ParameterValue"]
    ]


def color_keys() -> set[str]:
    """The parameter names that carry the release state (both colours, and which one scales)."""
    fields = ("ImageId", "BuildId", "InstanceType", "Virtualization", "Capacity", "Weight")
    return {f"{c.capitalize()}{f}" for c in COLORS for f in fields} | {scaling.PARAMETER}
