"""Carry out the steps of a rollout (:mod:`pipeline.aws.rollout`) on a stack, keeping its history, and
roll back when anything fails before the release went live.

The history entry of the rollout is in every update the rollout sends: the first one records it as
running, the "record" step as live (baked), and a rollback as rolled back (and why) or interrupted.

A rollback restores the stack as it was before this run: its template and every parameter (the
network as well as the colours), not what the settings say now, so a bad setting that made the
update fail is not sent again. The other colour gets all the traffic first, at the size its group
has (never less: it kept its instances) and with the scaling policy; the target is scaled to 0 only
after its connections drained. This holds even when the failed update stopped half-way: the restore
is sent whenever the stack differs from what it was, and afterwards the live colour's group is
checked to want its instances again.
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import ui
from pipeline.aws import calls, colors, history, logs, rollout
from pipeline.aws.deployment import Deployment
from pipeline.aws.history import Entry
from pipeline.aws.params import StackState
from pipeline.aws.rollout import Step, opposite
from pipeline.aws.tags import Color
from pipeline.errors import DeployError, PipelineError

log = logging.getLogger(__name__)


def run(
    d: Deployment,
    original: StackState,
    target: Color,
    steps: list[Step],
    entry: Entry,
    hand_back: str = "",
    already_live: bool = False,
) -> None:
    """Carry out ``steps`` for the history entry ``entry`` (already in ``d.history``); on any failure
    before the "record" step, roll back to ``original`` and raise :class:`DeployError`.

    ``hand_back``: the image of the release that was live before; once the new one is recorded live,
    that one's entries say "rolled back by hand" (``invoke rollback``). ``already_live``: the
    release went live before (what is left is scaling the old colour down): nothing rolls back.
    """
    d.begin()
    settled = already_live
    current = attempted = original
    shifted = original.side(target).weight > 0  # the target took traffic: it must drain before it goes
    step = steps[0] if steps else Step("record", "record")
    try:
        for step in steps:
            if step.kind == "update" and step.state is not None:
                # Sent is as good as done: an interrupted update may still complete.
                attempted = step.state
                shifted = shifted or attempted.side(target).weight > 0
                current = d.apply(step.state, step.label)
            elif step.kind == "wait_healthy":
                ui.say(step.label)
                d.gate().wait_healthy(d.subject(target, current), d.settings.deploy.health_timeout_seconds)
            elif step.kind == "bake":
                ui.say(f"{step.label} for {step.seconds:g}s")
                d.gate().watch(d.subject(target, current), step.seconds)
            elif step.kind == "record":
                done = history.finish(d.history, entry.n, "baked", live_at=d.runtime.now())
                if hand_back and hand_back != entry.release.image_id:
                    done = history.handed_back(done, hand_back, entry.release.build_id)
                d.history = done
                current = d.apply(step.state or current, step.label)
                settled = True
            elif step.kind == "retain":
                ui.say(step.label)
                hold(d, step.seconds)
    except (Exception, KeyboardInterrupt) as err:
        if settled:
            other = opposite(target)
            ui.warn(
                f"{target} is live with all the traffic; {other} still runs its instances "
                "(the next invoke deploy scales it down)"
            )
            raise
        interrupted = isinstance(err, KeyboardInterrupt)
        cause, hint = ("interrupted (Ctrl-C or SIGTERM)", None) if interrupted else describe(err)
        if step.kind in ("wait_healthy", "bake") and not interrupted:
            logs.show_failed(d.clients, d.settings, target)  # what its console says, before it goes
        raise _roll_back(
            d, original, current, attempted, target, entry, step, cause, hint, interrupted, shifted
        ) from err


def _roll_back(
    d: Deployment,
    original: StackState,
    current: StackState,
    attempted: StackState,
    target: Color,
    entry: Entry,
    step: Step,
    cause: str,
    hint: str | None,
    interrupted: bool,
    shifted: bool,
) -> DeployError:
    """Roll back (or, with nothing to return to, record the failure); the error to raise."""
    other = opposite(target)
    if original.side(other).capacity == 0:
        # Nothing else runs (a first release, or one resumed before it ever went live).
        d.history = history.finish(d.history, entry.n, "interrupted" if interrupted else "failed", cause)
        try:
            d.wait_stable()
            d.apply(current, f"record that build {entry.release.build_id} did not go live")
        except (Exception, KeyboardInterrupt) as rb:
            log.warning("could not record the failure in the stack: %s", rb)
        return DeployError(
            f"{step.label}: {cause}; no earlier release runs to return to",
            hint=hint or "fix the release and deploy again, or invoke destroy",
        )
    ui.warn(f"{step.label}: {cause}; rolling back")
    d.history = history.finish(d.history, entry.n, "interrupted" if interrupted else "rolled back", cause)
    try:
        restore(d, original, target, attempted, shifted)
    except (Exception, KeyboardInterrupt) as rb:
        log.info("the rollback failed", exc_info=True)
        return DeployError(
            f"{step.label}: {cause}; the rollback failed too: {describe(rb)[0]}",
            hint=hint or "invoke status shows the state; invoke rollback retries",
        )
    return DeployError(
        f"{step.label}: {cause}; rolled back: {other} has 100% of the traffic, {target} has no instances",
        hint=hint or "invoke status shows the state; fix the release and deploy again",
    )


def restore(d: Deployment, original: StackState, target: Color, now: StackState, shifted: bool) -> None:
    """Return the stack to ``original``: the weights first, the target's instances after they drained."""
    other = opposite(target)
    weights, final = rollout.restore_states(original, target, now)
    d.wait_stable()
    if shifted:
        d.apply(weights, f"roll back: {other} 100%, {target} 0% (its instances drain)", restoring=True)
        ui.say(f"waiting {colors.DEREGISTRATION_DELAY}s for {target}'s connections to drain")
        hold(d, colors.DEREGISTRATION_DELAY)
    sent = d.apply(final, f"roll back: {other} 100%, {target} 0 instances", restoring=True)
    d.read()
    wanted = sent.side(other).capacity
    have = d.group_capacity(other)
    if have is not None and have != wanted:
        raise DeployError(
            f"stack {d.name}: after the rollback {other}'s group wants {have} instance(s), not {wanted}",
            hint="invoke status shows the stack; invoke rollback sends its parameters again",
        )


def hold(d: Deployment, seconds: float) -> None:
    end = d.runtime.clock() + seconds
    while (remaining := end - d.runtime.clock()) > 0:
        d.runtime.sleep(min(remaining, 60.0))


def describe(err: BaseException) -> tuple[str, str | None]:
    """What went wrong (one line, no hint) and the hint that goes with it, if any."""
    if isinstance(err, (ClientError, BotoCoreError)):
        err = calls.describe(err)
    if isinstance(err, PipelineError):
        return " ".join(err.message.split()), err.hint
    return str(err) or type(err).__name__, None
