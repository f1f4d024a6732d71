"""CloudFormation behaviour the local AWS adds to moto, so that the pipeline's stack has a full life
cycle offline.

moto creates an ``AWS::EC2::RouteTable`` from a template but has no way to delete it, so deleting a
stack with its own VPC fails with ``DependencyViolation`` on the VPC (the route table is still in it).
:func:`apply` gives moto's route table the delete that CloudFormation performs on AWS. moto also drops
an ``AWS::ElasticLoadBalancingV2::LoadBalancer``'s ``LoadBalancerAttributes`` (the idle timeout the
local load balancer follows, say): :func:`apply` sets them on create and on update, as CloudFormation
does. It must run in the process that serves the local AWS (it changes moto's in-memory classes); it
is idempotent.
"""

from __future__ import annotations

from typing import Any


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


def _load_balancer_attributes() -> None:
    from moto.elbv2.models import FakeLoadBalancer

    create = FakeLoadBalancer.create_from_cloudformation_json

    def with_attributes(lb: Any, cloudformation_json: Any) -> Any:
        for item in cloudformation_json.get("Properties", {}).get("LoadBalancerAttributes", []) or []:
            lb.attrs[str(item["Key"])] = str(item["Value"])
        return lb

    def create_from_cloudformation_json(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kw: Any
    ) -> Any:
        lb = create(resource_name, cloudformation_json, account_id, region_name, **kw)
        return with_attributes(lb, cloudformation_json)

    def update_from_cloudformation_json(
        cls: type,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        # Attributes change in place on AWS (no replacement); moto's other properties stay as created.
        return with_attributes(original_resource, cloudformation_json)

    FakeLoadBalancer.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[method-assign,assignment,arg-type]
    FakeLoadBalancer.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[method-assign,assignment]
