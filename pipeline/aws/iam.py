"""The least-privilege IAM policy of the pipeline's own credentials (pure, awacs): what ``ami``,
``deploy``, ``rollback``, ``status``, ``destroy`` and ``gc`` call, and nothing that whoever holds the
credentials could turn against the rest of the account. ``invoke iam-policy`` prints it.

The rule behind every statement: the pipeline may change only what it made. What it made carries the
tag ``ManagedBy`` from its creation on, and that key can be neither added to nor changed on anything
that exists, so a foreign image or snapshot can never be made to look like the pipeline's:

- ``Read``: the reads, action by action (no ``Get*``: no ``GetPasswordData``, no console screenshots,
  no snapshot blocks; the pipeline reads none);
- ``UploadSnapshots``: start a snapshot through the EBS direct APIs only with the pipeline's tag on it,
  and write blocks to and complete only snapshots that carry it;
- ``RegisterImages``, ``CopyImages``, ``FromOwnSnapshots``: register and copy images that get the tag
  as they are made, registered only from snapshots that carry it;
- ``TagOnCreate``: tag an image or snapshot in the call that creates it (``ec2:CreateAction``);
- ``TagOwn``: tag images and snapshots that carry the tag already, never the ``ManagedBy`` key itself;
- ``OwnImages``, ``ShareOwnSnapshots``: launch permissions and deprecation of the pipeline's own images,
  create-volume permissions of its own snapshots for the accounts of ``ami.share_with`` only (EC2 has
  no condition key naming the accounts an image is shared with; it has one for snapshots), never
  public;
- ``RemoveOwnImages``: deregister and delete only images and snapshots that carry the tag;
- ``StackChanges``, ``StackReads``: the environment's one stack, changed only with its CloudFormation
  service role (:mod:`pipeline.aws.service_role`), which holds the permissions for the stack's
  resources: these credentials cannot touch a load balancer, a group or a security group themselves,
  and no template sent with them reaches beyond what that role may do;
- ``PassServiceRole``: hand that one role to CloudFormation, and see that it exists;
- ``ImageKey`` (only with ``ami.kms_key_id``): the key, by its ARN (an alias is resolved: a policy that
  names an alias grants nothing on the key), used only through EC2 and EBS (``kms:ViaService``).

Each action comes from awacs' catalogue of real IAM actions, so a misspelt one fails at import.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from awacs import acm, cloudwatch, ebs, ec2, iam, kms
from awacs import autoscaling as asg
from awacs import cloudformation as cf
from awacs import elasticloadbalancing as elb
from awacs.aws import (
    Allow,
    ArnEquals,
    Condition,
    ConditionElement,
    ForAllValuesStringEquals,
    ForAllValuesStringNotEquals,
    Null,
    PolicyDocument,
    Statement,
    StringEquals,
)

from pipeline.aws import tags
from pipeline.config import Settings

CLOUDFORMATION = "cloudformation.amazonaws.com"
OWN_KEY = f"aws:ResourceTag/{tags.MANAGED}"
REQUEST_KEY = f"aws:RequestTag/{tags.MANAGED}"
# The calls that create images and snapshots and may tag them as they do (ec2:CreateAction).
CREATE_ACTIONS = ("RegisterImage", "CopyImage", "StartSnapshot")


def condition(**operators: Mapping[str, Any]) -> Condition:
    """One condition block: ``condition(StringEquals={"key": "value"}, Null={...})``; the operator
    names are IAM's, with ``ForAllValues_`` for ``ForAllValues:`` (Python names have no colon)."""
    kinds: dict[str, Callable[[Any], ConditionElement]] = {
        "ArnEquals": ArnEquals,
        "StringEquals": StringEquals,
        "Null": Null,
        "ForAllValues_StringEquals": ForAllValuesStringEquals,
        "ForAllValues_StringNotEquals": ForAllValuesStringNotEquals,
    }
    elements: list[ConditionElement] = [kinds[op](dict(values)) for op, values in operators.items()]
    return Condition(elements)


def regions(settings: Settings) -> list[str]:
    """The home region first, then the regions images are copied to."""
    return list(dict.fromkeys((settings.aws.region, *settings.ami.regions)))


# Images and snapshots in any region: the tag conditions say which; naming each region of ami.regions
# would make the policy outgrow what a managed policy may hold (6,144 characters).
def image_arns(settings: Settings) -> list[str]:
    return ["arn:aws:ec2:*::image/*"]


def snapshot_arns(settings: Settings) -> list[str]:
    return ["arn:aws:ec2:*::snapshot/*"]


def stack_arn(settings: Settings, account: str = "*") -> str:
    """The ARN pattern of the app/env stack (any stack id: a deleted and recreated stack gets a new one)."""
    name = tags.stack_name(settings.app.name, settings.env)
    return f"arn:aws:cloudformation:{settings.aws.region}:{account}:stack/{name}/*"


# -- statements --------------------------------------------------------------------------------------------

