"""CloudFormation behaviour the local AWS adds to moto, so that the pipeline's stack has a full life
cycle offline.

moto creates an ``AWS::EC2::RouteTable`` from a template but has no way to delete it, so deleting a
stack with its own VPC fails with ``DependencyViolation`` on the VPC (the route table is still in it).
:func:`apply` gives moto's route table the delete that CloudFormation performs on AWS. It must run in
the process that serves the local AWS (it changes moto's in-memory classes); it is idempotent.

moto updates an Auto Scaling group by deleting and creating it again. When the create fails (a bad
subnet, say), the stack still names the group it deleted, and every later update or rollback of
the stack fails with "AutoScalingGroup name not found". CloudFormation counts a resource that is
already gone as deleted; so does the local AWS after :func:`apply`.
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
    _tolerate_deleted_groups()


def _tolerate_deleted_groups() -> None:
    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    def delete_from_cloudformation_json(
        cls: type, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        backend: Any = autoscaling_backends[account_id][region_name]
        if resource_name in backend.autoscaling_groups:
            backend.delete_auto_scaling_group(resource_name)

    FakeAutoScalingGroup.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)  # type: ignore[method-assign,assignment]
