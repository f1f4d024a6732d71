"""A build's disk image -> a private AMI in every configured region, found again by its tags.

``publish`` is idempotent: each step first looks for what it would create (by tags, then by the
image's unique name) and only then creates it, so running ``invoke ami`` twice makes no change the
second time. The steps, in order:

1. Checks that need no upload: the disk exists in the build; for a PV image the instance type is a PV
   type and the region has a PV-GRUB AKI (found with DescribeImages). A PV image is copied only to
   regions that have one.
2. The snapshot (``snapshot.py``): reused, resumed, or uploaded (as a delta on the newest earlier one).
3. RegisterImage: HVM images boot with UEFI, have ENA, are x86_64 and require IMDSv2; PV images boot
   the region's PV-GRUB AKI. Tags carry the provenance (``provenance.py``). The tags are given with
   RegisterImage and checked afterwards (moto drops them; AWS applies them atomically).
4. CopyImage to ``ami.regions`` in parallel, with client tokens and the tags given explicitly.
5. Launch permissions for ``ami.share_with`` (and create-volume permission on the snapshots), never
   public; and deprecation after ``ami.deprecate_after_days`` (``access.py``).

Lookups and the image record are in ``images.py``; ``find_image`` is what the deploy stage uses.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws import delta, preflight, provenance, pv
from pipeline.aws import snapshot as snap
from pipeline.aws import tags as T
from pipeline.aws.access import deprecation_time, ensure_access, ensure_deprecation
from pipeline.aws.calls import error_code, one_line_errors
from pipeline.aws.images import (
    ImageRecord,
    describe_images,
    ensure_tags,
    find_by_name,
    newest,
    wait_available,
)
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import ImageError, PipelineError
from pipeline.images.devices import root_device

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

ARCHITECTURE = "x86_64"


class Build(Protocol):
    """What publishing needs of a build (``pipeline.build.BuildResult`` is one)."""

    @property
    def build_id(self) -> str: ...

    @property
    def directory(self) -> Path: ...

    @property
    def manifest(self) -> dict[str, Any]: ...


@dataclass
class Publication:
    """What ``publish`` did or, in a dry run, would do."""

    build_id: str
    disk: str
    virtualization: str
    name: str
    images: dict[str, ImageRecord] = field(default_factory=dict)  # region -> image
    actions: list[tuple[str, str]] = field(default_factory=list)  # (region, what happened)
    skipped_regions: list[str] = field(default_factory=list)  # no PV there
    upload: delta.UploadPlan | None = None
    snapshot: snap.SnapshotResult | None = None
    dry_run: bool = False

    def record(self) -> dict[str, Any]:
        """The result printed on stdout."""
        out: dict[str, Any] = {
            "build_id": self.build_id,
            "disk": self.disk,
            "virtualization": self.virtualization,
            "name": self.name,
            "images": {r: i.image_id for r, i in sorted(self.images.items())},
        }
        if self.snapshot is not None:
            out["snapshot"] = {
                "id": self.snapshot.snapshot_id,
                "parent": self.snapshot.parent_id,
                "blocks_sent": self.snapshot.blocks_sent,
                "bytes_sent": self.snapshot.bytes_sent,
                "checksum": self.snapshot.checksum,
            }
        if self.dry_run:
            out["dry_run"] = True
            out["would"] = [f"{r}: {a}" for r, a in self.actions]
        return out


@one_line_errors()
def find_image(
    clients: Clients, settings: Settings, build_id: str, virtualization: str, region: str
) -> ImageRecord | None:
    """The pipeline's AMI of ``build_id`` in ``region`` (by tags BuildId, Virtualization, App, Env,
    ManagedBy), available or still pending; None if there is none."""
    want = T.scope(settings.app.name, settings.env, {T.BUILD_ID: build_id, T.VIRTUALIZATION: virtualization})
    return newest(describe_images(clients.ec2(region), region, want))


# -- publishing ----------------------------------------------------------------------------------------


def select_disk(build: Build, virtualization: str) -> dict[str, Any]:
    """The build's disk for ``virtualization``, checked to exist with its block map."""
    disks = build.manifest.get("image", {}).get("disks", [])
    for disk in disks:
        if disk.get("virtualization") == virtualization:
            for key in ("file", "blocks_file"):
                if not (build.directory / disk[key]).is_file():
                    raise ImageError(
                        f"build {build.build_id}: {disk[key]} is missing from {build.directory}",
                        hint="rebuild it: invoke build --force",
                    )
            return dict(disk)
    have = ", ".join(f"{d.get('name')} ({d.get('virtualization')})" for d in disks) or "none"
    raise ImageError(
        f"build {build.build_id} has no {virtualization} disk image (disks: {have})",
        hint="check deploy.virtualization and image.target in pipeline.toml, then invoke build",
    )