READ_ACTIONS: tuple[Any, ...] = (
    # ami: find images, snapshots, PV-GRUB kernels
    ec2.DescribeImages,
    ec2.DescribeSnapshots,
    # deploy and status: the health gate, the groups, the 5xx watch
    elb.DescribeTargetHealth,
    asg.DescribeAutoScalingGroups,
    cloudwatch.GetMetricStatistics,
    # gc: which images stacks and launch templates still use (every stack of the account)
    cf.DescribeStacks,
    ec2.DescribeLaunchTemplates,
    ec2.DescribeLaunchTemplateVersions,
    # the pre-flight checks of a deploy: the network and instance type it names
    ec2.DescribeVpcs,
    ec2.DescribeSubnets,
    ec2.DescribeInstanceTypes,
    ec2.DescribeInstanceTypeOfferings,
)


def _read() -> Statement:
    return Statement(Sid="Read", Effect=Allow, Action=list(READ_ACTIONS), Resource=["*"])


def _operate(settings: Settings, account: str) -> list[Statement]:
    """invoke logs: the console output of this environment's own instances (their launch template tags
    them); deploy: the one certificate deploy.certificate_arn names, checked before any change."""
    own = {
        OWN_KEY: tags.MANAGED_BY,
        f"aws:ResourceTag/{tags.APP}": settings.app.name,
        f"aws:ResourceTag/{tags.ENV}": settings.env,
    }
    out = [
        Statement(
            Sid="ReadOwnConsoles",
            Effect=Allow,
            Action=[ec2.GetConsoleOutput],
            Resource=[f"arn:aws:ec2:{settings.aws.region}:{account}:instance/*"],
            Condition=condition(StringEquals=own),
        )
    ]
    if settings.deploy.certificate_arn:
        out.append(
            Statement(
                Sid="ReadCertificate",
                Effect=Allow,
                Action=[acm.DescribeCertificate],
                Resource=[settings.deploy.certificate_arn],
            )
        )
    return out


def _upload(settings: Settings) -> list[Statement]:
    home = [f"arn:aws:ec2:{settings.aws.region}::snapshot/*"]
    return [
        Statement(
            Sid="UploadSnapshots",
            Effect=Allow,
            Action=[ebs.StartSnapshot],
            Resource=home,
            Condition=condition(StringEquals={REQUEST_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            Sid="WriteOwnSnapshots",
            Effect=Allow,
            Action=[ebs.PutSnapshotBlock, ebs.CompleteSnapshot],
            Resource=home,
            Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}),
        ),
    ]


def _register(settings: Settings) -> list[Statement]:
    copies = bool(settings.ami.regions)
    creates = [a for a in CREATE_ACTIONS if copies or a != "CopyImage"]
    out = [
        Statement(
            Sid="RegisterImages",
            Effect=Allow,
            Action=[ec2.RegisterImage],
            # the new image gets the pipeline's tag as it is made ...
            Resource=image_arns(settings),
            Condition=condition(StringEquals={REQUEST_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            # ... and is made only from a snapshot of the pipeline's: not from another volume's
            # snapshot, which an image of the pipeline's could then share
            Sid="FromOwnSnapshots",
            Effect=Allow,
            Action=[ec2.RegisterImage],
            Resource=snapshot_arns(settings),
            Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            Sid="TagOnCreate",
            Effect=Allow,
            Action=[ec2.CreateTags],
            Resource=[*image_arns(settings), *snapshot_arns(settings)],
            Condition=condition(StringEquals={"ec2:CreateAction": creates, REQUEST_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            Sid="TagOwn",
            Effect=Allow,
            Action=[ec2.CreateTags],
            Resource=[*image_arns(settings), *snapshot_arns(settings)],
            Condition=condition(
                StringEquals={OWN_KEY: tags.MANAGED_BY},
                ForAllValues_StringNotEquals={"aws:TagKeys": [tags.MANAGED]},
            ),
        ),
    ]
    if copies:  # only with ami.regions
        out.append(
            Statement(
                Sid="CopyImages",
                Effect=Allow,
                Action=[ec2.CopyImage],
                # a copy and its new snapshots get the tag as they are made
                Resource=[*image_arns(settings), *snapshot_arns(settings)],
                Condition=condition(StringEquals={REQUEST_KEY: tags.MANAGED_BY}),
            )
        )
    return out


def _share(settings: Settings) -> list[Statement]:
    accounts = list(settings.ami.share_with)
    # Sharing a snapshot: only with the configured accounts, never with a group ("all" is public);
    # removing any permission is always allowed (that is how a public one is withdrawn).
    adds: dict[str, Mapping[str, Any]] = {"Null": {"ec2:Add/group": "true"}}
    if accounts:
        adds["ForAllValues_StringEquals"] = {"ec2:Add/userId": accounts}
    else:
        adds["Null"] = {"ec2:Add/group": "true", "ec2:Add/userId": "true"}
    return [
        Statement(
            Sid="OwnImages",
            Effect=Allow,
            Action=[ec2.DescribeImageAttribute, ec2.ModifyImageAttribute, ec2.EnableImageDeprecation],
            Resource=image_arns(settings),
            Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            Sid="SeeOwnSnapshots",
            Effect=Allow,
            Action=[ec2.DescribeSnapshotAttribute],
            Resource=snapshot_arns(settings),
            Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}),
        ),
        Statement(
            Sid="ShareOwnSnapshots",
            Effect=Allow,
            Action=[ec2.ModifySnapshotAttribute],
            Resource=snapshot_arns(settings),
            Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}, **adds),
        ),
    ]


