"""What the stack runs (``invoke status``) and removing it (``invoke destroy``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import ui
from pipeline.aws import cfn, gc, history, scaling
from pipeline.aws.calls import one_line_errors
from pipeline.aws.deployment import Deployment, Runtime
from pipeline.aws.gc import GcPlan
from pipeline.aws.health import HealthSource, Target
from pipeline.aws.session import Clients
from pipeline.aws.tags import COLORS, Color
from pipeline.config import Settings
from pipeline.errors import DeployError

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
    was_live: bool = True  # False: its release never went live (an unfinished or failed deploy)
    # What its Auto Scaling group wants now (its scaling policy or a person may have changed it since
    # the stack's last update set ``capacity``), within its bounds; and whether its policy is in force.
    desired: int | None = None
    bounds: tuple[int, int] | None = None
    scales: bool = False

    def size(self) -> str:
        """The size for the status table: what the group wants, its bounds, whether it scales."""
        n = self.capacity if self.desired is None else self.desired
        if self.bounds is None or n == 0:
            return str(n)
        return f"{n} ({self.bounds[0]}-{self.bounds[1]}{', scales' if self.scales else ''})"


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
                    "was_live": c.was_live,
                    "desired": c.desired,
                    "bounds": list(c.bounds) if c.bounds else None,
                    "scales": c.scales,
                }
                for c in self.colors
            ],
        }


@one_line_errors("status")
def status(settings: Settings, clients: Clients, health: HealthSource | None = None) -> Status | None:
    """The stack's colours, releases, capacities, weights and target health; None if there is none."""
    d = Deployment(settings, clients, Runtime(health=health))
    info = d.read()
    if info is None:
        return None
    try:
        state = d.state(info)
    except DeployError:
        return Status(d.name, info.status, d.url(info), None)
    source = d.source()
    groups = [info.outputs.get(f"{c.capitalize()}ServerGroupName", "") for c in COLORS]
    members: dict[str, set[str]] = {}
    sizes: dict[str, tuple[int, int, int]] = {}  # group -> (desired, min, max)
    names = [g for g in groups if g]
    if names:
        resp = clients.autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=names)
        members = {
            g["AutoScalingGroupName"]: {i["InstanceId"] for i in g.get("Instances", [])}
            for g in resp["AutoScalingGroups"]
        }
        sizes = {
            g["AutoScalingGroupName"]: (int(g["DesiredCapacity"]), int(g["MinSize"]), int(g["MaxSize"]))
            for g in resp["AutoScalingGroups"]
        }
    rows = []
    for color, group in zip(COLORS, groups, strict=True):
        side = state.side(color)
        arn = info.outputs.get(f"{color.capitalize()}TargetGroupArn")
        # The health of the group's own instances (an instance that left the group is deregistering).
        instances = members.get(group, set())
        targets = tuple(t for t in source.targets(arn) if t.target_id in instances) if arn else ()
        size = sizes.get(group)
        rows.append(
            ColorStatus(
                color=color,
                weight=side.weight,
                image_id=side.release.image_id,
                build_id=side.release.build_id,
                instance_type=side.release.instance_type,
                virtualization=side.release.virtualization,
                capacity=side.capacity,
                instances=len(instances),
                targets=targets,
                was_live=history.was_live(d.history, side.release.image_id),
                desired=size[0] if size else None,
                bounds=size[1:] if size else None,
                scales=state.scaling == color and scaling.PARAMETER in info.parameters,
            )
        )
    return Status(d.name, info.status, d.url(info), state.live, tuple(rows))


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
                c.color + (" (never live)" if not c.was_live else " (live)" if st.live == c.color else ""),
                f"{c.weight}%",
                c.image_id,
                c.build_id,
                f"{c.instance_type} ({c.virtualization})",
                c.size(),
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

# States in which DeleteStack is taken at once: every state that is not a running operation, and a
# creation (CloudFormation stops creating and deletes what it made) or an empty change-set stack. Any
# other operation in progress is waited for first.
DELETABLE_NOW = ("CREATE_IN_PROGRESS", "REVIEW_IN_PROGRESS")


@dataclass(frozen=True)
class Destroyed:
    stack: str
    deleted: bool
    collectable: GcPlan | None  # what gc could remove now (None in a dry run: the stack is still there)


@one_line_errors("destroy")
def destroy(
    settings: Settings, clients: Clients, runtime: Runtime | None = None, dry_run: bool = False
) -> Destroyed:
    """Delete the stack in whatever state it is (after confirmation; a running update or rollback is
    waited for first), then plan what gc could remove now that no stack uses the images (``gc.plan``:
    reads only). The AMIs themselves are left for ``invoke gc``."""
    runtime = runtime or Runtime()
    d = Deployment(settings, clients, runtime)
    info = d.read()
    if info is None:
        ui.say(f"stack {d.name} does not exist: nothing to delete")
        return Destroyed(d.name, False, gc.plan(clients, settings))
    ui.say(f"stack {d.name} ({info.status}) and everything in it would be deleted: {d.url(info)}")
    if dry_run:
        return Destroyed(d.name, False, None)
    if not runtime.confirm(f"delete stack {d.name} and all its instances?"):
        raise DeployError(
            "destroy not confirmed: nothing was deleted", hint="pass --yes to skip the question"
        )
    if info.status not in DELETABLE_NOW and info.status.endswith("_IN_PROGRESS"):
        # An update, a rollback or a delete is running: CloudFormation refuses a delete until it ends.
        info = d.wait_stable()
        if info is None:
            ui.done(f"stack {d.name} deleted")
            return Destroyed(d.name, True, gc.plan(clients, settings))
    events = d.events(info.stack_id)
    cfn.delete(d.cf, info.stack_id, d.role())
    cfn.wait(d.cf, info.stack_id, events, d.waiter, "delete")
    ui.done(f"stack {d.name} deleted")
    return Destroyed(d.name, True, gc.plan(clients, settings))
