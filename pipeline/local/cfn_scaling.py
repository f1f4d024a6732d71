"""CloudFormation behaviour the local AWS adds to moto for Auto Scaling groups and their scaling policies,
so that a stack update treats a scaled group as CloudFormation does (:func:`apply`, from
:func:`pipeline.local.cfn_fixes.apply`):

- **Groups are updated in place.** moto updates an ``AWS::AutoScaling::AutoScalingGroup`` by deleting
  it and creating it again, so every update of a group that serves would replace all its instances.
  CloudFormation updates a group in place (its size, launch template, subnets, health check, tags and
  target groups all update with "No interruption"; instances are replaced only under an
  ``UpdatePolicy``, which the stack has none of): the local AWS calls UpdateAutoScalingGroup with the
  new properties, after setting the group's new tags (so instances a larger desired capacity launches
  carry them) and attaching or detaching target groups. An instance that runs stays.
- **Scaling policies.** moto has no CloudFormation model for ``AWS::AutoScaling::ScalingPolicy``:
  the local AWS makes one with PutScalingPolicy, changes it with PutScalingPolicy under the same name
  and removes it with DeletePolicy; its ``Ref`` is the policy's ARN, as on AWS. (Nothing evaluates a
  policy here: there are no CloudWatch alarms. Tests change a group's desired capacity as an alarm
  would.)
- **Full names.** ``Fn::GetAtt`` of a load balancer's ``LoadBalancerFullName`` and of a target
  group's ``TargetGroupFullName`` (what a request count policy's ``ResourceLabel`` is made of), which
  moto does not implement: the ARN's resource part, ``app/<name>/<id>`` and ``targetgroup/<name>/<id>``.
- **Conditions follow the parameters.** moto's stack update decides what to add, change and remove
  from the templates' text alone, so a resource whose ``Condition`` turned true or false because a
  parameter changed is left as it was. CloudFormation creates a resource whose condition became true
  and deletes one whose condition became false ("Conditions", CloudFormation user guide): so does the
  local AWS, after the rest of the update. And in a condition a ``Number`` parameter is the string
  it was given ("when you use the parameter elsewhere in your template (for example, by using the
  Ref intrinsic function), the parameter value becomes a string": "Parameters", CloudFormation user
  guide); moto compares the number it made of it, so ``Fn::Equals [Ref Capacity, "0"]`` never held.
"""

from __future__ import annotations

from typing import Any


def apply() -> None:
    """Install the fixes (once per process)."""
    from moto.autoscaling.models import FakeAutoScalingGroup

    if getattr(FakeAutoScalingGroup, "_pipeline_in_place", False):
        return
    _groups_in_place()
    _scaling_policies()
    _full_names()
    _conditions_follow_parameters()
    FakeAutoScalingGroup._pipeline_in_place = True  # type: ignore[attr-defined]


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


# -- groups ---------------------------------------------------------------------------------------------


