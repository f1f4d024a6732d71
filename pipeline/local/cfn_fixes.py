"""CloudFormation behaviour the local AWS adds to moto, so that the pipeline's stack has a full life
cycle offline.

- moto creates an ``AWS::EC2::RouteTable`` from a template but has no way to delete it, so deleting a
  stack with its own VPC fails with ``DependencyViolation`` on the VPC (the route table is still in
  it): the route table gets the delete that CloudFormation performs on AWS.
- moto's ``AWS::ElasticLoadBalancingV2::LoadBalancer`` ignores ``LoadBalancerAttributes`` and has no
  update at all (an update that changes it loses the resource, and every ``GetAtt`` of it fails):
  the attributes are applied when it is created and when they change, as CloudFormation does
  (without interruption).
- moto updates an ``AWS::ElasticLoadBalancingV2::ListenerRule`` whose ``ListenerArn`` changed in
  place, on its old listener; for CloudFormation that change requires replacement: a new rule on the
  new listener, then the old one deleted (a stack that gains an HTTPS listener moves its rules there).
- moto deletes an Auto Scaling group of a stack that CloudFormation counts as already gone (a
  failed update left it so) with "AutoScalingGroup name not found", so every later update or
  rollback of the stack fails. CloudFormation counts a resource that is already gone as deleted; so
  does the local AWS.
- Auto Scaling groups updated in place, scaling policies, and resources that follow their conditions:
  :mod:`pipeline.local.cfn_scaling`.

:func:`apply` installs them. It must run in the process that serves the local AWS (it changes moto's
in-memory classes); it is idempotent.
"""

from __future__ import annotations

from typing import Any

from pipeline.local import cfn_scaling


def apply() -> None:
    """Install the fixes (once per process)."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.route_tables import RouteTable

    if getattr(RouteTable, "_pipeline_cfn_delete", False):
        return

    def delete_from_cloudformation_json(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        backend: Any = ec2_backends[account_id][region_name]
        if resource_name in backend.route_tables:
            backend.delete_route_table(resource_name)

    RouteTable.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]
    RouteTable._pipeline_cfn_delete = True  # type: ignore[attr-defined]
    _load_balancer_attributes()
    _rule_replacement()
    _tolerate_deleted_groups()
    cfn_scaling.apply()


def _attributes(properties: dict[str, Any]) -> dict[str, str]:
    return {str(a["Key"]): str(a["Value"]) for a in properties.get("LoadBalancerAttributes") or []}


def _load_balancer_attributes() -> None:
    from moto.elbv2.models import FakeLoadBalancer, elbv2_backends

    create = FakeLoadBalancer.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_with_attributes(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kw: Any
    ) -> Any:
        balancer = create(cls, resource_name, cloudformation_json, account_id, region_name, **kw)
        attributes = _attributes(cloudformation_json.get("Properties", {}))
        if attributes:
            elbv2_backends[account_id][region_name].modify_load_balancer_attributes(balancer.arn, attributes)
        return balancer

    def update(
        cls: type,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        attributes = _attributes(cloudformation_json.get("Properties", {}))
        if attributes:
            backend = elbv2_backends[account_id][region_name]
            backend.modify_load_balancer_attributes(original_resource.arn, attributes)
        return original_resource

    FakeLoadBalancer.create_from_cloudformation_json = classmethod(create_with_attributes)  # type: ignore[method-assign,assignment,arg-type]
    FakeLoadBalancer.update_from_cloudformation_json = classmethod(update)  # type: ignore[method-assign,assignment]


def _rule_replacement() -> None:
    from moto.elbv2.models import FakeListenerRule, elbv2_backends

    update = FakeListenerRule.update_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    create = FakeListenerRule.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def update_or_replace(
        cls: type,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        listener = cloudformation_json.get("Properties", {}).get("ListenerArn")
        if listener is None or listener == original_resource.listener_arn:
            return update(
                cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
            )
        replacement = create(cls, new_resource_name, cloudformation_json, account_id, region_name)
        elbv2_backends[account_id][region_name].delete_rule(original_resource.arn)
        return replacement

    FakeListenerRule.update_from_cloudformation_json = classmethod(update_or_replace)  # type: ignore[method-assign,assignment]


def _tolerate_deleted_groups() -> None:
    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    def delete_from_cloudformation_json(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        backend: Any = autoscaling_backends[account_id][region_name]
        if resource_name in backend.autoscaling_groups:
            backend.delete_auto_scaling_group(resource_name)

    FakeAutoScalingGroup.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]
