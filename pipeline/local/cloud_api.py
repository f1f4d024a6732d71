"""What the local AWS's own API says about the instances the local cloud runs (in its process).

moto's ``DescribeTargetHealth`` calls every target ``healthy``. Once the local cloud is active
(:func:`activate`), it reports what the cloud sees: the target health its health checks measure
(``initial`` while a VM boots, ``unhealthy`` with the reason when it fails or cannot run at all,
``draining`` once its instance is terminated). (``GetConsoleOutput``, the VM's serial console and why
an instance cannot run: :mod:`pipeline.local.console`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.local.registry import Registry

_registry: Registry | None = None
_enabled: Callable[[], bool] = lambda: False  # noqa: E731 - the cloud's run_instances, read live
_original_health_for: Any = None


def activate(registry: Registry, enabled: Callable[[], bool]) -> None:
    """Report the machines of ``registry`` from now on (while ``enabled()``); installs the hooks once."""
    global _registry, _enabled
    _install_health_hook()
    _registry, _enabled = registry, enabled


def deactivate(registry: Registry) -> None:
    global _registry
    if _registry is registry:
        _registry = None


def _install_health_hook() -> None:
    """Make moto's target health report what the local cloud's health checks see (once per process)."""
    global _original_health_for
    from moto.elbv2 import models

    if _original_health_for is not None:
        return
    _original_health_for = models.FakeTargetGroup.health_for

    def health_for(group: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
        status = _original_health_for(group, target, ec2_backend)
        registry = _registry
        if registry is None or not _enabled() or status.status in ("unused", "unavailable"):
            return status
        target_id = str(target["Id"])
        known = registry.health_of(target_id)
        if known is not None:
            state, reason, description = known
            return models.FakeHealthStatus(
                target_id, status.port, group.health_check_port, state, reason or None, description or None
            )
        instance = ec2_backend.get_instance_by_id(target_id) if target_id.startswith("i-") else None
        if instance is None or instance.state != "running":
            # A terminated instance of a replaced group (moto leaves it registered) is leaving.
            return models.FakeHealthStatus(
                target_id, status.port, group.health_check_port, "draining",
                "Target.DeregistrationInProgress", "Target deregistration is in progress",
            )  # fmt: skip
        # Registered in this very request: the cloud has not seen it yet.
        return models.FakeHealthStatus(
            target_id, status.port, group.health_check_port, "initial",
            "Elb.RegistrationInProgress", "Target registration is in progress",
        )  # fmt: skip

    models.FakeTargetGroup.health_for = health_for  # type: ignore[method-assign,assignment]