def _remove(settings: Settings) -> Statement:
    return Statement(
        Sid="RemoveOwnImages",
        Effect=Allow,
        Action=[ec2.DeregisterImage, ec2.DeleteSnapshot],
        Resource=[*image_arns(settings), *snapshot_arns(settings)],
        Condition=condition(StringEquals={OWN_KEY: tags.MANAGED_BY}),
    )


def _stack(settings: Settings, account: str, role: str) -> list[Statement]:
    arn = stack_arn(settings, account)
    return [
        Statement(
            Sid="StackChanges",
            Effect=Allow,
            Action=[cf.CreateStack, cf.UpdateStack, cf.DeleteStack, cf.CreateChangeSet],
            Resource=[arn],
            # CloudFormation acts with the service role, never with these credentials, and imports
            # nothing: a foreign resource imported into the stack would become the role's to change
            Condition=condition(
                ArnEquals={"cloudformation:RoleArn": role},
                Null={"cloudformation:ImportResourceTypes": "true"},
            ),
        ),
        Statement(
            Sid="StackReads",
            Effect=Allow,
            Action=[
                cf.DescribeStackEvents,
                cf.GetTemplate,
                cf.DescribeChangeSet,
                cf.DeleteChangeSet,
                cf.ListChangeSets,
            ],
            Resource=[arn],
        ),
        Statement(
            Sid="PassServiceRole",
            Effect=Allow,
            Action=[iam.PassRole],
            Resource=[role],
            Condition=condition(StringEquals={"iam:PassedToService": CLOUDFORMATION}),
        ),
        Statement(Sid="SeeServiceRole", Effect=Allow, Action=[iam.GetRole], Resource=[role]),
    ]


def _image_key(settings: Settings, key_arn: str) -> list[Statement]:
    # EBS encrypts snapshots and volumes with the key on the caller's behalf: through EC2
    # (RegisterImage, CopyImage) and through the EBS direct APIs (StartSnapshot).
    via = [f"{service}.{r}.amazonaws.com" for r in regions(settings) for service in ("ec2", "ebs")]
    return [
        Statement(
            Sid="ImageKey",
            Effect=Allow,
            Action=[
                kms.GenerateDataKeyWithoutPlaintext,
                kms.Decrypt,
                kms.ReEncryptFrom,
                kms.ReEncryptTo,
                kms.CreateGrant,
            ],
            Resource=[key_arn],
            Condition=condition(StringEquals={"kms:ViaService": via}),
        ),
        Statement(Sid="SeeImageKey", Effect=Allow, Action=[kms.DescribeKey], Resource=[key_arn]),
    ]


def key_arn(settings: Settings, account: str, resolved: str | None = None) -> str | None:
    """The ARN of ``ami.kms_key_id``: ``resolved`` (what DescribeKey said an alias names), the ARN as
    given, or one built from a key id. An alias that was not resolved is refused by the caller."""
    key = settings.ami.kms_key_id
    if not key:
        return None
    if resolved:
        return resolved
    if key.startswith("arn:") and ":key/" in key:
        return key
    if key.startswith("alias/") or ":alias/" in key:
        raise ValueError(f"ami.kms_key_id: the alias {key} must be resolved to its key's ARN first")
    return f"arn:aws:kms:{settings.aws.region}:{account}:key/{key}"


def policy(settings: Settings, account: str = "*", key: str | None = None) -> PolicyDocument:
    """The pipeline's policy for the environment ``settings`` describes (``key``: the key ARN an
    alias in ``ami.kms_key_id`` resolved to)."""
    from pipeline.aws import service_role

    statements = [
        _read(),
        *_operate(settings, account),
        *_upload(settings),
        *_register(settings),
        *_share(settings),
        _remove(settings),
        *_stack(settings, account, service_role.role_arn(settings, account)),
    ]
    arn = key_arn(settings, account, key)
    if arn:
        statements.extend(_image_key(settings, arn))
    return PolicyDocument(Version="2012-10-17", Statement=statements)


def to_json(document: PolicyDocument) -> str:
    """A policy as the JSON document IAM takes (sorted keys)."""
    return json.dumps(json.loads(document.to_json()), indent=2, sort_keys=True)


def policy_json(settings: Settings, account: str = "*", key: str | None = None) -> str:
    return to_json(policy(settings, account, key))


def actions(document: PolicyDocument) -> Sequence[str]:
    """Every action a policy names, as written."""
    data = json.loads(document.to_json())
    return [a for st in data["Statement"] for a in st["Action"]]
