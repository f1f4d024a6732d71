"""Planning a rollout from the stack's state (pure): the steps, and where a failure returns to."""

from __future__ import annotations

from dataclasses import replace

from pipeline.aws import rollout
from pipeline.aws.params import Release, Side, StackState

V1 = Release("ami-0000000000000v1", "1111111111aa", "t3.micro", "hvm")
V2 = Release("ami-0000000000000v2", "2222222222bb", "t3.micro", "hvm")
V0 = Release("ami-0000000000000v0", "0000000000cc", "t3.micro", "hvm")


def weights(s: StackState) -> tuple[int, int]:
    return s.blue.weight, s.green.weight


def live(blue: Side, green: Side, scales: str | None) -> StackState:
    """A state of ``blue`` and ``green`` in which ``scales`` has the scaling policy."""
    return StackState(blue, green, scaling="blue" if scales == "blue" else "green" if scales else None)


def test_release_goes_to_the_idle_colour_then_traffic_shifts_in_steps_then_the_old_colour_scales_down() -> (
    None
):
    current = live(Side(V1, 2, 100), Side(V1, 0, 0), "blue")
    steps = rollout.rollout_steps(current, "green", V2, 2, (10, 50, 100), 60, 300)
    assert [(s.kind, s.label) for s in steps] == [
        ("update", "start 2 instance(s) of build 2222222222bb as green"),
        ("wait_healthy", "wait until green is healthy"),
        ("update", "shift 10% of the traffic to green"),
        ("bake", "bake green at 10%"),
        ("update", "shift 50% of the traffic to green"),
        ("bake", "bake green at 50%"),
        ("update", "shift 100% of the traffic to green"),
        ("bake", "bake green at 100%"),
        ("record", "record build 2222222222bb as live"),
        ("retain", "keep blue running for 300s"),
        ("update", "scale blue to 0 (its launch template and image stay for rollback)"),
    ]
    states = [s.state for s in steps if s.state is not None]
    assert states[0] == live(Side(V1, 2, 100), Side(V2, 2, 0), "blue")  # blue still scales
    assert [weights(s) for s in states] == [(100, 0), (90, 10), (50, 50), (0, 100), (0, 100), (0, 100)]
    # no colour scales while the traffic moves; green does once it is recorded live, and keeps it
    assert [s.scaling for s in states] == ["blue", None, None, None, "green", "green"]
    assert states[-1] == live(Side(V1, 0, 0), Side(V2, 2, 100), "green")  # blue keeps V1 for rollback
    assert [s.seconds for s in steps if s.kind == "bake"] == [60, 60, 60]
    assert [s.full for s in steps if s.kind == "bake"] == [False, False, True]


def test_an_idle_colour_still_running_an_older_release_is_scaled_down_before_it_gets_the_new_image() -> None:
    """A launch template change does not replace running instances, so they must go first."""
    current = StackState(Side(V0, 1, 0), Side(V1, 1, 100))  # blue kept warm by an interrupted retention
    steps = rollout.rollout_steps(current, "blue", V2, 1, (50, 100), 5, 0)
    updates = [s.state for s in steps if s.state is not None]
    assert updates[0] == StackState(Side(V0, 0, 0), Side(V1, 1, 100))
    assert updates[1] == StackState(Side(V2, 1, 0), Side(V1, 1, 100))


def test_capacity_follows_the_setting_and_identical_updates_are_dropped() -> None:
    current = StackState(Side(V1, 1, 100), Side(V2, 3, 0))  # green already runs V2 on 3 instances
    steps = rollout.rollout_steps(current, "green", V2, 3, (100,), 0, 0)
    assert steps[0].kind == "wait_healthy"  # nothing to change before the health gate
    updates = [s.state for s in steps if s.state is not None]
    assert updates == [
        StackState(Side(V1, 1, 0), Side(V2, 3, 100)),
        live(Side(V1, 1, 0), Side(V2, 3, 100), "green"),  # recorded live: green scales
        live(Side(V1, 0, 0), Side(V2, 3, 100), "green"),
    ]


def test_a_rollout_resumed_from_a_split_bakes_again_at_the_weight_it_had_reached() -> None:
    current = StackState(Side(V1, 1, 50), Side(V2, 1, 50))
    steps = rollout.rollout_steps(current, "blue", V1, 1, (100,), 5, 0)
    assert [s.kind for s in steps] == ["wait_healthy", "bake", "update", "bake", "record", "retain", "update"]
    assert (steps[1].label, steps[1].full) == ("bake blue at 50%", False)
    assert weights(steps[2].state or current) == (100, 0)


def test_a_rollout_resumed_at_100_percent_bakes_records_and_scales_the_old_colour_down() -> None:
    """Killed during the final bake: the re-run watches the bake again, then finishes the retention."""
    current = StackState(Side(V1, 1, 0), Side(V2, 1, 100))
    steps = rollout.rollout_steps(current, "green", V2, 1, (10, 50, 100), 5, 60)
    assert [(s.kind, s.full) for s in steps] == [
        ("wait_healthy", False),
        ("bake", True),
        ("record", False),
        ("retain", False),
        ("update", False),
    ]
    assert steps[-1].state == live(Side(V1, 0, 0), Side(V2, 1, 100), "green")


def test_a_failure_moves_the_traffic_back_first_and_scales_the_target_down_second() -> None:
    original = StackState(Side(V1, 2, 100), Side(V0, 0, 0))
    shifting = StackState(Side(V1, 2, 50), Side(V2, 2, 50))
    weights_back, final = rollout.restore_states(original, "green", shifting)
    # blue takes the traffic back with its scaling policy; green's instances still run, then they go
    assert weights_back == live(Side(V1, 2, 100), Side(V2, 2, 0), "blue")
    assert final == live(Side(V1, 2, 100), Side(V0, 0, 0), "blue")  # green's old release, no instances
    kept_warm = StackState(Side(V1, 2, 100), Side(V0, 2, 0))
    assert rollout.restore_states(kept_warm, "green", kept_warm)[1] == live(
        Side(V1, 2, 100), Side(V0, 0, 0), "blue"
    )
    split = StackState(Side(V1, 1, 50), Side(V2, 1, 50))
    assert rollout.restore_states(split, "blue", split) == (
        live(Side(V1, 1, 0), Side(V2, 1, 100), "green"),
        live(Side(V1, 0, 0), Side(V2, 1, 100), "green"),
    )


def test_parameter_diff_names_each_changed_parameter() -> None:
    before = replace(rollout.first_state(V1, 1), scaling="blue")
    after = before.with_side("green", Side(V2, 1, 0))
    assert rollout.parameter_diff(before, after) == [
        ("GreenBuildId", V1.build_id, V2.build_id),
        ("GreenCapacity", "0", "1"),
        ("GreenImageId", V1.image_id, V2.image_id),
    ]
    assert rollout.parameter_diff(before, before) == []
