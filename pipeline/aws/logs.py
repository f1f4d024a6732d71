"""``invoke logs``: the console output of an environment's instances (EC2 GetConsoleOutput).

There is no SSH into the instances, so their serial console is the window into them: the kernel's
boot, the init script's phases, the Erlang VM's logger (start, crash reports, requests answered with
a 5xx). Each line is printed with the instance and its colour in front, so the lines of several
instances can be told apart (and grepped).

On AWS the console comes from ``GetConsoleOutput`` with ``Latest=true``, the serial console as it is
now (Nitro instances; "Only the most recent 64 KB of console output is available", EC2 API reference,
GetConsoleOutput). Instance types that cannot give the latest output (Xen-based, as the PV types
are) refuse the flag; they are asked again without it and give what EC2 buffered at the last state
change. On the local cloud the same call returns the VM's real serial console, base64-encoded as AWS
sends it (botocore decodes it), so this module has one code path.

Which instances: those of the stack's live colour by default (both colours while the traffic is
split), or of ``--colour``, or one ``--instance``. A colour with no instance running shows its most
recently launched ended ones, whose console EC2 keeps for at least an hour: that is where to look
after a release failed its health gate.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import ui
from pipeline.aws import cfn, tags
from pipeline.aws.calls import describe, error_code, one_line_errors
from pipeline.aws.params import StackState
from pipeline.aws.session import Clients
from pipeline.aws.tags import COLORS, Color
from pipeline.config import Settings
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

# What EC2 answers to Latest=true for a type that cannot read the console as it is now. The API
# reference documents the flag for Nitro types only and no error code for the others; both codes that
# EC2 uses for "not for this instance" are taken as that answer.
LATEST_REFUSED = {"UnsupportedOperation", "InvalidParameterCombination", "InvalidParameterValue"}
ENDED_SHOWN = 3  # ended instances shown for a colour that has none running (newest first)
FAILED_LINES = 40  # console lines shown per instance of a colour that failed its health gate
FOLLOW_SECONDS = 2.0  # between two looks with --follow (one call per instance each time)
ANCHOR_LINES = 20  # how many of the lines seen last locate them again in the next look
ENDED = {"shutting-down", "terminated", "stopping", "stopped"}
# Control characters other than tab: a guest's console could move the cursor or retitle the
# operator's terminal; they are shown escaped instead.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

Write = Callable[[str], None]


@dataclass(frozen=True)
class Instance:
    """One instance of the environment and the colour it belongs to."""

    instance_id: str
    color: str
    state: str  # EC2 instance state: pending, running, ..., terminated
    launched: datetime

    def prefix(self, line: str) -> str:
        return f"{self.instance_id} {self.color} | {line}"


# -- which instances ---------------------------------------------------------------------------------


def select(
    clients: Clients, settings: Settings, color: Color | None = None, instance_id: str | None = None
) -> list[Instance]:
    """The instances whose console to show (see the module's docstring); raises a one-line
    :class:`PipelineError` when there are none or the instance is not one of this environment."""
    ec2 = clients.ec2()
    scope = tags.scope(settings.app.name, settings.env)
    name = tags.stack_name(settings.app.name, settings.env)
    if instance_id is not None:
        found = _describe(ec2, tags.filters(scope), [instance_id])
        if not found:
            raise PipelineError(
                f"--instance {instance_id}: not an instance of stack {name}",
                hint=f"invoke logs --env {settings.env} lists the instances of the live colour",
            )
        return found
    colors = [color] if color is not None else _live_colors(clients, name)
    chosen: list[Instance] = []
    everything = _describe(ec2, tags.filters(scope))
    for c in colors:
        mine = [i for i in everything if i.color == c]
        running = [i for i in mine if i.state not in ENDED]
        ended = sorted((i for i in mine if i.state in ENDED), key=lambda i: i.launched, reverse=True)
        chosen += running or ended[:ENDED_SHOWN]
    if not chosen:
        which = " or ".join(colors)
        raise PipelineError(
            f"stack {name}: no instance of {which} has run in the last hour",
            hint="invoke status shows the capacity of each colour",
        )
    return sorted(chosen, key=lambda i: (COLORS.index(i.color) if i.color in COLORS else 2, i.launched))


def _live_colors(clients: Clients, stack: str) -> list[Color]:
    info = cfn.describe(clients.cloudformation(), stack)
    if info is None:
        raise PipelineError(f"stack {stack} does not exist: no instances", hint="invoke deploy creates it")
    try:
        live = StackState.from_parameters(info.parameters).live
    except (KeyError, ValueError) as err:
        raise PipelineError(
            f"stack {stack}: its parameters do not describe a blue/green release ({err})",
            hint="pass --colour blue|green or --instance ID",
        ) from err
    return [live] if live is not None else list(COLORS)  # split traffic: both


def _describe(ec2: EC2Client, filters: Any, ids: Sequence[str] = ()) -> list[Instance]:
    out = []
    kwargs: dict[str, Any] = {"Filters": filters}
    if ids:
        kwargs["InstanceIds"] = list(ids)
    try:
        pages = list(ec2.get_paginator("describe_instances").paginate(**kwargs))
    except ClientError as err:
        if error_code(err).startswith("InvalidInstanceID"):
            return []
        raise
    for page in pages:
        for reservation in page.get("Reservations", []):
            for i in reservation.get("Instances", []):
                own = tags.from_aws(i.get("Tags"))
                launched = i.get("LaunchTime") or datetime.fromtimestamp(0, UTC)
                state = str(i.get("State", {}).get("Name", "?"))
                out.append(Instance(i["InstanceId"], own.get(tags.COLOR, "-"), state, launched))
    return out


# -- reading a console -------------------------------------------------------------------------------


def console(ec2: EC2Client, instance_id: str) -> str:
    """The instance's console output as it is now (decoded; "" when nothing was posted yet)."""
    try:
        resp = ec2.get_console_output(InstanceId=instance_id, Latest=True)
    except ClientError as err:
        if error_code(err) not in LATEST_REFUSED:
            raise
        log.info("%s: no latest console output (%s); asking for the buffered one", instance_id, err)
        resp = ec2.get_console_output(InstanceId=instance_id)
    return str(resp.get("Output") or "")


def lines_of(text: str) -> tuple[list[str], str]:
    """The complete lines of a console output (carriage returns dropped, control characters shown
    escaped) and what follows the last newline (a line still being written)."""
    *complete, partial = text.replace("\r", "").split("\n")
    return [_printable(line) for line in complete], _printable(partial)


def _printable(line: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def new_lines(seen: Sequence[str], now: Sequence[str]) -> list[str]:
    """The lines of ``now`` that follow the ones already ``seen``.

    The console is a window on the most recent 64 KB, so earlier lines fall out of it: the last lines
    seen are found again in ``now`` and what comes after them is new. When they are not there any more
    (more output than the window between two looks, or a new boot), all of ``now`` is new.
    """
    if not seen:
        return list(now)
    anchor = list(seen[-ANCHOR_LINES:])
    for start in range(len(now) - len(anchor), -1, -1):
        if list(now[start : start + len(anchor)]) == anchor:
            return list(now[start + len(anchor) :])
    # The window slid past the first of those lines: the rest of them begin it.
    for k in range(min(len(anchor), len(now)) - 1, 0, -1):
        if list(now[:k]) == anchor[-k:]:
            return list(now[k:])
    return list(now)


# -- the task ----------------------------------------------------------------------------------------


@one_line_errors("logs")
def show(
    clients: Clients,
    settings: Settings,
    write: Write,
    color: Color | None = None,
    instance_id: str | None = None,
    tail: int | None = None,
) -> list[Instance]:
    """Write the console of each selected instance, each line prefixed; return the instances."""
    instances = select(clients, settings, color, instance_id)
    ec2 = clients.ec2()
    for inst in instances:
        complete, partial = lines_of(console(ec2, inst.instance_id))
        shown = complete + ([partial] if partial else [])
        for line in shown[-tail:] if tail is not None else shown:
            write(inst.prefix(line))
    return instances


@one_line_errors("logs")
def follow(
    clients: Clients,
    settings: Settings,
    write: Write,
    color: Color | None = None,
    instance_id: str | None = None,
    tail: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    every: float = FOLLOW_SECONDS,
    looks: int | None = None,
) -> None:
    """Like :func:`show`, then keep looking every ``every`` seconds and write the new complete lines,
    also of instances of the same colours that start later, until Ctrl-C (or ``looks`` looks). The
    colours are chosen once, at the start: following the live colour keeps following it through a
    deploy that makes the other colour live."""
    colors: list[Color | None] = [color]
    if color is None and instance_id is None:
        colors = list(_live_colors(clients, tags.stack_name(settings.app.name, settings.env)))
    ec2 = clients.ec2()
    seen: dict[str, list[str]] = {}
    count = 0
    try:
        while looks is None or count < looks:
            if count:
                sleep(every)
            count += 1
            for inst in _each(clients, settings, colors, instance_id, first=count == 1):
                complete, _ = lines_of(console(ec2, inst.instance_id))
                before = seen.get(inst.instance_id)
                fresh = new_lines(before or [], complete)
                if before is None and tail is not None:
                    fresh = fresh[-tail:] if tail else []
                for line in fresh:
                    write(inst.prefix(line))
                seen[inst.instance_id] = complete[-ANCHOR_LINES:]
    except KeyboardInterrupt:
        return


def _each(
    clients: Clients, settings: Settings, colors: list[Color | None], instance_id: str | None, first: bool
) -> list[Instance]:
    """The instances of ``colors`` now; on the first look, none at all is an error."""
    out: list[Instance] = []
    problems: list[PipelineError] = []
    for c in colors:
        try:
            out += select(clients, settings, c, instance_id)
        except PipelineError as err:
            problems.append(err)
    if first and not out and problems:
        raise problems[0]
    return out


def say(line: str) -> None:
    """A console line on stderr as it is (no markup: a guest's ``[info]`` is text)."""
    ui.console.out(line, highlight=False)


def show_failed(clients: Clients, settings: Settings, color: Color, say: Write = say) -> None:
    """Before a rollback: the last console lines of ``color``'s instances, which failed their health
    gate. Best effort: a failure to read them is a warning, never in the way of the rollback."""
    try:
        instances = select(clients, settings, color)
        ec2 = clients.ec2()
        for inst in instances:
            complete, partial = lines_of(console(ec2, inst.instance_id))
            shown = (complete + ([partial] if partial else []))[-FAILED_LINES:]
            say(f"last {len(shown)} console lines of {inst.instance_id} ({color}, {inst.state}):")
            for line in shown:
                say(f"  {inst.prefix(line)}")
    except (PipelineError, ClientError, BotoCoreError) as err:
        if isinstance(err, (ClientError, BotoCoreError)):
            err = describe(err)
        log.warning("the console of %s could not be read: %s", color, err)
        say(f"(the console of {color} could not be read: {err})")
