"""Raw disk image -> EBS snapshot through the EBS direct APIs (no S3, no import task, no helper instance).

StartSnapshot, then PutSnapshotBlock in parallel for the blocks that hold data (all-zero 512 KiB blocks
are never sent), then CompleteSnapshot with the linear aggregate checksum, then a wait until EC2 calls
the snapshot ``completed``.

What to upload (all non-zero blocks, or a delta on the previous snapshot) is decided in ``delta.py``.

**Interruptions.** A snapshot is started with ``Upload=incomplete`` and re-tagged ``complete`` only
once EC2 reports it completed. A run that is killed leaves it incomplete; the next run for the same
image resumes it (every planned block is written again: a block write is atomic and idempotent), and
``invoke gc`` deletes incomplete snapshots older than a grace period. While an upload runs it holds a
lock file in ``.pipeline/uploads/``, so a second run on this machine neither resumes nor deletes it.

**Idempotency.** The StartSnapshot client token is derived from the image digest, the parent, the
KMS key and the volume size, so a retried StartSnapshot cannot make a second snapshot. Retries of
throttled or failed calls are botocore's (one retry layer); the only loop of our own waits for a new
snapshot to become writable, which the EBS service documents as eventually consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from pipeline import ui
from pipeline.aws import tags as T
from pipeline.aws.calls import describe, error_code, error_text
from pipeline.aws.delta import UploadPlan, block_checksum, describe_snapshots, same_encryption
from pipeline.aws.wait import poll
from pipeline.blocks import BLOCK_SIZE
from pipeline.errors import AwsError, ImageError, PipelineError

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import SnapshotTypeDef

log = logging.getLogger(__name__)

ZERO_BLOCK = bytes(BLOCK_SIZE)
# StartSnapshot's Timeout (minutes): AWS cancels a pending snapshot that gets no block for this long.
# An upload writes blocks continuously, so only an abandoned one hits it.
PENDING_TIMEOUT_MINUTES = 60
# A snapshot just started may not accept blocks yet (EBS is eventually consistent; the EBS team's
# advice in awslabs/coldsnap#43 is to retry for up to two minutes).
WRITABLE_TIMEOUT = 120.0
# CompleteSnapshot returns at once; EC2 then takes seconds to minutes to report ``completed``.
COMPLETION_TIMEOUT = 3600.0
NOT_WRITABLE_CODES = ("ResourceNotFoundException", "ValidationException", "ConflictException")


class ParentRefused(Exception):
    """StartSnapshot refused the delta's parent; the message is the upload's note."""


# -- uploading -----------------------------------------------------------------------------------------


@dataclass
class SnapshotResult:
    snapshot_id: str
    checksum: str
    parent_id: str  # "none" without a parent
    blocks_sent: int  # PutSnapshotBlock calls that succeeded (zero blocks included)
    bytes_sent: int
    nonzero_blocks: int  # of the image
    reused: bool = False  # an earlier complete snapshot of the same image was found
    resumed: bool = False  # an interrupted upload of the same image was finished
    seconds: float = 0.0
    note: str = ""


def find_complete(
    ec2: EC2Client, identity: Mapping[str, str], image_sha256: str, kms_key_arn: str = ""
) -> SnapshotTypeDef | None:
    """A finished snapshot of exactly this image, encrypted as ``kms_key_arn`` asks, if one exists."""
    found = describe_snapshots(ec2, {**identity, T.IMAGE_SHA256: image_sha256, T.UPLOAD: T.UPLOAD_COMPLETE})
    found = [s for s in found if s.get("State") == "completed" and same_encryption(s, kms_key_arn)]
    return max(found, key=lambda s: (s.get("StartTime") or datetime.min, s["SnapshotId"])) if found else None


@dataclass
class Uploader:
    """Writes an :class:`UploadPlan` into a snapshot. Clients and timing are injected."""

    ebs: EBSClient
    ec2: EC2Client
    lock_dir: Path
    workers: int = 8
    progress: bool = True
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    sent_blocks: int = field(default=0, init=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _advance: Callable[[], None] = field(default_factory=lambda: _nothing, init=False, repr=False)

    def ensure(self, p: UploadPlan, identity: Mapping[str, str]) -> SnapshotResult:
        """The snapshot of ``p.image``: an existing complete one, a resumed one, or a new upload."""
        started = self.clock()
        self.sent_blocks = 0
        done = find_complete(self.ec2, identity, p.image_sha256, p.kms_key_id)
        if done is not None:
            dtags = T.from_aws(done.get("Tags"))
            return SnapshotResult(
                done["SnapshotId"],
                dtags.get(T.SNAPSHOT_CHECKSUM, ""),
                dtags.get(T.PARENT_SNAPSHOT, T.NO_PARENT),
                0,
                0,
                len(p.blocks.digests),
                reused=True,
                note=f"snapshot {done['SnapshotId']} of this image exists",
            )
        with upload_lock(self.lock_dir, p.image_sha256):
            try:
                snapshot_id, resumed = self._start_or_resume(p, identity)
            except ParentRefused as refused:
                p = p.without_parent(str(refused))
                snapshot_id, resumed = self._start_or_resume(p, identity)
            try:
                snapshot_id = self._write(p, snapshot_id, resumed)
            except PipelineError:
                raise
            except ClientError as err:
                raise describe(
                    err,
                    f"upload of {p.image.name} into {snapshot_id}",
                    hint="run the same command again: it resumes the upload (invoke gc removes leftovers)",
                ) from err
            self._complete(p, snapshot_id)
        return SnapshotResult(
            snapshot_id,
            p.checksum(),
            p.parent_id,
            self.sent_blocks,
            self.sent_blocks * BLOCK_SIZE,
            len(p.blocks.digests),
            resumed=resumed,
            seconds=self.clock() - started,
            note=p.note,
        )

    # start / resume

    def _start_or_resume(self, p: UploadPlan, identity: Mapping[str, str]) -> tuple[str, bool]:
        orphans = describe_snapshots(
            self.ec2, {**identity, T.IMAGE_SHA256: p.image_sha256, T.UPLOAD: T.UPLOAD_INCOMPLETE}
        )
        resumable = None
        for s in sorted(orphans, key=lambda s: s.get("StartTime") or datetime.min, reverse=True):
            stags = T.from_aws(s.get("Tags"))
            same = (
                stags.get(T.PARENT_SNAPSHOT) == p.parent_id
                and s.get("VolumeSize") == p.volume_gib
                and (p.parent is not None or same_encryption(s, p.kms_key_id))
            )
            if same and resumable is None:
                resumable = s["SnapshotId"]
            else:  # started with another parent or size; it may be running elsewhere: gc's to judge
                log.info("leaving incomplete snapshot %s to gc (another upload plan)", s["SnapshotId"])
        if resumable is not None:
            log.info("resuming interrupted upload %s", resumable)
            return resumable, True
        return self._start(p), False

    def _start(self, p: UploadPlan, salt: str = "") -> str:
        kwargs: dict[str, Any] = {
            "VolumeSize": p.volume_gib,
            "Tags": T.to_aws({**p.tags, T.UPLOAD: T.UPLOAD_INCOMPLETE, T.PARENT_SNAPSHOT: p.parent_id}),
            "Description": p.description,
            "ClientToken": p.client_token(salt),
            "Timeout": PENDING_TIMEOUT_MINUTES,
        }
        if p.parent is not None:
            kwargs["ParentSnapshotId"] = p.parent.snapshot_id
        kwargs.update(p.encryption())
        try:
            resp = self.ebs.start_snapshot(**kwargs)
        except ClientError as err:
            # An unencrypted parent is refused once the account encrypts new volumes by default
            # ("Encryption outcomes for EBS direct APIs"): the image is then uploaded whole.
            if p.parent is None or error_code(err) != "ValidationException":
                raise
            raise ParentRefused(
                f"EBS refused {p.parent.snapshot_id} as a parent ({error_text(err)}): full upload"
            ) from err
        snapshot_id = resp.get("SnapshotId")
        if not snapshot_id:
            raise AwsError("StartSnapshot returned no SnapshotId")
        log.info("started snapshot %s (%d blocks to write)", snapshot_id, p.changed)
        return snapshot_id

    def _delete(self, snapshot_id: str, why: str) -> None:
        """Delete one of our snapshots after checking, once more, that its tags say it is ours."""
        try:
            found = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id]).get("Snapshots", [])
        except ClientError as err:
            if error_code(err) == "InvalidSnapshot.NotFound":
                return
            raise
        if not found or not T.managed(T.from_aws(found[0].get("Tags"))):
            return
        log.info("deleting snapshot %s (%s)", snapshot_id, why)
        with contextlib.suppress(ClientError):
            self.ec2.delete_snapshot(SnapshotId=snapshot_id)

    # blocks

    def _write(self, p: UploadPlan, snapshot_id: str, resumed: bool) -> str:
        """Write every planned block; return the snapshot id (a new one if the given one was dead)."""
        jobs = sorted([(i, False) for i in p.write] + [(i, True) for i in p.zero])
        if not jobs:
            return snapshot_id
        with open(p.image, "rb") as f, self._progress(p):
            fd = f.fileno()
            first, rest = jobs[0], jobs[1:]
            if not self._put_first(p, snapshot_id, fd, first, resumed):
                dead = snapshot_id
                self._delete(dead, "no longer accepts blocks")
                snapshot_id = self._start(p, salt=dead)
                if not self._put_first(p, snapshot_id, fd, first, False):
                    raise AwsError(
                        f"snapshot {snapshot_id} never accepted a block within {WRITABLE_TIMEOUT:g}s",
                        hint="check the EBS direct API permissions (ebs:PutSnapshotBlock) and retry",
                    )
            self._put_all(p, snapshot_id, fd, rest)
        return snapshot_id

    def _put_first(
        self, p: UploadPlan, snapshot_id: str, fd: int, job: tuple[int, bool], resumed: bool
    ) -> bool:
        """Write the first block, waiting for a new snapshot to become writable. False: it never will."""
        deadline = self.clock() + WRITABLE_TIMEOUT
        interval = 1.0
        while True:
            try:
                self._put(p, snapshot_id, fd, job)
                return True
            except ClientError as err:
                code = error_code(err)
                if resumed and code in NOT_WRITABLE_CODES:
                    log.info("interrupted upload %s cannot be resumed (%s)", snapshot_id, code)
                    return False
                if code != "ResourceNotFoundException":
                    raise
                if self.clock() + interval > deadline:
                    return False
                log.info("snapshot %s not writable yet; retrying in %.0fs", snapshot_id, interval)
                self.sleep(interval)
                interval = min(interval * 2, 15.0)

    def _put_all(self, p: UploadPlan, snapshot_id: str, fd: int, jobs: Sequence[tuple[int, bool]]) -> None:
        """Write ``jobs`` with ``workers`` threads; stop at the first failure and raise it."""
        window = self.workers * 2  # blocks in flight or read ahead: bounds memory to ~window x 512 KiB
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="put-block") as pool:
            pending: set[Future[int]] = set()
            try:
                for job in jobs:
                    if len(pending) >= window:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        _raise_first(done)
                    pending.add(pool.submit(self._put, p, snapshot_id, fd, job))
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                _raise_first(done)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise

    def _put(self, p: UploadPlan, snapshot_id: str, fd: int, job: tuple[int, bool]) -> int:
        index, zero = job
        if zero:
            data = ZERO_BLOCK
        else:
            data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE).ljust(BLOCK_SIZE, b"\0")
            if hashlib.sha256(data).hexdigest() != p.blocks.digests[index]:
                raise ImageError(
                    f"{p.image}: block {index} differs from the build's block map",
                    hint="the disk image changed after it was built; rebuild with invoke build --force",
                )
        self.ebs.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=index,
            BlockData=data,
            DataLength=BLOCK_SIZE,
            Checksum=block_checksum(data),
            ChecksumAlgorithm="SHA256",
        )
        with self._count_lock:
            self.sent_blocks += 1
        self._advance()
        return index

    # completion

    def _complete(self, p: UploadPlan, snapshot_id: str) -> None:
        kwargs: dict[str, Any] = {"SnapshotId": snapshot_id, "ChangedBlocksCount": p.changed}
        if p.changed:
            kwargs.update(
                Checksum=p.checksum(), ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR"
            )
        self.ebs.complete_snapshot(**kwargs)
        wait_completed(self.ec2, snapshot_id, sleep=self.sleep, clock=self.clock)
        self.ec2.create_tags(
            Resources=[snapshot_id],
            Tags=T.to_aws({T.UPLOAD: T.UPLOAD_COMPLETE, T.SNAPSHOT_CHECKSUM: p.checksum()}),
        )
        log.info("snapshot %s completed", snapshot_id)

    @contextlib.contextmanager
    def _progress(self, p: UploadPlan) -> Iterator[None]:
        columns = (
            TextColumn("[bold]upload[/bold] {task.description}"),
            BarColumn(),
            _Blocks(),
            _Rate(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=ui.console, disable=not self.progress, transient=False) as bar:
            task = bar.add_task(p.image.name, total=p.changed)
            self._advance = lambda: bar.advance(task)
            try:
                yield
            finally:
                self._advance = _nothing


def wait_completed(
    ec2: EC2Client,
    snapshot_id: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until EC2 reports the snapshot ``completed``; raise if it reports ``error``."""

    def check() -> bool | None:
        snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        state = snap.get("State")
        if state == "error":
            raise AwsError(
                f"snapshot {snapshot_id} ended in state error: {snap.get('StateMessage', 'no reason given')}",
                hint="run the same command again to upload it anew",
            )
        return True if state == "completed" else None

    poll(
        check,
        what=f"snapshot {snapshot_id} completion",
        timeout=COMPLETION_TIMEOUT,
        sleep=sleep,
        clock=clock,
        first=2.0,
    )