def _groups_in_place() -> None:
    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    create = FakeAutoScalingGroup.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def update(
        cls: type,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        backend: Any = autoscaling_backends[account_id][region_name]
        name = getattr(original_resource, "name", None)
        if name not in backend.autoscaling_groups:  # already gone (a failed update): make it anew
            return create(cls, new_resource_name, cloudformation_json, account_id, region_name)
        props = cloudformation_json.get("Properties", {})
        group = backend.autoscaling_groups[name]
        group.tags = [
            {
                "ResourceId": name,
                "ResourceType": "auto-scaling-group",
                "Key": str(tag["Key"]),
                "Value": str(tag["Value"]),
                "PropagateAtLaunch": bool(tag.get("PropagateAtLaunch", False)),
            }
            for tag in props.get("Tags", [])
        ]
        wanted = [str(arn) for arn in props.get("TargetGroupARNs", [])]
        gone = [arn for arn in group.target_group_arns if arn not in wanted]
        new = [arn for arn in wanted if arn not in group.target_group_arns]
        if gone:
            backend.detach_load_balancer_target_groups(name, gone)
        if new:
            backend.attach_load_balancer_target_groups(name, new)
        backend.update_auto_scaling_group(
            name=name,
            availability_zones=props.get("AvailabilityZones", []),
            desired_capacity=_int(props.get("DesiredCapacity")),
            max_size=_int(props.get("MaxSize")),
            min_size=_int(props.get("MinSize")),
            launch_config_name=props.get("LaunchConfigurationName"),
            launch_template=props.get("LaunchTemplate", {}),
            vpc_zone_identifier=",".join(props.get("VPCZoneIdentifier", [])) or None,
            health_check_period=_int(props.get("HealthCheckGracePeriod")),
            health_check_type=props.get("HealthCheckType"),
            new_instances_protected_from_scale_in=props.get("NewInstancesProtectedFromScaleIn"),
            mixed_instances_policy=props.get("MixedInstancesPolicy"),
        )
        return group

    FakeAutoScalingGroup.update_from_cloudformation_json = classmethod(update)  # type: ignore[method-assign,assignment]


# -- scaling policies -----------------------------------------------------------------------------------


def _scaling_policies() -> None:
    from moto.autoscaling.models import autoscaling_backends
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel

    def put(name: str, props: dict[str, Any], account_id: str, region_name: str) -> Any:
        backend: Any = autoscaling_backends[account_id][region_name]
        return backend.put_scaling_policy(
            name=name,
            policy_type=props.get("PolicyType", "SimpleScaling"),
            metric_aggregation_type=props.get("MetricAggregationType"),
            adjustment_type=props.get("AdjustmentType"),
            as_name=props["AutoScalingGroupName"],
            min_adjustment_magnitude=props.get("MinAdjustmentMagnitude"),
            scaling_adjustment=_int(props.get("ScalingAdjustment")),
            cooldown=_int(props.get("Cooldown")),
            target_tracking_config=props.get("TargetTrackingConfiguration") or {},
            step_adjustments=props.get("StepAdjustments"),
            estimated_instance_warmup=props.get("EstimatedInstanceWarmup"),
            predictive_scaling_configuration=props.get("PredictiveScalingConfiguration"),
        )

    class ScalingPolicy(CloudFormationModel):
        """The stack's view of one policy of the Auto Scaling backend."""

        def __init__(self, policy: Any, account_id: str, region_name: str) -> None:
            self.policy = policy
            self.account_id = account_id
            self.region_name = region_name

        @staticmethod
        def cloudformation_type() -> str:
            return "AWS::AutoScaling::ScalingPolicy"

        @staticmethod
        def cloudformation_name_type() -> str:
            return "PolicyName"

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr == "Arn"

        def get_cfn_attribute(self, attribute_name: str) -> Any:
            if attribute_name == "Arn":
                return self.policy.arn
            raise NotImplementedError(attribute_name)

        @property
        def physical_resource_id(self) -> str:
            return str(self.policy.arn)

        @classmethod
        def create_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kw: Any
        ) -> Any:
            props = cloudformation_json.get("Properties", {})
            return cls(put(resource_name, props, account_id, region_name), account_id, region_name)

        @classmethod
        def update_from_cloudformation_json(
            cls,
            original_resource: Any,
            new_resource_name: str,
            cloudformation_json: Any,
            account_id: str,
            region_name: str,
        ) -> Any:
            if original_resource is None:
                return cls.create_from_cloudformation_json(
                    new_resource_name, cloudformation_json, account_id, region_name
                )
            props = cloudformation_json.get("Properties", {})
            policy = put(original_resource.policy.name, props, account_id, region_name)
            return cls(policy, account_id, region_name)

        @classmethod
        def delete_from_cloudformation_json(
            cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
        ) -> None:
            backend: Any = autoscaling_backends[account_id][region_name]
            for name, policy in list(backend.policies.items()):
                if resource_name in (name, policy.arn):
                    backend.delete_policy(name)

        def delete(self, account_id: str, region_name: str) -> None:
            autoscaling_backends[account_id][region_name].delete_policy(self.policy.name)

    # moto finds models among CloudFormationModel's subclasses, and caches what it found.
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    globals()["_ScalingPolicyModel"] = ScalingPolicy  # keep the class alive (subclass lists are weak)


# -- full names -----------------------------------------------------------------------------------------


def _full_names() -> None:
    from moto.elbv2.models import FakeLoadBalancer, FakeTargetGroup

    balancer_attribute = FakeLoadBalancer.get_cfn_attribute

    def balancer(self: Any, attribute_name: str) -> Any:
        if attribute_name == "LoadBalancerFullName":
            return str(self.arn).split(":loadbalancer/", 1)[1]
        return balancer_attribute(self, attribute_name)

    group_attribute = getattr(FakeTargetGroup, "get_cfn_attribute", None)

    def target_group(self: Any, attribute_name: str) -> Any:
        if attribute_name == "TargetGroupFullName":
            return str(self.arn).split(":", 5)[5]
        if group_attribute is None:
            raise NotImplementedError(attribute_name)
        return group_attribute(self, attribute_name)

    FakeLoadBalancer.get_cfn_attribute = balancer  # type: ignore[method-assign]
    FakeTargetGroup.get_cfn_attribute = target_group  # type: ignore[attr-defined]


# -- conditions -----------------------------------------------------------------------------------------


def _conditions_follow_parameters() -> None:
    from moto.cloudformation import parsing
    from moto.cloudformation.parsing import ResourceMap

    parse_condition = parsing.parse_condition

    def as_cloudformation(condition: Any, resources_map: Any, condition_map: Any) -> Any:
        if isinstance(condition, dict) and list(condition) == ["Fn::Equals"]:
            left, right = (
                condition_map[v["Condition"]]
                if isinstance(v, dict) and "Condition" in v
                else parsing.clean_json(v, resources_map)
                for v in condition["Fn::Equals"]
            )
            if isinstance(left, int | float) != isinstance(right, int | float):
                return str(left) == str(right)  # a Number parameter is a string to Fn::Equals
        return parse_condition(condition, resources_map, condition_map)

    parsing.parse_condition = as_cloudformation

    update = ResourceMap.update

    def update_with_conditions(self: Any, template: dict[str, Any], parameters: Any = None) -> None:
        update(self, template, parameters)
        for name, resource in template.get("Resources", {}).items():
            condition = resource.get("Condition")
            if condition is None:
                continue
            made = self._parsed_resources.get(name)
            if self.lazy_condition_map[condition]:
                if made is None:
                    self._parsed_resources.pop(name, None)
                    _ = self[name]  # creates it (moto's resource map makes a resource when looked up)
            elif made is not None:
                self._delete_resource(made, resource)
                self._parsed_resources.pop(name, None)

    ResourceMap.update = update_with_conditions  # type: ignore[method-assign]
