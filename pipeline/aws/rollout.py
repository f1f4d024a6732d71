"""The steps of a blue/green rollout, planned from the stack's current state (pure).

A rollout moves one colour (the *target*) to a release while the other colour keeps serving:

1. if the target still runs an older release on instances, scale it to 0 first (a launch template
   change does not replace running instances);
2. give the target the release and the configured capacity (weight unchanged, normally 0);
3. wait until all of its targets are healthy;
4. shift the traffic in steps (``deploy.weight_steps``), holding each for ``deploy.bake_seconds``
   while watching its health;
5. wait ``deploy.retention_seconds``, then scale the other colour to 0. Its launch template keeps its
   image, so ``invoke rollback`` can bring it back.

Any failure before the last bake has passed returns to :func:`restore_state`: the other colour takes
all the traffic again and the target goes back to its previous release with no instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pipeline.aws.params import Release, Side, StackState
from pipeline.aws.tags import COLORS, Color

StepKind = Literal["update", "wait_healthy", "bake", "retain"]


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
    """The steps that move ``target`` to ``release`` and all the traffic to it."""
    other = opposite(target)
    steps: list[Step] = []
    state = current

    def update(new: StackState, label: str) -> None:
        nonlocal state
        if new != state:
            steps.append(Step("update", label, new))
            state = new

    idle = current.side(target)
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
    for weight in weights:
        if weight <= state.side(target).weight:
            continue
        update(
            state.with_side(target, replace(state.side(target), weight=weight)).with_side(
                other, replace(state.side(other), weight=100 - weight)
            ),
            f"shift {weight}% of the traffic to {target}",
        )
        steps.append(Step("bake", f"bake {target} at {weight}%", seconds=bake_seconds, full=weight == 100))
    if state.side(other).capacity > 0:
        steps.append(
            Step("retain", f"keep {other} running for {retention_seconds:g}s", seconds=retention_seconds)
        )
        update(
            state.with_side(other, replace(state.side(other), capacity=0)),
            f"scale {other} to 0 (its launch template and image stay for rollback)",
        )
    return steps


def restore_state(original: StackState, target: Color) -> StackState:
    """Where a failed rollout returns to: the other colour takes all the traffic, at its original
    capacity; the target is back on its previous release with no instances."""
    other = opposite(target)
    back = original.with_side(other, replace(original.side(other), weight=100))
    return back.with_side(target, Side(original.side(target).release, 0, 0))


def first_state(
    release: Release, capacity: int, vpc_id: str = "", subnet_ids: Sequence[str] = ()
) -> StackState:
    """A new stack: the release live on blue; green holds the same release with no instances."""
    return StackState(Side(release, capacity, 100), Side(release, 0, 0), vpc_id, tuple(subnet_ids))


def parameter_diff(before: StackState | None, after: StackState) -> list[tuple[str, str, str]]:
    """(parameter, old value, new value) for every parameter an update changes."""
    old = {p["ParameterKey"]: p["ParameterValue"] for p in before.parameters()} if before else {}
    return [
        (p["ParameterKey"], old.get(p["ParameterKey"], ""), p["ParameterValue"])
        for p in after.parameters()
        if old.get(p["ParameterKey"]) != p["ParameterValue"]
    ]


def color_keys() -> set[str]:
    """The parameter names that carry the release state (both colours)."""
    fields = ("ImageId", "BuildId", "InstanceType", "Virtualization", "Capacity", "Weight")
    return {f"{c.capitalize()}{f}" for c in COLORS for f in fields}
