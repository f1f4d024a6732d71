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
   public; and deprecation after ``ami.deprecate_after_days``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from pipeline import ui
from pipeline.aws import provenance, pv
from pipeline.aws import snapshot as snap
from pipeline.aws import tags as T
from pipeline.aws.session import Clients
from pipeline.aws.wait import poll
from pipeline.config import Settings
from pipeline.errors import AwsError, ImageError, PipelineError
from pipeline.images.devices import root_device

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import ImageTypeDef

log = logging.getLogger(__name__)

IMAGE_TIMEOUT = 3600.0  # seconds for a registered or copied image to become available
ARCHITECTURE = "x86_64"
UNSUPPORTED_CODES = ("NotImplemented", "UnsupportedOperation")


class Build(Protocol):
    """What publishing needs of a build (``pipeline.build.BuildResult`` is one)."""

    @property
    def build_id(self) -> str: ...

    @property
    def directory(self) -> Path: ...

    @property
    def manifest(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ImageRecord:
    """One AMI as the pipeline sees it."""

    image_id: str
    region: str
    name: str
    state: str
    created: str  # CreationDate, ISO 8601 UTC
    tags: dict[str, str]
    block_snapshots: tuple[str, ...] = ()  # snapshot ids of its block device mappings
    public: bool = False
    deprecation: str = ""  # DeprecationTime, if any

    @classmethod
    def from_aws(cls, region: str, image: ImageTypeDef) -> ImageRecord:
        return cls(
            image_id=image["ImageId"],
            region=region,
            name=image.get("Name", ""),
            state=image.get("State", "unknown"),
            created=image.get("CreationDate", ""),
            tags=T.from_aws(image.get("Tags")),
            block_snapshots=tuple(
                b["Ebs"]["SnapshotId"]
                for b in image.get("BlockDeviceMappings", [])
                if b.get("Ebs", {}).get("SnapshotId")
            ),
            public=bool(image.get("Public")),
            deprecation=image.get("DeprecationTime", ""),
        )

    @property
    def build_id(self) -> str:
        return self.tags.get(T.BUILD_ID, "")

    @property
    def virtualization(self) -> str:
        return self.tags.get(T.VIRTUALIZATION, "")

    @property
    def snapshot_ids(self) -> tuple[str, ...]:
        """The snapshots behind the image: its block devices and the one the pipeline uploaded."""
        ids = list(self.block_snapshots)
        tagged = self.tags.get(T.SNAPSHOT)
        if tagged and tagged not in ids:
            ids.append(tagged)
        return tuple(ids)

    def created_at(self) -> datetime:
        return parse_time(self.created)


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
    upload: snap.UploadPlan | None = None
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


# -- lookups -------------------------------------------------------------------------------------------


def find_image(
    clients: Clients, settings: Settings, build_id: str, virtualization: str, region: str
) -> ImageRecord | None:
    """The pipeline's AMI of ``build_id`` in ``region`` (by tags BuildId, Virtualization, App, Env,
    ManagedBy), available or still pending; None if there is none."""
    want = {
        T.MANAGED: T.MANAGED_BY,
        T.APP: settings.app.name,
        T.ENV: settings.env,
        T.BUILD_ID: build_id,
        T.VIRTUALIZATION: virtualization,
    }
    return _newest(describe_images(clients.ec2(region), region, want))


def describe_images(ec2: EC2Client, region: str, tags: Mapping[str, str]) -> list[ImageRecord]:
    """Our images in ``region`` carrying every one of ``tags`` (failed and deregistered ones left out)."""
    resp = ec2.describe_images(Owners=["self"], Filters=T.filters(tags))
    records = [ImageRecord.from_aws(region, i) for i in resp.get("Images", [])]
    return [r for r in records if r.state in ("available", "pending") and T.managed(r.tags)]


def _newest(records: Sequence[ImageRecord]) -> ImageRecord | None:
    return max(records, key=lambda r: (r.created, r.image_id)) if records else None


def _by_name(ec2: EC2Client, region: str, name: str, want: Mapping[str, str]) -> ImageRecord | None:
    """An image of ours with ``name`` whose tags are missing (moto drops RegisterImage's tags)."""
    resp = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    for image in resp.get("Images", []):
        record = ImageRecord.from_aws(region, image)
        if record.state not in ("available", "pending"):
            continue
        clash = {k: v for k, v in record.tags.items() if k in want and want[k] != v}
        if clash:
            raise AwsError(
                f"image {record.image_id} in {region} is named {name} but is tagged {clash}",
                hint="an image of that name was made by something else; deregister or rename it",
            )
        return record
    return None


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
        pv.check_instance_type(settings.deploy.instance_type)
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

    git = git or provenance.git_state(settings.root)
    image_tags = provenance.image_tags(manifest, disk, git)
    identity = provenance.identity(settings.app.name, settings.env, str(manifest["target"]), virtualization)
    want = {k: image_tags[k] for k in (T.MANAGED, T.APP, T.ENV, T.BUILD_ID, T.VIRTUALIZATION)}

    # 2 and 3. The home region's image.
    image = _newest(describe_images(ec2, home, want))
    if image is not None:
        result.actions.append((home, f"found {image.image_id} ({image.state})"))
    else:
        image = _by_name(ec2, home, name, want)
        if image is not None:
            # Registered by a run that ended before its tags were checked: complete them.
            result.actions.append((home, f"found {image.image_id} by name; completing its tags"))
            done = snap.find_complete(ec2, identity, disk["sha256"])
            dtags = T.from_aws(done.get("Tags")) if done else {}
            extra = {
                T.SNAPSHOT: done["SnapshotId"] if done else "",
                T.SNAPSHOT_CHECKSUM: dtags.get(T.SNAPSHOT_CHECKSUM, ""),
                T.PARENT_SNAPSHOT: dtags.get(T.PARENT_SNAPSHOT, ""),
            }
            if not dry_run:
                wanted = {**image_tags, T.NAME: name, **{k: v for k, v in extra.items() if v}}
                image = _ensure_tags(ec2, image, wanted)
    if image is None:
        upload = snap.plan(
            ec2,
            region=home,
            image=build.directory / disk["file"],
            image_sha256=disk["sha256"],
            blocks=snap.read_block_map(build.directory / disk["blocks_file"]),
            identity=identity,
            tags=provenance.snapshot_tags(image_tags, name),
            description=f"{name} ({disk['name']} disk)",
            builds_dir=build.directory.parent,
            disk_name=disk["name"],
            kms_key_id=settings.ami.kms_key_id,
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
        image = _wait_available(ec2, home, image.image_id, sleep, clock)
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
    upload: snap.UploadPlan,
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
    image_id = ec2.register_image(**request)["ImageId"]
    result.actions.append((home, f"registered {image_id}"))
    image = _wait_available(ec2, home, image_id, sleep, clock)
    # RegisterImage tags atomically on AWS; moto drops them, so check and add what is missing.
    return _ensure_tags(ec2, image, tags)


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
        "TagSpecifications": [{"ResourceType": "image", "Tags": T.tag_list(tags)}],
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


def _wait_available(
    ec2: EC2Client, region: str, image_id: str, sleep: Callable[[float], None], clock: Callable[[], float]
) -> ImageRecord:
    def check() -> ImageRecord | None:
        try:
            images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
        except ClientError as err:
            if _code(err) == "InvalidAMIID.NotFound":  # a new image may not be visible at once
                return None
            raise
        if not images:
            return None
        record = ImageRecord.from_aws(region, images[0])
        if record.state in ("failed", "error", "invalid"):
            reason = images[0].get("StateReason", {}).get("Message", "no reason given")
            raise AwsError(f"image {image_id} in {region} ended in state {record.state}: {reason}")
        return record if record.state == "available" else None

    return poll(check, what=f"image {image_id} in {region}", timeout=IMAGE_TIMEOUT, sleep=sleep, clock=clock)


def _ensure_tags(ec2: EC2Client, image: ImageRecord, want: Mapping[str, str]) -> ImageRecord:
    lacking = T.missing(want, image.tags)
    if not lacking:
        return image
    ec2.create_tags(Resources=[image.image_id], Tags=T.tag_list(lacking))
    return _with_tags(image, {**image.tags, **lacking})


def _with_tags(image: ImageRecord, tags: dict[str, str]) -> ImageRecord:
    from dataclasses import replace

    return replace(image, tags=tags)


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
    copy = _newest(describe_images(ec2, region, want)) or _by_name(ec2, region, source.name, want)
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
                {"ResourceType": "image", "Tags": T.tag_list(copy_tags)},
                {"ResourceType": "snapshot", "Tags": T.tag_list(copy_tags)},
            ],
        )
        copy = _wait_available(ec2, region, resp["ImageId"], sleep, clock)
        action = f"copied {source.image_id} -> {copy.image_id}"
    else:
        action = f"found copy {copy.image_id} ({copy.state})"
        if dry_run:
            return copy, action
        if copy.state != "available":
            copy = _wait_available(ec2, region, copy.image_id, sleep, clock)
    # CopyImage does not carry tags everywhere (moto drops them): check and add what is missing,
    # on the image and on the snapshots behind it, which gc selects by the same tags.
    own_snapshots = list(copy.block_snapshots)
    copy_tags[T.SNAPSHOT] = own_snapshots[0] if own_snapshots else ""
    copy = _ensure_tags(ec2, copy, {k: v for k, v in copy_tags.items() if v})
    _ensure_snapshot_tags(ec2, own_snapshots, {**copy_tags, T.UPLOAD: T.UPLOAD_COMPLETE})
    return copy, action


