"""The release history of one environment, kept in its stack's ``History`` parameter (pure).

Every deploy and every rollback is an entry: which release (AMI, build, instance type) went to which
colour, when it started, when it went live and how it ended. "Live" means the release had all the
traffic and finished its bake at 100%; only then does an entry get ``live_at``. How an entry ends:

- ``running``: started and not finished. The process doing it may still run, or it was killed; the
  next deploy or rollback marks a running entry it does not resume as ``interrupted``;
- ``baked``: it went live (the normal end of a deploy or a rollback);
- ``rolled back``: the pipeline rolled it back by itself, and why (a failed health gate, a failed
  stack update, ...);
- ``interrupted``: stopped by Ctrl-C or SIGTERM (and rolled back), or killed (marked afterwards);
- ``failed``: a first release that never became healthy (there was nothing to roll back to);
- ``rolled back by hand``: it was live until ``invoke rollback`` returned to another release.

The history lives in AWS, nowhere else: one stack parameter, sent with every stack update. A
parameter value holds at most 4,096 bytes (CloudFormation quotas), so the oldest entries are dropped
first, except those of the releases the colours hold and of the newest live releases, which rollback
and gc need.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from pipeline.aws.params import Release, StackState
from pipeline.aws.tags import COLORS, Color

Kind = Literal["deploy", "rollback"]
Outcome = Literal["running", "baked", "rolled back", "interrupted", "failed", "rolled back by hand"]

PARAMETER = "History"
MAX_BYTES = 4096  # CloudFormation's limit on one parameter value
MAX_ENTRIES = 30
KEEP_LIVE = 10  # the newest live releases are kept when older entries are dropped
MAX_REASON = 120  # characters of a reason kept in the stack
VERSION = 1
UNKNOWN = 1  # the time of an entry recorded from a stack made before the history was kept

_KINDS: dict[Kind, str] = {"deploy": "d", "rollback": "r"}
_COLORS: dict[Color, str] = {"blue": "b", "green": "g"}
_OUTCOMES: dict[Outcome, str] = {
    "running": "run",
    "baked": "ok",
    "rolled back": "auto",
    "interrupted": "int",
    "failed": "fail",
    "rolled back by hand": "hand",
}


@dataclass(frozen=True)
class Entry:
    n: int  # sequence number, 1 for the stack's first release
    kind: Kind
    release: Release
    color: Color
    started: int  # seconds since the epoch (UTC)
    live_at: int = 0  # when it finished its bake at 100%; 0: never live
    outcome: Outcome = "running"
    reason: str = ""

    @property
    def was_live(self) -> bool:
        return self.live_at > 0

    def describe(self) -> str:
        """How it ended, in words (for ``invoke history``)."""
        if self.outcome == "running":
            return "not finished (still running, or the process was killed)"
        if self.outcome == "rolled back":
            return f"rolled back automatically: {self.reason}"
        if self.outcome in ("interrupted", "failed") and self.reason:
            return f"{self.outcome}: {self.reason}"
        if self.outcome == "rolled back by hand" and self.reason:
            return f"rolled back by hand ({self.reason})"
        return self.outcome

    def record(self) -> dict[str, object]:
        return {
            "n": self.n,
            "kind": self.kind,
            "build_id": self.release.build_id,
            "image_id": self.release.image_id,
            "instance_type": self.release.instance_type,
            "virtualization": self.release.virtualization,
            "color": self.color,
            "started": stamp(self.started),
            "live_at": stamp(self.live_at) if self.live_at else None,
            "outcome": self.outcome,
            "reason": self.reason,
        }


History = tuple[Entry, ...]


def stamp(seconds: int) -> str:
    if seconds <= UNKNOWN:
        return "unknown"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the parameter value ----------------------------------------------------------------------------------


def encode(history: Sequence[Entry]) -> str:
    """The parameter value: compact JSON, one list per entry, oldest first."""
    rows: list[object] = [VERSION]
    for e in history:
        r = e.release
        rows.append(
            [
                e.n,
                _KINDS[e.kind],
                r.build_id,
                r.image_id,
                r.instance_type,
                r.virtualization,
                _COLORS[e.color],
                e.started,
                e.live_at,
                _OUTCOMES[e.outcome],
                e.reason,
            ]
        )
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def decode(text: str) -> History:
    """The entries a parameter value holds; raises ``ValueError`` for anything this module did not write."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"History is not JSON: {err}") from None
    if not isinstance(rows, list) or not rows or rows[0] != VERSION:
        raise ValueError("History has no known version")
    kinds = {v: k for k, v in _KINDS.items()}
    colors = {v: k for k, v in _COLORS.items()}
    outcomes = {v: k for k, v in _OUTCOMES.items()}
    out: list[Entry] = []
    for row in rows[1:]:
        try:
            n, kind, build, image, itype, virt, color, started, live_at, outcome, reason = row
            if virt not in ("hvm", "pv"):
                raise ValueError(virt)
            out.append(
                Entry(
                    n=int(n),
                    kind=kinds[kind],
                    release=Release(str(image), str(build), str(itype), "pv" if virt == "pv" else "hvm"),
                    color=colors[color],
                    started=int(started),
                    live_at=int(live_at),
                    outcome=outcomes[outcome],
                    reason=str(reason),
                )
            )
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"History entry {row!r} is not one this pipeline writes ({err})") from None
    return tuple(out)


