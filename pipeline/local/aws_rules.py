"""What AWS refuses or guarantees and moto does not: the local AWS behaves as AWS does here.

moto stores what it is sent and answers success; a pipeline that passes only against it may fail on
AWS at the first retry or the first encrypted upload. :func:`apply` changes moto's classes (in the
process that serves the local AWS, and in the tests' in-process moto) so that:

- **EBS direct StartSnapshot** follows the EBS API reference and "Encryption outcomes for EBS direct
  APIs": ``ParentSnapshotId`` with ``Encrypted`` or ``KmsKeyArn`` is a ValidationException; a child
  inherits its parent's key; without a parent, ``Encrypted``/``KmsKeyArn`` encrypt the snapshot (the
  account's default key when no ARN is given); a retried request with the same ``ClientToken``
  returns the snapshot the first one started. A child holds its parent's blocks as its own (as on
  EBS, where ``ListSnapshotBlocks`` lists inherited blocks and every snapshot stands alone), so
  deleting a parent never damages a child; a deleted snapshot's blocks are gone with it.
- **EC2 RegisterImage/CopyImage** refuse a name already used by another AMI of the account in the
  region (``InvalidAMIName.Duplicate``); ``CopyImage`` with the same ``ClientToken`` returns the
  copy the first request made.
- **CloudFormation** honours ``ClientRequestToken`` (CreateStack, UpdateStack, DeleteStack,
  ExecuteChangeSet) and ``ClientToken`` (CreateChangeSet): a request repeated with the token of the
  operation that already ran returns that operation's result instead of failing (AlreadyExists, "No
  updates are to be performed") or running it again. A change set name already used on the stack is
  AlreadyExistsException otherwise, and an executed change set cannot be executed again.
- **Auto Scaling** refuses a desired capacity outside the group's bounds: SetDesiredCapacity with
  "New SetDesiredCapacity value 3 is above max value 2 for the AutoScalingGroup." (below: "below min
  value"), UpdateAutoScalingGroup (and so a stack update of a group) with "Desired capacity:2 must be
  between the specified min size:4 and max size:10" (the wordings AWS answers with, as reported in
  kubernetes/autoscaler#943 and convox/praxis#258; moto takes any number).

Every rule is idempotent to install, and replaying the local AWS's journal goes through the same rules.
"""

from __future__ import annotations

from typing import Any

EBS_ENCRYPTION_DOC = "https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-encryption.html"


def _error(code: str, message: str) -> Exception:
    """An AWS error moto serializes for the service of the request. (A class of this module: moto
    looks for the error's shape in the service named by a ``moto.*`` exception's module.)"""
    from moto.core.exceptions import ServiceException

    class RuleError(ServiceException):
        pass

    return RuleError(code, message)


def apply() -> None:
    """Install the rules (once per process)."""
    from moto.ebs.responses import EBSResponse

    if getattr(EBSResponse, "_pipeline_rules", False):
        return
    _ebs()
    _ec2()
    _cloudformation()
    _autoscaling()
    EBSResponse._pipeline_rules = True  # type: ignore[attr-defined]


# -- EBS direct ------------------------------------------------------------------------------------------


