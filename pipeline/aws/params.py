"""The release state a stack's parameters carry (pure): per colour the image, build, instance type and
virtualization it runs, its capacity and its share of the traffic; which colour scales, and the bounds
of a running colour's group (:mod:`pipeline.aws.scaling`). (Which instance types boot which images:
:mod:`pipeline.aws.pv`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pipeline.aws import scaling
from pipeline.aws.tags import COLORS, Color
from pipeline.images.devices import Virtualization


@dataclass(frozen=True)
class Release:
    """What one colour runs: an image and the instance type it runs on."""

    image_id: str
    build_id: str
    instance_type: str
    virtualization: Virtualization


@dataclass(frozen=True)
class Side:
    """One colour: its release, how many instances run it and its share of the traffic (0-100)."""

    release: Release
    capacity: int
    weight: int


@dataclass(frozen=True)
class StackState:
    """Every parameter of the stack. Each stack update passes all of them (never UsePreviousValue)."""

    blue: Side
    green: Side
    vpc_id: str = ""
    subnet_ids: tuple[str, ...] = ()
    # The bounds of a running colour's group (from the settings, like the network) and the colour
    # whose scaling policy is in force (None: no colour scales, as during a rollout).
    min_capacity: int = 1
    max_capacity: int = 1
    scaling: Color | None = None

    def side(self, color: Color) -> Side:
        return self.blue if color == "blue" else self.green

    def with_side(self, color: Color, side: Side) -> StackState:
        return replace(self, blue=side) if color == "blue" else replace(self, green=side)

    @property
    def live(self) -> Color | None:
        """The colour that takes all the traffic, or None in the middle of a shift."""
        for color in COLORS:
            if self.side(color).weight == 100:
                return color
        return None

    def parameters(self) -> list[dict[str, str]]:
        """The CloudFormation ``Parameters`` list, every key explicit, sorted by key."""
        values: dict[str, str] = {}
        for color in COLORS:
            side = self.side(color)
            p = color.capitalize()
            values[f"{p}ImageId"] = side.release.image_id
            values[f"{p}BuildId"] = side.release.build_id
            values[f"{p}InstanceType"] = side.release.instance_type
            values[f"{p}Virtualization"] = side.release.virtualization
            values[f"{p}Capacity"] = str(side.capacity)
            values[f"{p}Weight"] = str(side.weight)
        if self.vpc_id:
            values["VpcId"] = self.vpc_id
            values["SubnetIds"] = ",".join(self.subnet_ids)
        values.update(scaling.parameters(self))
        return [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]

    @classmethod
    def from_parameters(
        cls, params: Mapping[str, str], vpc_id: str = "", subnet_ids: Sequence[str] = ()
    ) -> StackState:
        """The state a stack's parameters describe; raises ``KeyError``/``ValueError`` if they do not.
        (The bounds are the caller's, from the settings.) A stack made before the scaling policy moved
        with the releases has no ``ScalingColor``: its live colour is the one that scales."""
        sides: dict[str, Side] = {}
        for color in COLORS:
            p = color.capitalize()
            virt = params[f"{p}Virtualization"]
            if virt not in ("hvm", "pv"):
                raise ValueError(f"{p}Virtualization={virt!r}")
            release = Release(
                image_id=params[f"{p}ImageId"],
                build_id=params[f"{p}BuildId"],
                instance_type=params[f"{p}InstanceType"],
                virtualization="pv" if virt == "pv" else "hvm",
            )
            sides[color] = Side(release, int(params[f"{p}Capacity"]), int(params[f"{p}Weight"]))
        state = cls(sides["blue"], sides["green"], vpc_id, tuple(subnet_ids))
        scales = params.get(scaling.PARAMETER)
        if scales is None:
            return replace(state, scaling=state.live)
        if scales not in (*COLORS, scaling.NONE):
            raise ValueError(f"{scaling.PARAMETER}={scales!r}")
        return replace(state, scaling="blue" if scales == "blue" else "green" if scales == "green" else None)
