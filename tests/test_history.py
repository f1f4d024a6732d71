"""The release history kept in the stack's ``History`` parameter (pure): its encoding within
CloudFormation's 4,096-byte limit for a parameter value, and the questions rollback and gc ask it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.aws import history
from pipeline.aws.history import Entry
from pipeline.aws.params import Release, Side, StackState

T0 = 1_800_000_000


def release(n: int) -> Release:
    return Release(f"ami-{n:017x}", f"{n:012x}", "t3.micro", "hvm")


V1, V2, V3 = release(1), release(2), release(3)


def test_entries_round_trip_through_the_parameter_value() -> None:
    h, e1 = history.start((), "deploy", V1, "blue", T0)
    h = history.finish(h, e1.n, "baked", live_at=T0 + 60)
    h, e2 = history.start(
        h, "deploy", replace(V2, virtualization="pv", instance_type="m3.medium"), "green", T0 + 100
    )
    h = history.finish(h, e2.n, "rolled back", 'bake green at 50%: green became unhealthy, 0/1 "healthy"')
    h, _e3 = history.start(h, "rollback", V1, "blue", T0 + 200)
    text = history.encode(h)
    assert history.decode(text) == h
    assert [e.n for e in h] == [1, 2, 3]
    assert (h[1].outcome, h[1].was_live, h[2].outcome) == ("rolled back", False, "running")
    assert h[0].record()["live_at"] == "2027-01-15T08:01:00Z"


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", "[2]", '[1, ["x"]]', '[1, [1,"d","b","ami-1","t3.micro","vmx","b",1,0,"ok",""]]'],
)
def test_a_value_the_pipeline_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        history.decode(text)


def test_starting_an_entry_marks_the_ones_left_running_as_interrupted() -> None:
    h, killed = history.start((), "deploy", V2, "green", T0)
    h, new = history.start(h, "deploy", V3, "green", T0 + 5)
    assert [(e.n, e.outcome) for e in h] == [(killed.n, "interrupted"), (new.n, "running")]
    assert history.stopped(h, keep=new.n) == h  # a resumed entry stays running
    assert [e.outcome for e in history.stopped(h)] == ["interrupted", "interrupted"]


def test_the_last_live_release_skips_what_never_went_live_and_what_was_rolled_back_by_hand() -> None:
    h: tuple[Entry, ...] = ()
    for n, rel in enumerate((V1, V2), start=1):
        h, e = history.start(h, "deploy", rel, "blue" if n == 1 else "green", T0 + n)
        h = history.finish(h, e.n, "baked", live_at=T0 + n)
    h, _e3 = history.start(h, "deploy", V3, "blue", T0 + 10)  # killed while blue started: never live
    assert history.last_live(h) == h[1]  # v2, live now
    assert history.last_live(h, exclude=V2.image_id) == h[0]  # v1: where invoke rollback goes
    assert not history.was_live(h, V3.image_id) and history.was_live(h, V1.image_id)
    h = history.handed_back(h, V2.image_id, V1.build_id)  # invoke rollback returned to v1
    assert h[1].describe() == f"rolled back by hand (to build {V1.build_id})"
    assert history.last_live(h) == h[0]
    assert history.last_live(h, exclude=V1.image_id) is None  # v2 was rolled back: not a target again
    assert [e.release for e in history.live_entries(h)] == [V2, V1]  # what gc keeps: went live once


def test_the_history_fits_the_parameter_limit_and_keeps_what_rollback_and_gc_need() -> None:
    h: tuple[Entry, ...] = ()
    reason = "x" * 500  # reasons are cut to a bounded length
    h, first = history.start(h, "deploy", V1, "blue", T0)
    h = history.finish(h, first.n, "baked", live_at=T0)
    for n in range(2, 200):  # many failed deploys after the one live release
        h, e = history.start(h, "deploy", release(n), "green", T0 + n)
        h = history.finish(h, e.n, "rolled back", reason)
    kept = history.trim(h, protect=[V1.image_id])
    assert len(history.encode(kept).encode()) <= history.MAX_BYTES
    assert len(kept) <= history.MAX_ENTRIES
    assert kept[0].release == V1 and kept[0].was_live  # the live release survives, though oldest
    assert kept[-1] == replace(h[-1], reason=reason[: history.MAX_REASON])  # the newest entries stay
    assert [e.n for e in kept[1:]] == sorted(e.n for e in kept[1:])


def test_a_stack_made_before_the_history_counts_what_its_colours_hold_as_live() -> None:
    state = StackState(Side(V1, 0, 0), Side(V2, 1, 100))
    seeded = history.seeded(state)
    assert [(e.n, e.release, e.color, e.outcome) for e in seeded] == [
        (1, V1, "blue", "baked"),
        (2, V2, "green", "baked"),
    ]
    assert history.last_live(seeded, exclude=V2.image_id) == seeded[0]
    assert seeded[0].record()["started"] == "unknown"
    same = history.seeded(StackState(Side(V1, 1, 100), Side(V1, 0, 0)))
    assert [(e.n, e.color) for e in same] == [(1, "blue")]
