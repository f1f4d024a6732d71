"""The CloudFormation service role at run time: find it (its ARN goes with every stack call), or, where
the pipeline may (the local AWS, whose credentials are an administrator's), create it from the same
bootstrap template an administrator deploys on AWS (:mod:`pipeline.aws.service_role`)."""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws import cfn, service_role, tags
from pipeline.aws.calls import error_code
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import DeployError

log = logging.getLogger(__name__)


def deploy_hint(settings: Settings) -> str:
    """The command an administrator runs once per environment."""
    stack = service_role.bootstrap_stack_name(settings)
    return (
        f"an administrator deploys it once: aws cloudformation deploy --region {settings.aws.region} "
        f"--template-file cfn/{stack}.json --stack-name {stack} --capabilities CAPABILITY_NAMED_IAM"
    )


def ensure_role(settings: Settings, clients: Clients, waiter: cfn.Waiter, create: bool) -> str:
    """The ARN of the environment's service role; with ``create``, the bootstrap stack is made first
    when the role does not exist."""
    account = str(clients.sts().get_caller_identity()["Account"])
    name = service_role.role_name(settings)
    try:
        clients.iam().get_role(RoleName=name)
        return service_role.role_arn(settings, account)
    except ClientError as err:
        if error_code(err) != "NoSuchEntity":
            raise
    if not create:
        raise DeployError(
            f"the CloudFormation service role {name} does not exist in account {account}",
            hint=deploy_hint(settings),
        )
    stack = service_role.bootstrap_stack_name(settings)
    ui.say(f"creating the CloudFormation service role {name} (stack {stack})")
    cf = clients.cloudformation()
    resp = cf.create_stack(
        StackName=stack,
        TemplateBody=service_role.template(settings),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        Tags=tags.to_aws(tags.scope(settings.app.name, settings.env)),  # type: ignore[arg-type]
        OnFailure="DELETE",
        ClientRequestToken=cfn.request_token("create-role"),
    )
    events = cfn.EventStream(cf, resp["StackId"], lambda line: log.info("%s", line))
    cfn.wait(cf, resp["StackId"], events, waiter, "create of the service role")
    return service_role.role_arn(settings, account)


def resolve_key(settings: Settings, clients: Clients) -> str | None:
    """The ARN of the key ``ami.kms_key_id`` names, an alias resolved through KMS (DescribeKey): a
    policy that names an alias grants nothing on the key behind it."""
    key = settings.ami.kms_key_id
    if not key or not (key.startswith("alias/") or ":alias/" in key):
        return None
    from pipeline.aws import preflight

    return preflight.check_kms_key(settings, clients)
