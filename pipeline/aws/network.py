"""The network part of the stack's blueprint (pure): a VPC of the stack's own, or an existing one.

Its own VPC has two public subnets in two zones, an internet gateway and a route to it. CloudFormation
creates and deletes resources in parallel unless one refers to another, and a load balancer or an Auto
Scaling group in a new VPC does not refer to the gateway's attachment: CloudFormation's documentation
("DependsOn attribute", "When a DependsOn attribute is required") lists the resources that must
therefore declare ``DependsOn`` the VPC-gateway attachment: Auto Scaling groups, EC2 instances, Elastic
Load Balancing load balancers, Elastic IP addresses, RDS database instances and routes that use the
internet gateway. Without it the load balancer may be created before the VPC has its gateway ("VPC
has no internet gateway") and, on delete, the gateway detached while the load balancer still holds
public addresses (the delete sticks). :data:`NEEDS_GATEWAY` is that list; :class:`Network` gives the
attachment's name to the resources that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from troposphere import AWSHelperFn, GetAZs, Parameter, Ref, Select, Tags, Template, ec2

VPC_CIDR = "10.80.0.0/16"
SUBNET_CIDRS = ("10.80.0.0/20", "10.80.16.0/20")
GATEWAY_ATTACHMENT = "GatewayAttachment"
# Resource types that must depend on the VPC-gateway attachment in a VPC the stack makes (the
# DependsOn documentation's list, as CloudFormation type names; a route only when it uses the gateway).
NEEDS_GATEWAY = (
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::EC2::Instance",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::ElasticLoadBalancing::LoadBalancer",
    "AWS::EC2::EIP",
    "AWS::RDS::DBInstance",
    "AWS::EC2::Route",
)


@dataclass(frozen=True)
class Network:
    vpc: Any  # Ref of the VPC id
    subnets: Any  # the subnet ids: a Ref of a list parameter, or a list of Refs
    attachment: str | None  # logical id of the VPC-gateway attachment (own VPC only)

    def depends(self) -> dict[str, Any]:
        """The ``DependsOn`` keyword for a resource that needs the internet gateway attached."""
        return {"DependsOn": [self.attachment]} if self.attachment else {}


def network(t: Template, stack_name: str, existing: bool, common: Mapping[str, str]) -> Network:
    """Parameters for an existing VPC and subnets, or the resources of a VPC of the stack's own."""
    if existing:
        vpc = t.add_parameter(Parameter("VpcId", Type="AWS::EC2::VPC::Id", Description="an existing VPC"))
        subnets = t.add_parameter(
            Parameter(
                "SubnetIds",
                Type="List<AWS::EC2::Subnet::Id>",
                Description="public subnets of that VPC in at least two availability zones",
            )
        )
        return Network(Ref(vpc), Ref(subnets), None)
    own = t.add_resource(
        ec2.VPC(
            "Vpc",
            CidrBlock=VPC_CIDR,
            EnableDnsHostnames=True,
            EnableDnsSupport=True,
            Tags=Tags(**common, Name=stack_name),
        )
    )
    gateway = t.add_resource(ec2.InternetGateway("InternetGateway", Tags=Tags(**common, Name=stack_name)))
    attachment = t.add_resource(
        ec2.VPCGatewayAttachment(GATEWAY_ATTACHMENT, VpcId=Ref(own), InternetGatewayId=Ref(gateway))
    )
    table = t.add_resource(ec2.RouteTable("PublicRouteTable", VpcId=Ref(own), Tags=Tags(**common)))
    t.add_resource(
        ec2.Route(
            "PublicRoute",
            DependsOn=attachment,
            RouteTableId=Ref(table),
            DestinationCidrBlock="0.0.0.0/0",
            GatewayId=Ref(gateway),
        )
    )
    subnet_refs: list[AWSHelperFn] = []
    for index, cidr in enumerate(SUBNET_CIDRS):
        name = f"PublicSubnet{'AB'[index]}"
        subnet = t.add_resource(
            ec2.Subnet(
                name,
                VpcId=Ref(own),
                CidrBlock=cidr,
                AvailabilityZone=Select(index, GetAZs("")),
                # Instances get no public address: only the load balancer is reachable from outside.
                MapPublicIpOnLaunch=False,
                Tags=Tags(**common, Name=f"{stack_name}-{'ab'[index]}"),
            )
        )
        t.add_resource(
            ec2.SubnetRouteTableAssociation(f"{name}Routes", SubnetId=Ref(subnet), RouteTableId=Ref(table))
        )
        subnet_refs.append(Ref(subnet))
    return Network(Ref(own), subnet_refs, GATEWAY_ATTACHMENT)


def ingress_from(cidr: str, port: int) -> ec2.SecurityGroupRule:
    family = {"CidrIpv6": cidr} if ":" in cidr else {"CidrIp": cidr}
    return ec2.SecurityGroupRule(
        Description=f"listener port from {cidr}", IpProtocol="tcp", FromPort=port, ToPort=port, **family
    )