@one_line_errors()
def publish(
    settings: Settings,
    clients: Clients,
    build: Build,
    *,
    dry_run: bool = False,
    git: provenance.GitState | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Publication:
    """Make (or find) the AMI of ``build`` in the home region and every region of ``ami.regions``."""
    home = settings.aws.region
    virtualization = settings.virtualization
    if virtualization == "pv":
        pv.check_instance_type(
            settings.deploy.instance_type,
            where=settings.where("deploy.instance_type"),
            target=settings.image.target,
        )
    settings = preflight.for_ami(settings, clients)
    disk = select_disk(build, virtualization)
    ec2 = clients.ec2(home)
    manifest = build.manifest
    name = T.image_name(
        settings.app.name, settings.env, str(manifest["target"]), virtualization, build.build_id
    )
    result = Publication(build.build_id, disk["name"], virtualization, name, dry_run=dry_run)

    # 1. Everything that can refuse, before anything is uploaded.
    kernel_id = None
    if virtualization == "pv":
        kernel_id = pv.require_aki(ec2, home)
    copy_regions = _copy_regions(clients, settings, virtualization, result)

    kms_key_arn = settings.ami.kms_key_id  # the key's ARN: the pre-flight resolved ids and aliases
    git = git or provenance.git_state(settings.root)
    image_tags = provenance.image_tags(manifest, disk, git)
    identity = provenance.identity(settings.app.name, settings.env, str(manifest["target"]), virtualization)
    want = {k: image_tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.BUILD_ID, T.VIRTUALIZATION)}

    # 2 and 3. The home region's image.
    image = newest(describe_images(ec2, home, want))
    if image is not None:
        result.actions.append((home, f"found {image.image_id} ({image.state})"))
    else:
        image = find_by_name(ec2, home, name, want)
        if image is not None:
            # Registered by a run that ended before its tags were checked: complete them.
            result.actions.append((home, f"found {image.image_id} by name; completing its tags"))
            done = snap.find_complete(ec2, identity, disk["sha256"], kms_key_arn)
            dtags = T.from_aws(done.get("Tags")) if done else {}
            extra = {
                T.SNAPSHOT: done["SnapshotId"] if done else "",
                T.SNAPSHOT_CHECKSUM: dtags.get(T.SNAPSHOT_CHECKSUM, ""),
                T.PARENT_SNAPSHOT: dtags.get(T.PARENT_SNAPSHOT, ""),
            }
            if not dry_run:
                wanted = {**image_tags, T.NAME: name, **{k: v for k, v in extra.items() if v}}
                image = ensure_tags(ec2, image, wanted)
    if image is None:
        upload = delta.plan(
            ec2,
            region=home,
            image=build.directory / disk["file"],
            image_sha256=disk["sha256"],
            blocks=delta.read_block_map(build.directory / disk["blocks_file"]),
            identity=identity,
            tags=provenance.snapshot_tags(image_tags, name),
            description=f"{name} ({disk['name']} disk)",
            builds_dir=build.directory.parent,
            disk_name=disk["name"],
            kms_key_id=kms_key_arn,
        )
        result.upload = upload
        if dry_run:
            result.actions.append(
                (home, f"upload {upload.changed} blocks ({upload.note}) and register {name}")
            )
            result.actions.extend((r, f"copy {name}") for r in copy_regions)
            return result
        image = _register(
            settings, clients, build, disk, upload, image_tags, kernel_id, result, sleep, clock, progress
        )
    elif not dry_run and image.state != "available":
        image = wait_available(ec2, home, image.image_id, sleep, clock)
    result.images[home] = image

    # 4. Copies, in parallel.
    if copy_regions:
        with ThreadPoolExecutor(max_workers=len(copy_regions), thread_name_prefix="copy-image") as pool:
            futures = {
                r: pool.submit(_ensure_copy, clients, image, r, dry_run, sleep, clock) for r in copy_regions
            }
            for region, fut in futures.items():
                copy, action = fut.result()
                result.actions.append((region, action))
                if copy is not None:
                    result.images[region] = copy

    # 5. Who may launch it, and when it is deprecated.
    for region, record in sorted(result.images.items()):
        if dry_run:
            continue
        ec2r = clients.ec2(region)
        result.actions.extend((region, a) for a in ensure_access(ec2r, record, settings.ami.share_with))
        if settings.ami.deprecate_after_days:
            at = deprecation_time(image.created_at(), settings.ami.deprecate_after_days)
            result.actions.extend((region, a) for a in ensure_deprecation(ec2r, record, at))
    return result