def _ensure_snapshot_tags(ec2: EC2Client, snapshot_ids: Sequence[str], want: Mapping[str, str]) -> None:
    want = {k: v for k, v in want.items() if v and k != T.SNAPSHOT}
    if not snapshot_ids:
        return
    for s in ec2.describe_snapshots(SnapshotIds=list(snapshot_ids)).get("Snapshots", []):
        lacking = T.missing(want, T.from_aws(s.get("Tags")))
        if lacking:
            ec2.create_tags(Resources=[s["SnapshotId"]], Tags=T.tag_list(lacking))


# -- access and deprecation ----------------------------------------------------------------------------


def ensure_access(ec2: EC2Client, image: ImageRecord, accounts: Sequence[str]) -> list[str]:
    """Exactly ``accounts`` may launch the image and create volumes from its snapshots; never public."""
    actions = []
    want = set(accounts)
    attr = ec2.describe_image_attribute(ImageId=image.image_id, Attribute="launchPermission")
    perms = attr.get("LaunchPermissions", [])
    have = {p["UserId"] for p in perms if "UserId" in p}
    public = any(p.get("Group") == "all" for p in perms)
    add = [{"UserId": a} for a in sorted(want - have)]
    remove: list[dict[str, Any]] = [{"UserId": a} for a in sorted(have - want)]
    if public:
        remove.append({"Group": "all"})
        ui.warn(f"{image.image_id} in {image.region} was public; making it private")
    if add or remove:
        change: dict[str, Any] = {}
        if add:
            change["Add"] = add
        if remove:
            change["Remove"] = remove
        ec2.modify_image_attribute(ImageId=image.image_id, LaunchPermission=change)  # type: ignore[arg-type]
        actions.append(f"launch permission: +{len(add)} -{len(remove)} accounts")
    for snapshot_id in image.snapshot_ids:
        actions.extend(_ensure_volume_permission(ec2, snapshot_id, want))
    return actions