def _ebs() -> None:
    from moto.core.responses import ActionResult
    from moto.ebs.models import ebs_backends
    from moto.ebs.responses import EBSResponse
    from moto.ec2.models.elastic_block_store import EBSBackend as Ec2Ebs

    def invalid(message: str) -> Exception:
        return _error("ValidationException", message)

    def start_snapshot(self: Any) -> ActionResult:
        backend = self.ebs_backend
        tokens: dict[str, str] = backend.__dict__.setdefault("_pipeline_tokens", {})
        token = self._get_param("ClientToken")
        if token and tokens.get(token) in backend.snapshots:
            return ActionResult(_snapshot_result(backend.snapshots[tokens[token]]))
        parent_id = self._get_param("ParentSnapshotId")
        encrypted = self._get_param("Encrypted")
        key = self._get_param("KmsKeyArn")
        ec2 = backend.ec2_backend
        parent = None
        if parent_id:
            if encrypted is not None:
                raise invalid("You can't specify ParentSnapshotId and Encrypted in the same request.")
            if parent_id not in ec2.snapshots or parent_id not in backend.snapshots:
                raise _error("ResourceNotFoundException", f"The snapshot {parent_id} does not exist.")
            parent = backend.snapshots[parent_id]
            if key:
                raise invalid(
                    f"KmsKeyArn cannot be given with ParentSnapshotId: the snapshot takes the parent's "
                    f"encryption ({EBS_ENCRYPTION_DOC})"
                )
            if parent.volume_size > int(self._get_param("VolumeSize")):
                raise invalid("The volume size must be at least the size of the parent snapshot's volume.")
        snapshot = backend.start_snapshot(
            volume_size=self._get_param("VolumeSize"),
            tags=self._get_param("Tags"),
            description=self._get_param("Description"),
        )
        record = ec2.snapshots[snapshot.snapshot_id]
        if parent is not None:
            snapshot.blocks = dict(parent.blocks)  # its own copy: the parent may go, the child stays
            source = ec2.snapshots[parent.snapshot_id]
            record.encrypted, record.kms_key_id = source.encrypted, source.kms_key_id
        elif encrypted or key:
            if not key:
                if not ec2.default_kms_key_id:
                    ec2._create_default_encryption_key()
                key = ec2.default_kms_key_id
            record.encrypted, record.kms_key_id = True, key
        if token:
            tokens[token] = snapshot.snapshot_id
        return ActionResult(_snapshot_result(snapshot))

    EBSResponse.start_snapshot = start_snapshot  # type: ignore[method-assign]

    delete = Ec2Ebs.delete_snapshot

    def delete_snapshot(self: Any, snapshot_id: str) -> Any:
        gone = delete(self, snapshot_id)
        ebs_backends[self.account_id][self.region_name].snapshots.pop(snapshot_id, None)
        return gone

    Ec2Ebs.delete_snapshot = delete_snapshot  # type: ignore[method-assign]


def _snapshot_result(snapshot: Any) -> dict[str, Any]:
    return {
        "SnapshotId": snapshot.snapshot_id,
        "OwnerId": snapshot.account_id,
        "Status": snapshot.status,
        "StartTime": snapshot.start_time,
        "VolumeSize": snapshot.volume_size,
        "BlockSize": snapshot.block_size,
        "Tags": snapshot.tags,
        "Description": snapshot.description,
    }


# -- EC2 images ------------------------------------------------------------------------------------------


def _ec2() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.amis import AmisResponse

    def refuse_duplicate(backend: Any, name: str | None) -> None:
        for ami in backend.amis.values():
            if name and ami.name == name and ami.owner_id == backend.account_id:
                raise EC2ClientError(
                    "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}"
                )

    register = AmisResponse.register_image

    def register_image(self: Any) -> ActionResult:
        refuse_duplicate(self.ec2_backend, self._get_param("Name"))
        result: ActionResult = register(self)
        return result

    copy = AmisResponse.copy_image

    def copy_image(self: Any) -> ActionResult:
        backend = self.ec2_backend
        tokens: dict[str, str] = backend.__dict__.setdefault("_pipeline_copy_tokens", {})
        token = self._get_param("ClientToken")
        if token and tokens.get(token) in backend.amis:
            return ActionResult({"ImageId": tokens[token]})
        refuse_duplicate(backend, self._get_param("Name"))
        result: ActionResult = copy(self)
        if token:
            tokens[token] = result.result["ImageId"]  # type: ignore[index]
        return result

    AmisResponse.register_image = register_image  # type: ignore[method-assign]
    AmisResponse.copy_image = copy_image  # type: ignore[method-assign]


# -- CloudFormation --------------------------------------------------------------------------------------