# -- the lock a running upload holds -------------------------------------------------------------------


@contextlib.contextmanager
def upload_lock(lock_dir: Path, image_sha256: str) -> Iterator[None]:
    """Hold the lock of one image's upload on this machine, or fail if another process holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{image_sha256}.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise PipelineError(
                f"another upload of image {image_sha256[:16]} is running on this machine (pid {holder})",
                hint="wait for it to finish, then run the command again",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upload_running(lock_dir: Path, image_sha256: str) -> bool:
    """Whether a process on this machine is uploading ``image_sha256`` right now."""
    path = lock_dir / f"{image_sha256}.lock"
    if not path.is_file():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# -- helpers -------------------------------------------------------------------------------------------


def _raise_first(done: set[Future[int]]) -> None:
    for fut in done:
        err = fut.exception()
        if err is not None:
            raise err


def _nothing() -> None:
    return None


class _Blocks(ProgressColumn):
    """``37/120 blocks (18.5/60.0 MiB)``."""

    def render(self, task: Task) -> Text:
        mib = BLOCK_SIZE / (1 << 20)
        total = int(task.total or 0)
        done = int(task.completed)
        return Text(f"{done}/{total} blocks ({done * mib:.1f}/{total * mib:.1f} MiB)")


class _Rate(ProgressColumn):
    """``240 blocks/s, 120.0 MiB/s``."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or 0.0
        return Text(f"{speed:.0f} blocks/s, {speed * BLOCK_SIZE / (1 << 20):.1f} MiB/s")