def _register(
    settings: Settings,
    clients: Clients,
    build: Build,
    disk: Mapping[str, Any],
    upload: delta.UploadPlan,
    image_tags: Mapping[str, str],
    kernel_id: str | None,
    result: Publication,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    progress: bool,
) -> ImageRecord:
    """Upload (or reuse) the snapshot, register the image, wait until it is available."""
    home = settings.aws.region
    ec2 = clients.ec2(home)
    uploader = snap.Uploader(
        clients.ebs(home, pool=settings.ami.upload_workers),
        ec2,
        lock_dir=settings.work_dir / "uploads",
        workers=settings.ami.upload_workers,
        progress=progress,
        sleep=sleep,
        clock=clock,
    )
    identity = {k: image_tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.TARGET, T.VIRTUALIZATION)}
    s = uploader.ensure(upload, identity)
    result.snapshot = s
    how = "reused" if s.reused else ("resumed" if s.resumed else "uploaded")
    result.actions.append((home, f"snapshot {s.snapshot_id} {how}: {s.blocks_sent} blocks sent; {s.note}"))
    tags = {
        **image_tags,
        T.NAME: result.name,
        T.SNAPSHOT: s.snapshot_id,
        T.SNAPSHOT_CHECKSUM: s.checksum,
        T.PARENT_SNAPSHOT: s.parent_id,
    }
    target = str(build.manifest["target"])
    request = register_request(
        name=result.name,
        description=_description(build.manifest, disk),
        snapshot_id=s.snapshot_id,
        virtualization=result.virtualization,
        root=root_device(target, result.virtualization),  # type: ignore[arg-type]
        volume_gib=upload.volume_gib,
        kernel_id=kernel_id,
        tags=tags,
    )
    image_id = _register_once(ec2, home, request, {k: tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.BUILD_ID)})
    result.actions.append((home, f"registered {image_id}"))
    image = wait_available(ec2, home, image_id, sleep, clock)
    # RegisterImage tags atomically on AWS; moto drops them, so check and add what is missing.
    return ensure_tags(ec2, image, tags)


def _register_once(ec2: EC2Client, region: str, request: Mapping[str, Any], want: Mapping[str, str]) -> str:
    """RegisterImage, or the image it already made: RegisterImage takes no client token, so a retry
    whose first attempt was applied but whose answer was lost fails with InvalidAMIName.Duplicate (AMI
    names are unique per account and region); the image of that name is then ours, and adopted. An
    image of that name tagged for another app, environment or build is refused (``find_by_name``)."""
    try:
        return str(ec2.register_image(**request)["ImageId"])
    except ClientError as err:
        if error_code(err) != "InvalidAMIName.Duplicate":
            raise
        found = find_by_name(ec2, region, str(request["Name"]), want)
        if found is None:
            raise
        log.info("RegisterImage said %s exists: adopting %s", request["Name"], found.image_id)
        return found.image_id