def trim(history: Sequence[Entry], protect: Iterable[str] = ()) -> History:
    """``history`` within :data:`MAX_ENTRIES` and :data:`MAX_BYTES`: the oldest entries go first, but
    not those of the images in ``protect`` (what the colours hold) nor the :data:`KEEP_LIVE` newest
    live ones, unless nothing else is left to drop."""
    entries = [replace(e, reason=e.reason[:MAX_REASON]) for e in history]
    kept_images = set(protect)
    live = [e.n for e in reversed(entries) if e.was_live][:KEEP_LIVE]

    def fits() -> bool:
        return len(entries) <= MAX_ENTRIES and len(encode(entries).encode()) <= MAX_BYTES

    for guarded in (True, False):
        i = 0
        while not fits() and i < len(entries) - 1:
            e = entries[i]
            if guarded and (e.release.image_id in kept_images or e.n in live):
                i += 1
                continue
            del entries[i]
    return tuple(entries)


# -- reading ----------------------------------------------------------------------------------------------


def was_live(history: Sequence[Entry], image_id: str) -> bool:
    """Whether the release of ``image_id`` ever went live."""
    return any(e.was_live and e.release.image_id == image_id for e in history)


def last_live(history: Sequence[Entry], exclude: str | None = None) -> Entry | None:
    """The newest release that went live and was not rolled back by hand since (``exclude``: an image
    id that does not count, the one live now): where ``invoke rollback`` returns to."""
    for e in reversed(history):
        if e.outcome == "baked" and e.release.image_id != exclude:
            return e
    return None


def live_entries(history: Sequence[Entry]) -> list[Entry]:
    """The entries of releases that went live, newest first, one per image."""
    seen: set[str] = set()
    out = []
    for e in reversed(history):
        if e.was_live and e.release.image_id not in seen:
            seen.add(e.release.image_id)
            out.append(e)
    return out


def find_build(history: Sequence[Entry], build: str) -> list[Entry]:
    """Entries whose build id is ``build`` or starts with it, newest first."""
    return [e for e in reversed(history) if e.release.build_id.startswith(build)]


def running(history: Sequence[Entry]) -> list[Entry]:
    return [e for e in history if e.outcome == "running"]


def current(history: Sequence[Entry], color: Color, image_id: str) -> Entry | None:
    """The newest entry that put ``image_id`` on ``color``."""
    for e in reversed(history):
        if e.color == color and e.release.image_id == image_id:
            return e
    return None


# -- changing ---------------------------------------------------------------------------------------------


def start(
    history: Sequence[Entry], kind: Kind, release: Release, color: Color, now: float
) -> tuple[History, Entry]:
    """A new running entry (the running ones before it were stopped by a kill: interrupted)."""
    n = max((e.n for e in history), default=0) + 1
    entry = Entry(n, kind, release, color, int(now))
    return (*stopped(history), entry), entry


def stopped(history: Sequence[Entry], keep: int | None = None) -> History:
    """``history`` with every running entry but ``keep`` marked interrupted (its process is gone)."""
    return tuple(
        replace(e, outcome="interrupted", reason="stopped before it finished")
        if e.outcome == "running" and e.n != keep
        else e
        for e in history
    )


def finish(
    history: Sequence[Entry], n: int, outcome: Outcome, reason: str = "", live_at: float | None = None
) -> History:
    """Entry ``n`` ended with ``outcome`` (and went live at ``live_at``)."""
    out = []
    for e in history:
        if e.n == n:
            e = replace(e, outcome=outcome, reason=" ".join(reason.split())[:MAX_REASON])
            if live_at is not None:
                e = replace(e, live_at=int(live_at))
        out.append(e)
    return tuple(out)


def handed_back(history: Sequence[Entry], image_id: str, to: str) -> History:
    """The live entries of ``image_id`` were rolled back by hand (to build ``to``)."""
    return tuple(
        replace(e, outcome="rolled back by hand", reason=f"to build {to}")
        if e.outcome == "baked" and e.release.image_id == image_id
        else e
        for e in history
    )


def seeded(state: StackState) -> History:
    """The history of a stack made before the history was kept: the releases its colours hold count
    as live (the rollout then kept only releases that had gone live on the colours), the live colour's
    as the newest."""
    live = state.live
    order = [c for c in COLORS if c != live] + ([live] if live else [])
    out: list[Entry] = []
    for color in order:
        release = state.side(color).release
        if any(e.release == release for e in out):
            out = [e for e in out if e.release != release]
        out.append(
            Entry(
                len(out) + 1, "deploy", release, color, UNKNOWN, UNKNOWN, "baked", "from before the history"
            )
        )
    return tuple(replace(e, n=i) for i, e in enumerate(out, start=1))
