"""What the local cloud runs, shared by the instance runner, the load balancer and target health.

One :class:`Registry` per server process holds a :class:`Machine` per instance the cloud runs: its
VM's host port, where it is in its life (preparing its disk, booting, running, draining, stopped) and
its target health as the health checks see it (:class:`HealthTracker`, the ELB state machine). The
load balancer takes a target with :meth:`Registry.acquire` (only a running, healthy machine that is
not draining) and gives it back with :meth:`Registry.release`; the runner stops a machine's VM only
after :meth:`Registry.wait_idle`, so a request that reached a target before it started draining
always finishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HealthState = Literal["initial", "healthy", "unhealthy", "draining"]
Phase = Literal["preparing", "running", "draining", "stopped", "failed"]

# ELBv2's reason codes and descriptions (DescribeTargetHealth) for the states the cloud reports.
REASONS: dict[str, tuple[str, str]] = {
    "registering": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "checking": ("Elb.InitialHealthChecking", "Initial health checks in progress"),
    "codes": ("Target.ResponseCodeMismatch", "Health checks failed with these codes: [{code}]"),
    "timeout": ("Target.Timeout", "Request timed out"),
    "failed": ("Target.FailedHealthChecks", "Health checks failed"),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
}


@dataclass(frozen=True)
class HealthCheck:
    """A target group's health check (what ELBv2 stores for it)."""

    path: str = "/health"
    port: int = 80  # the guest port it checks (``traffic-port``: the group's port)
    timeout: float = 5.0
    interval: float = 10.0
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    matcher: str = "200"  # HttpCode: "200", "200,202" or "200-299"

    def accepts(self, status: int) -> bool:
        for part in self.matcher.split(","):
            lo, _, hi = part.strip().partition("-")
            if lo.isdigit() and int(lo) <= status <= int(hi or lo):
                return True
        return False


@dataclass
class HealthTracker:
    """The ELB target health state machine for one target.

    A target is ``initial`` until it passes ``healthy_threshold`` checks in a row (``healthy``) or,
    once it has answered at all, fails ``unhealthy_threshold`` in a row (``unhealthy``); after that
    the same thresholds move it back and forth. A VM that has not answered yet is booting: that keeps
    it ``initial`` rather than counting as a failure (AWS starts checking only once registration is
    done, which on EC2 takes about as long as a boot).
    """

    check: HealthCheck
    state: HealthState = "initial"
    reason: str = "registering"
    detail: str = ""
    passes: int = 0
    failures: int = 0
    answered: bool = False

    def observe(self, status: int | None, detail: str = "") -> bool:
        """One check's result: the HTTP status, or None for no answer. Returns whether the state changed."""
        before = (self.state, self.reason, self.detail)
        if status is not None:
            self.answered = True
        ok = status is not None and self.check.accepts(status)
        if ok:
            self.passes, self.failures = self.passes + 1, 0
            if self.passes >= self.check.healthy_threshold:
                self.state, self.reason, self.detail = "healthy", "", ""
            elif self.state == "initial":
                self.reason = "checking"
        elif not self.answered:
            self.reason = "registering"
        else:
            self.passes, self.failures = 0, self.failures + 1
            why = "codes" if status is not None else ("timeout" if "timed out" in detail else "failed")
            if self.failures >= self.check.unhealthy_threshold:
                self.state, self.reason, self.detail = "unhealthy", why, str(status or detail)
        return (self.state, self.reason, self.detail) != before

    def fail(self, detail: str) -> None:
        """The target cannot answer at all any more (its VM is gone or never started)."""
        self.state, self.reason, self.detail = "unhealthy", "failed", detail

    def describe(self) -> tuple[str, str]:
        """ELBv2's (Reason, Description) for the current state ("" for healthy)."""
        if self.state == "healthy":
            return "", ""
        code, text = REASONS.get(self.reason, REASONS["failed"])
        if self.reason == "codes":
            text = text.format(code=self.detail)
        elif self.detail:
            text = f"{text}: {self.detail}"
        return code, text