def register_request(
    *,
    name: str,
    description: str,
    snapshot_id: str,
    virtualization: str,
    root: str,
    volume_gib: int,
    kernel_id: str | None,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The RegisterImage parameters for one of our disks (pure; the tests pin it)."""
    request: dict[str, Any] = {
        "Name": name,
        "Description": description,
        "Architecture": ARCHITECTURE,
        "RootDeviceName": root,
        "BlockDeviceMappings": [
            {
                "DeviceName": root,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeSize": volume_gib,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
        "ImdsSupport": "v2.0",  # instances from this AMI require IMDSv2 tokens
        "TagSpecifications": [{"ResourceType": "image", "Tags": T.to_aws(tags)}],
    }
    if virtualization == "hvm":
        # Nitro: UEFI boot, ENA networking; EBS appears as NVMe, which needs no AMI attribute.
        request.update(VirtualizationType="hvm", BootMode="uefi", EnaSupport=True)
    else:
        if not kernel_id:
            raise PipelineError("a paravirtual image needs a PV-GRUB kernel id")
        request.update(VirtualizationType="paravirtual", KernelId=kernel_id)
    return request


def _description(manifest: Mapping[str, Any], disk: Mapping[str, Any]) -> str:
    app = manifest.get("app", {})
    text = (
        f"{app.get('name')} {app.get('version')} ({manifest.get('env')}, {manifest.get('target')}, "
        f"{disk['name']}) build {manifest.get('build_id')}"
    )
    return text[:255]


def _copy_regions(
    clients: Clients, settings: Settings, virtualization: str, result: Publication
) -> list[str]:
    known = set(clients.session.get_available_regions("ec2"))
    for partition in ("aws-us-gov", "aws-cn"):
        known |= set(clients.session.get_available_regions("ec2", partition_name=partition))
    for field_name, region in [("aws.region", settings.aws.region)] + [
        ("ami.regions", r) for r in settings.ami.regions
    ]:
        if region not in known:
            raise PipelineError(
                f'{settings.where(field_name)}: unknown AWS region "{region}"',
                hint=f"regions EC2 offers: {', '.join(sorted(known))}",
            )
    regions = [r for r in dict.fromkeys(settings.ami.regions) if r != settings.aws.region]
    if virtualization != "pv":
        return regions
    usable = []
    for region in regions:
        if pv.find_aki(clients.ec2(region), region):
            usable.append(region)
        else:
            result.skipped_regions.append(region)
            ui.warn(
                f"not copying the PV image to {region}: it has no PV-GRUB "
                f"(PV regions: {', '.join(pv.PV_REGIONS)})"
            )
    return usable


def _ensure_copy(
    clients: Clients,
    source: ImageRecord,
    region: str,
    dry_run: bool,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> tuple[ImageRecord | None, str]:
    """The copy of ``source`` in ``region``: found by tags or name, else made with CopyImage."""
    ec2 = clients.ec2(region)
    want = {k: source.tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.BUILD_ID, T.VIRTUALIZATION)}
    copy = newest(describe_images(ec2, region, want)) or find_by_name(ec2, region, source.name, want)
    # The copy's tags are the source's, except what is per region: its snapshot and its deprecation.
    copy_tags = {k: v for k, v in source.tags.items() if k not in (T.SNAPSHOT, T.DEPRECATE_AT)}
    copy_tags[T.SOURCE_IMAGE] = f"{source.region}/{source.image_id}"
    if copy is None:
        if dry_run:
            return None, f"copy {source.image_id} from {source.region}"
        token = hashlib.sha256(f"copy-image|{source.image_id}|{region}".encode()).hexdigest()
        resp = ec2.copy_image(
            SourceImageId=source.image_id,
            SourceRegion=source.region,
            Name=source.name,
            Description=f"copy of {source.region}/{source.image_id}",
            ClientToken=token,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": T.to_aws(copy_tags)},
                {"ResourceType": "snapshot", "Tags": T.to_aws(copy_tags)},
            ],
        )
        copy = wait_available(ec2, region, resp["ImageId"], sleep, clock)
        action = f"copied {source.image_id} -> {copy.image_id}"
    else:
        action = f"found copy {copy.image_id} ({copy.state})"
        if dry_run:
            return copy, action
        if copy.state != "available":
            copy = wait_available(ec2, region, copy.image_id, sleep, clock)
    # CopyImage does not carry tags everywhere (moto drops them): check and add what is missing,
    # on the image and on the snapshots behind it, which gc selects by the same tags.
    own_snapshots = list(copy.block_snapshots)
    copy_tags[T.SNAPSHOT] = own_snapshots[0] if own_snapshots else ""
    copy = ensure_tags(ec2, copy, {k: v for k, v in copy_tags.items() if v})
    # The copy's snapshot is whole in its region: the source's parent is not its parent.
    snapshot_tags = {k: v for k, v in copy_tags.items() if k != T.PARENT_SNAPSHOT}
    _ensure_snapshot_tags(ec2, own_snapshots, {**snapshot_tags, T.UPLOAD: T.UPLOAD_COMPLETE})
    return copy, action


def _ensure_snapshot_tags(ec2: EC2Client, snapshot_ids: Sequence[str], want: Mapping[str, str]) -> None:
    want = {k: v for k, v in want.items() if v and k != T.SNAPSHOT}
    if not snapshot_ids:
        return
    for s in ec2.describe_snapshots(SnapshotIds=list(snapshot_ids)).get("Snapshots", []):
        lacking = T.missing(want, T.from_aws(s.get("Tags")))
        if lacking:
            ec2.create_tags(Resources=[s["SnapshotId"]], Tags=T.to_aws(lacking))