def _ensure_volume_permission(ec2: EC2Client, snapshot_id: str, want: set[str]) -> list[str]:
    try:
        attr = ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission")
    except ClientError as err:
        if _code(err) == "InvalidSnapshot.NotFound":
            return []
        raise
    perms = attr.get("CreateVolumePermissions", [])
    have = {p["UserId"] for p in perms if "UserId" in p}
    actions = []
    if want - have:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="add",
            UserIds=sorted(want - have),
        )
        actions.append(f"{snapshot_id}: create-volume permission for {len(want - have)} accounts")
    if have - want:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="remove",
            UserIds=sorted(have - want),
        )
        actions.append(f"{snapshot_id}: create-volume permission removed from {len(have - want)} accounts")
    if any(p.get("Group") == "all" for p in perms):
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="remove",
            GroupNames=["all"],
        )
        actions.append(f"{snapshot_id}: no longer public")
    return actions


def deprecation_time(created: datetime, days: int) -> datetime:
    """When an image created at ``created`` is deprecated: ``days`` later, on the minute (as EC2 keeps it)."""
    return (created + timedelta(days=days)).replace(second=0, microsecond=0)


def ensure_deprecation(ec2: EC2Client, image: ImageRecord, at: datetime) -> list[str]:
    """Deprecate ``image`` at ``at`` unless that is already so.

    Where the endpoint does not implement EnableImageDeprecation (the local AWS), the intended time is
    recorded in the ``DeprecateAt`` tag and a warning is shown, and later runs leave it at that.
    """
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if image.deprecation and parse_time(image.deprecation) == at:
        return []
    if not image.deprecation and image.tags.get(T.DEPRECATE_AT) == stamp:
        return []
    try:
        ec2.enable_image_deprecation(ImageId=image.image_id, DeprecateAt=at)
        action = f"deprecation at {stamp}"
    except ClientError as err:
        if _code(err) not in UNSUPPORTED_CODES:
            raise
        ui.warn(
            f"{image.region}: this AWS endpoint cannot deprecate images; recorded {T.DEPRECATE_AT}={stamp}"
        )
        action = f"deprecation at {stamp} recorded as a tag only ({_code(err)})"
    ec2.create_tags(Resources=[image.image_id], Tags=T.tag_list({T.DEPRECATE_AT: stamp}))
    return [action]


# -- helpers -------------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An AWS timestamp (``2026-01-02T03:04:05.000Z``) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))