@dataclass
class Machine:
    """One instance the local cloud runs as a VM."""

    instance_id: str
    region: str
    group: str  # its Auto Scaling group
    color: str
    build_id: str
    image_id: str
    check: HealthCheck
    target_groups: tuple[str, ...] = ()
    phase: Phase = "preparing"
    host_port: int | None = None
    pid: int | None = None
    console_log: Path | None = None
    memory_mb: int = 0
    boot: str = ""  # uefi | direct
    created: float = field(default_factory=time.time)
    started: float | None = None  # when QEMU started (wall clock)
    healthy_at: float | None = None
    error: str = ""
    in_flight: int = 0
    health: HealthTracker = field(init=False)

    def __post_init__(self) -> None:
        self.health = HealthTracker(self.check)

    @property
    def routable(self) -> bool:
        return self.phase == "running" and self.health.state == "healthy" and self.host_port is not None

    def record(self, now: float) -> dict[str, Any]:
        reason, description = self.health.describe()
        return {
            "instance_id": self.instance_id,
            "region": self.region,
            "group": self.group,
            "color": self.color,
            "build_id": self.build_id,
            "image_id": self.image_id,
            "phase": self.phase,
            "boot": self.boot,
            "port": self.host_port,
            "pid": self.pid,
            "memory_mb": self.memory_mb,
            "health": self.health.state,
            "reason": reason,
            "description": description,
            "started_at": self.started,
            "healthy_at": self.healthy_at,
            "uptime": round(now - self.started, 1) if self.started else 0.0,
            "boot_seconds": round(self.healthy_at - self.started, 1)
            if self.healthy_at and self.started
            else None,
            "in_flight": self.in_flight,
            "console_log": str(self.console_log) if self.console_log else "",
            "error": self.error,
        }


class Registry:
    """The machines of the local cloud, behind one lock (a condition, for :meth:`wait_idle`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._machines: dict[str, Machine] = {}
        self.clock = clock

    def add(self, machine: Machine) -> None:
        with self._cond:
            self._machines[machine.instance_id] = machine

    def remove(self, instance_id: str) -> None:
        with self._cond:
            self._machines.pop(instance_id, None)
            self._cond.notify_all()

    def get(self, instance_id: str) -> Machine | None:
        with self._cond:
            return self._machines.get(instance_id)

    def ids(self) -> set[str]:
        with self._cond:
            return set(self._machines)

    def update(self, instance_id: str, change: Callable[[Machine], None]) -> bool:
        """Apply ``change`` to the machine under the lock; False if there is no such machine."""
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is None:
                return False
            change(machine)
            self._cond.notify_all()
            return True

    def records(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            return [m.record(now) for m in sorted(self._machines.values(), key=lambda m: m.created)]

    # the load balancer's side

    def routable(self, instance_id: str) -> bool:
        with self._cond:
            machine = self._machines.get(instance_id)
            return machine is not None and machine.routable

    def state(self, instance_id: str) -> str:
        """The target's health state as the load balancer sees it ("" for an instance not run here)."""
        with self._cond:
            machine = self._machines.get(instance_id)
            return machine.health.state if machine is not None else ""

    def acquire(self, instance_id: str, any_health: bool = False) -> int | None:
        """Take ``instance_id`` for one request: its host port, or None if it takes no new requests.
        ``any_health``: its group fails open, so an unhealthy target is taken too (if it has a VM)."""
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is None or machine.host_port is None:
                return None
            open_ok = any_health and machine.phase in ("running", "failed")
            if not (machine.routable or open_ok):
                return None
            machine.in_flight += 1
            return machine.host_port

    def release(self, instance_id: str) -> None:
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is not None:
                machine.in_flight -= 1
                self._cond.notify_all()

    # the runner's side

    def drain(self, instance_id: str) -> bool:
        """Take no new requests to ``instance_id`` from now on; False if it was already draining."""
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is None or machine.phase in ("draining", "stopped"):
                return False
            machine.phase = "draining"
            machine.health.state, machine.health.reason, machine.health.detail = "draining", "draining", ""
            return True

    def wait_idle(self, instance_id: str, timeout: float) -> bool:
        """Wait until no request is in flight to ``instance_id`` (True) or ``timeout`` passes (False)."""
        deadline = self.clock() + timeout
        with self._cond:
            while True:
                machine = self._machines.get(instance_id)
                if machine is None or machine.in_flight <= 0:
                    return True
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))

    def observe(self, instance_id: str, status: int | None, detail: str) -> bool:
        """Record one health check of a running machine; True if its health changed."""
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is None or machine.phase != "running":
                return False
            return machine.health.observe(status, detail)

    def health_of(self, instance_id: str) -> tuple[str, str, str] | None:
        """(state, reason, description) as DescribeTargetHealth reports it, or None for an unknown id."""
        with self._cond:
            machine = self._machines.get(instance_id)
            if machine is None:
                return None
            return (machine.health.state, *machine.health.describe())