def _cloudformation() -> None:
    from moto.cloudformation.exceptions import AlreadyExistsException, ValidationError
    from moto.cloudformation.responses import CloudFormationResponse
    from moto.core.responses import ActionResult, EmptyResult

    R = CloudFormationResponse
    create, update, delete = R.create_stack, R.update_stack, R.delete_stack
    create_set, execute_set = R.create_change_set, R.execute_change_set

    def active(self: Any, name: str) -> Any:
        """The stack named (or with the id) ``name`` that is not deleted, or None."""
        for stack in self.cloudformation_backend.stacks.values():
            if name in (stack.name, stack.stack_id):
                return stack
        return None

    def create_stack(self: Any) -> ActionResult:
        token = self._get_param("ClientRequestToken")
        stack = active(self, self._get_param("StackName"))
        if token and stack is not None and getattr(stack, "_pipeline_token", None) == token:
            return ActionResult({"StackId": stack.stack_id})
        result: ActionResult = create(self)
        _remember(active(self, self._get_param("StackName")), token)
        return result

    def update_stack(self: Any) -> ActionResult:
        token = self._get_param("ClientRequestToken")
        stack = active(self, self._get_param("StackName"))
        if token and stack is not None and getattr(stack, "_pipeline_token", None) == token:
            return ActionResult({"StackId": stack.stack_id})
        result: ActionResult = update(self)
        _remember(stack, token)
        return result

    def delete_stack(self: Any) -> Any:
        _remember(active(self, self._get_param("StackName")), self._get_param("ClientRequestToken"))
        return delete(self)

    def change_set(self: Any, name: str) -> Any:
        for cs in self.cloudformation_backend.change_sets.values():
            if name in (cs.change_set_name, cs.change_set_id):
                return cs
        return None

    def create_change_set(self: Any) -> ActionResult:
        token = self._get_param("ClientToken")
        existing = change_set(self, self._get_param("ChangeSetName"))
        if existing is not None:
            if token and getattr(existing, "_pipeline_token", None) == token:
                return ActionResult({"Id": existing.change_set_id, "StackId": existing.stack_id})
            raise AlreadyExistsException(f"ChangeSet {existing.change_set_name} already exists")
        result: ActionResult = create_set(self)
        _remember(change_set(self, self._get_param("ChangeSetName")), token)
        return result

    def execute_change_set(self: Any) -> Any:
        token = self._get_param("ClientRequestToken")
        cs = change_set(self, self._get_param("ChangeSetName"))
        if cs is None:
            raise ValidationError(self._get_param("ChangeSetName"))
        if cs.execution_status == "EXECUTE_COMPLETE":
            if token and getattr(cs, "_pipeline_executed", None) == token:
                return EmptyResult()
            raise _error(
                "InvalidChangeSetStatus",
                f"ChangeSet [{cs.change_set_id}] cannot be executed in its current execution status of "
                "[EXECUTE_COMPLETE]",
            )
        out = execute_set(self)
        cs._pipeline_executed = token
        _remember(cs.stack, token)
        return out

    R.create_stack = create_stack  # type: ignore[method-assign]
    R.update_stack = update_stack  # type: ignore[method-assign]
    R.delete_stack = delete_stack  # type: ignore[method-assign]
    R.create_change_set = create_change_set  # type: ignore[method-assign]
    R.execute_change_set = execute_change_set  # type: ignore[method-assign]


def _remember(resource: Any, token: str | None) -> None:
    """Keep the token of the last operation on a stack or change set (None: the request had none)."""
    if resource is not None:
        resource._pipeline_token = token


# -- Auto Scaling ----------------------------------------------------------------------------------------


def _autoscaling() -> None:
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.models import AutoScalingBackend
    from moto.autoscaling.responses import AutoScalingResponse

    set_desired = AutoScalingResponse.set_desired_capacity

    def set_desired_capacity(self: Any) -> Any:
        group = self.autoscaling_backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
        wanted = self._get_int_param("DesiredCapacity")
        if group is not None and wanted is not None:
            if wanted > int(group.max_size):
                raise ValidationError(
                    f"New SetDesiredCapacity value {wanted} is above max value {group.max_size} "
                    "for the AutoScalingGroup."
                )
            if wanted < int(group.min_size):
                raise ValidationError(
                    f"New SetDesiredCapacity value {wanted} is below min value {group.min_size} "
                    "for the AutoScalingGroup."
                )
        return set_desired(self)

    update = AutoScalingBackend.update_auto_scaling_group

    def update_auto_scaling_group(self: Any, name: str, *args: Any, **kw: Any) -> Any:
        group = self.autoscaling_groups.get(name)
        desired, lo, hi = kw.get("desired_capacity"), kw.get("min_size"), kw.get("max_size")
        if group is not None and desired is not None:
            lo = int(group.min_size if lo is None else lo)
            hi = int(group.max_size if hi is None else hi)
            if not lo <= int(desired) <= hi:
                raise ValidationError(
                    f"Desired capacity:{desired} must be between the specified min size:{lo} "
                    f"and max size:{hi}"
                )
        return update(self, name, *args, **kw)

    AutoScalingResponse.set_desired_capacity = set_desired_capacity  # type: ignore[method-assign]
    AutoScalingBackend.update_auto_scaling_group = update_auto_scaling_group  # type: ignore[method-assign]
