"""What the local AWS holds that the local cloud acts on, read from moto's models in the server process.

:func:`read` returns a :class:`World`: the instances of every Auto Scaling group, the tags of their
images, the target groups (health check, registered targets) and the HTTP and HTTPS listeners of the
load balancers with their rules (an HTTPS listener with its certificate and key from the local ACM).
The caller holds the server's request lock while it reads (moto is not written for concurrent
access), so a read sees the state between two requests, never in the middle of one. Reading the
models directly instead of through the API keeps the server's request log and CPU free of the
cloud's frequent polling; this module is the only one that knows moto's classes from the inside
(besides the target health hook in :mod:`pipeline.local.cloud` and GetConsoleOutput in
:mod:`pipeline.local.console`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.local.registry import HealthCheck
from pipeline.local.routing import Listener, Rule, action_of, condition_of
from pipeline.local.tls import Tls


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    region: str
    state: str  # EC2 instance state: pending | running | stopping | stopped | terminated ...
    image_id: str
    group: str
    tags: Mapping[str, str]
    target_groups: tuple[str, ...]
    scratch_gib: int  # the launch template's (non-root) EBS volume; 1 GiB when it has none


@dataclass(frozen=True)
class TargetGroupView:
    arn: str
    port: int
    check: HealthCheck
    deregistration_delay: float
    targets: tuple[str, ...]  # registered target ids


@dataclass(frozen=True)
class World:
    instances: dict[str, InstanceView] = field(default_factory=dict)  # of Auto Scaling groups
    images: dict[str, Mapping[str, str]] = field(default_factory=dict)  # image id -> its tags
    target_groups: dict[str, TargetGroupView] = field(default_factory=dict)
    listeners: tuple[Listener, ...] = ()
    snapshots: frozenset[str] = frozenset()  # ids of the snapshots that exist

    def members(self) -> dict[str, tuple[str, ...]]:
        """Target group ARN -> the ids of its registered targets."""
        return {arn: g.targets for arn, g in self.target_groups.items()}


def read(account_id: str) -> World:
    """Everything the cloud needs, from every region that has been used (hold the request lock)."""
    from moto.autoscaling.models import autoscaling_backends
    from moto.cloudformation.models import cloudformation_backends
    from moto.ec2.models import ec2_backends
    from moto.elbv2.models import elbv2_backends

    instances: dict[str, InstanceView] = {}
    images: dict[str, Mapping[str, str]] = {}
    snapshots: set[str] = set()
    for region, ec2 in list(ec2_backends[account_id].items()):
        snapshots.update(ec2.snapshots)
        scaling = autoscaling_backends[account_id].get(region)
        if scaling is None:
            continue
        for group in list(scaling.autoscaling_groups.values()):
            scratch = _scratch_gib(group)
            for state in group.instance_states:
                instance = state.instance
                tags = dict(ec2.tags.get(instance.id) or {})
                instances[instance.id] = InstanceView(
                    instance.id,
                    region,
                    instance.state,
                    instance.image_id,
                    group.name,
                    tags,
                    tuple(group.target_group_arns),
                    scratch,
                )
                if instance.image_id not in images:
                    images[instance.image_id] = dict(ec2.tags.get(instance.image_id) or {})
    groups: dict[str, TargetGroupView] = {}
    listeners: list[Listener] = []
    orphans = _left_by_deleted_stacks(cloudformation_backends[account_id])
    for region, elb in list(elbv2_backends[account_id].items()):
        for tg in list(elb.target_groups.values()):
            groups[tg.arn] = _target_group(tg)
        for lb in list(elb.load_balancers.values()):
            if lb.arn in orphans:
                continue  # its stack is gone: nothing answers for it any more
            for listener in list(lb.listeners.values()):
                protocol = str(listener.protocol).upper()
                if protocol == "HTTP":
                    listeners.append(_listener(lb, listener))
                elif protocol == "HTTPS":
                    tls = _tls(account_id, region, listener)
                    listeners.append(replace(_listener(lb, listener), protocol=protocol, tls=tls))
    return World(instances, images, groups, tuple(listeners), frozenset(snapshots))


def _tls(account_id: str, region: str, listener: Any) -> Tls:
    """The certificate (and key) the HTTPS listener names, as the local ACM holds it."""
    from moto.acm.models import acm_backends

    arn = str(listener.certificate or "")
    policy = str(listener.ssl_policy or "")
    bundle = acm_backends[account_id][region]._certificates.get(arn)  # the key is not exportable
    if bundle is None:
        return Tls(arn, policy, b"", b"")
    return Tls(arn, policy, bytes(bundle.cert), bytes(bundle.key))


def _left_by_deleted_stacks(stacks_by_region: Mapping[str, Any]) -> set[str]:
    """Physical ids of resources that a deleted stack made and no live stack has: what a delete that
    failed half-way left behind. On AWS a load balancer whose stack is deleted is gone with it; the local
    load balancer must stop serving its listener too, or its port stays taken by a stack that is gone."""
    live: set[str] = set()
    gone: set[str] = set()
    for cf in list(stacks_by_region.values()):
        for stack in [*cf.stacks.values(), *cf.deleted_stacks.values()]:
            ids = _physical_ids(stack)
            (gone if stack.status == "DELETE_COMPLETE" else live).update(ids)
    return gone - live


def _physical_ids(stack: Any) -> set[str]:
    # The resources the stack has made (moto's resource map makes a resource when it is first looked
    # up, so only the ones already made are read).
    made = getattr(stack.resource_map, "_parsed_resources", {})
    return {
        r.physical_resource_id
        for r in list(made.values())
        if isinstance(getattr(r, "physical_resource_id", None), str)
    }


def _scratch_gib(group: Any) -> int:
    template = getattr(group, "ec2_launch_template", None)
    if template is None:
        return 1
    try:
        data = template.get_version(group.launch_template_version).data
    except Exception:  # a version that is gone: the group is being replaced
        return 1
    sizes = [int(m["Ebs"].get("VolumeSize", 1)) for m in data.get("BlockDeviceMappings", []) if "Ebs" in m]
    return sizes[0] if sizes else 1


def _target_group(tg: Any) -> TargetGroupView:
    port = int(tg.port or 80)
    check_port = tg.health_check_port
    matcher = (tg.matcher or {}).get("HttpCode", "200") if isinstance(tg.matcher, dict) else "200"
    check = HealthCheck(
        path=tg.health_check_path or "/",
        port=port if check_port in (None, "", "traffic-port") else int(check_port),
        timeout=float(tg.health_check_timeout_seconds or 5),
        interval=float(tg.health_check_interval_seconds or 30),
        healthy_threshold=int(tg.healthy_threshold_count or 5),
        unhealthy_threshold=int(tg.unhealthy_threshold_count or 2),
        matcher=str(matcher),
    )
    delay = float(tg.attributes.get("deregistration_delay.timeout_seconds", 300))
    return TargetGroupView(tg.arn, port, check, delay, tuple(tg.targets))


def _listener(lb: Any, listener: Any) -> Listener:
    rules = []
    default = None
    for rule in list(listener.rules.values()):
        action = action_of([a.data for a in rule.actions])
        if getattr(rule, "is_default", False) or rule.priority == "default":
            default = action
            continue
        rules.append(Rule(int(rule.priority), tuple(condition_of(c) for c in rule.conditions), action))
    rules.sort(key=lambda r: r.priority)
    if default is None:
        default = action_of([a.data for a in listener.default_actions])
    idle = float(getattr(lb, "attrs", {}).get("idle_timeout.timeout_seconds") or 60)
    return Listener(int(listener.port), lb.name, lb.dns_name, tuple(rules), default, idle_timeout=idle)
