"""Raw disk images, made without root and without loop mounts, byte-identical for the same inputs.

Two layouts, shared by the image targets:

- :func:`pv_disk` - an ext2 file system on the whole disk (no partition table) holding
  ``/boot/grub/menu.lst`` and the files it names, which is what EC2's PV-GRUB ``hd0`` AKI reads
  (``root (hd0)``). Made with e2fsprogs' ``mke2fs -d``; times, UUID and hash seed are fixed.
- :func:`uefi_disk` - a GPT disk with one EFI system partition (FAT32) holding the files given,
  typically ``EFI/BOOT/BOOTX64.EFI`` (the removable-media path UEFI firmware boots without any NVRAM
  entry). Made with sfdisk, mkfs.fat and mtools; disk and partition GUIDs and the volume id are fixed.

Every disk is the smallest whole GiB that holds its content (EBS volumes are sized in GiB, 1 GiB at
least), sparse, and zero outside the file systems. UUIDs are derived from ``seed`` (by default a
digest of the content), so equal inputs give equal bytes; an image target passes a seed that names
the app, environment and target, so that the ids stay the same from one release to the next.
A disk is written under a temporary name in the target directory and renamed into place when
complete; on failure the temporary file is removed.

Layouts for delta uploads (EBS snapshots are uploaded in 512 KiB blocks, and a release sends only
the blocks that differ from the previous one): the file systems are sized to fit their content, in
coarse steps (so a slightly larger file does not move anything), start right after the partition
table, and keep their metadata together at the start, followed by the files in one contiguous run.
A file that grows or changes at its end then changes the blocks at its end, and nothing else moves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pipeline.blocks import whole_gib
from pipeline.errors import ImageError
from pipeline.proc import run
from pipeline.xen import menulst

MIB = 1 << 20
SECTOR = 512
# Timestamps written into file systems (1 January 2000): a constant, so images do not depend on when
# they were built. Any fixed value works; this one is valid for FAT (which starts in 1980).
EPOCH = 946684800
PV_LABEL = "beam-boot"  # the init script skips a whole-disk ext file system with this label
ESP_LABEL = "ESP"
# The GPT partition type GUID of an EFI system partition (UEFI specification).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# The ESP starts right after the primary GPT (LBA 34), at the next 4 KiB boundary: the GPT, the FAT
# metadata and the first file share the disk's first blocks instead of each filling one of its own.
ESP_START = 40 * SECTOR
GPT_TAIL = 33 * SECTOR  # backup GPT: 32 sectors of entries + the header, at the end of the disk
# FAT32 needs at least 65525 clusters: 32 MiB of 512-byte clusters, plus the FATs and reserved sectors.
FAT32_MIN_CLUSTERS = 65525
SIZE_STEP = 4 * MIB  # file systems grow in these steps, so small changes of content keep their size


def pv_disk(out_path: Path, files: Mapping[str, Path], menu_lst: str, seed: str | None = None) -> Path:
    """Write an ext2 whole-disk image for PV-GRUB ``hd0`` at ``out_path`` and return it.

    ``files`` maps absolute paths inside the file system (``/boot/vmlinuz``) to local files;
    ``menu_lst`` becomes ``/boot/grub/menu.lst``. Every path named on a ``kernel`` or ``initrd`` line
    of ``menu_lst`` must be one of ``files``. Raises :class:`ImageError` on a bad layout.
    """
    tree = {_fs_path(p): Path(f) for p, f in files.items()}
    _check_menu_lst(menu_lst, tree)
    seed = seed or _content_seed(tree, menu_lst.encode())
    payload = sum(f.stat().st_size for f in tree.values()) + len(menu_lst)
    # The file system covers only its content (plus room for metadata and indirect blocks), not the
    # whole disk: up to 128 MiB it is one block group, so there are no backup superblocks, group
    # descriptors or bitmaps spread over the disk (each one a 512 KiB block to upload). PV-GRUB and
    # the kernel read the size from the superblock; the rest of the disk stays zero.
    fs_size = _step(payload * 101 // 100 + MIB)
    size = whole_gib(fs_size)
    with _staging(out_path) as (tmp, stage):
        for rel, src in tree.items():
            _place(stage / rel, src)
        _place_bytes(stage / "boot/grub/menu.lst", menu_lst.encode())
        _fix_times(stage)
        fs_uuid = str(_uuid(seed, "pv-fs"))
        run(
            [
                "mke2fs", "-q", "-F", "-t", "ext2",
                # 128-byte inodes and no resize inode: the ext2 that GRUB 0.97 (PV-GRUB) reads.
                "-I", "128", "-O", "^resize_inode", "-b", "4096", "-m", "0", "-N", "64",
                "-L", PV_LABEL, "-U", fs_uuid,
                "-E", f"hash_seed={_uuid(seed, 'pv-hash')},root_owner=0:0",
                "-d", str(stage), str(tmp), str(fs_size // 1024) + "k",
            ],
            env=_e2fs_env(tmp),
            what="mke2fs",
        )  # fmt: skip
        menu = "boot/grub/menu.lst"
        _fix_inode_times(tmp, ["/", *sorted(_dirs_of(tree, menu)), menu, *sorted(tree)])
        with tmp.open("r+b") as f:
            f.truncate(size)
        _check_size(tmp, size)
    return out_path


def uefi_disk(out_path: Path, files: Mapping[str, Path], seed: str | None = None) -> Path:
    """Write a GPT disk with one FAT32 EFI system partition holding ``files`` and return it.

    ``files`` maps paths inside the ESP (``/EFI/BOOT/BOOTX64.EFI``) to local files. Raises
    :class:`ImageError` on a bad layout.
    """
    tree = {_fs_path(p): Path(f) for p, f in files.items()}
    if not tree:
        raise ImageError(f"{out_path.name}: no files for the EFI system partition")
    seed = seed or _content_seed(tree, b"")
    payload = sum(f.stat().st_size for f in tree.values())
    # The smallest FAT32 that holds the files: 65525 clusters at least (the FATs of a larger one are
    # longer, and zero where no cluster is used), room for the FATs and the directories.
    clusters = max(FAT32_MIN_CLUSTERS + 64, payload * 101 // 100 // SECTOR + 64)
    esp_size = _step(clusters * SECTOR * 101 // 100 + 64 * 1024)
    size = whole_gib(ESP_START + esp_size + GPT_TAIL)
    with _staging(out_path) as (tmp, stage):
        with tmp.open("r+b") as f:
            f.truncate(size)
        table = (
            "label: gpt\n"
            f"label-id: {_uuid(seed, 'gpt-disk')}\n"
            "unit: sectors\n"
            "first-lba: 34\n"
            f"start={ESP_START // SECTOR}, size={esp_size // SECTOR}, type={ESP_TYPE}, "
            f'uuid={_uuid(seed, "gpt-esp")}, name="EFI system partition"\n'
        )
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)], input=table.encode())
        run(
            [
                "mkfs.fat", "-F", "32", "-S", str(SECTOR), "-s", "1", "-n", ESP_LABEL,
                # --invariant: fixed volume id and boot-sector times instead of random/current ones
                "--invariant", f"--offset={ESP_START // SECTOR}", str(tmp), str(esp_size // 1024),
            ],
            what="mkfs.fat",
        )  # fmt: skip
        _fix_times(stage)
        image = f"{tmp}@@{ESP_START}"
        env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull, "SOURCE_DATE_EPOCH": str(EPOCH)}
        for d in sorted(_dirs_of(tree)):
            run(["mmd", "-i", image, "::/" + d], env=env, what="mmd")
        for rel, src in sorted(tree.items()):
            staged = stage / rel
            _place(staged, src)
            os.utime(staged, (EPOCH, EPOCH))
            run(["mcopy", "-m", "-i", image, str(staged), "::/" + rel], env=env, what="mcopy")
        _check_size(tmp, size)
    return out_path


# -- helpers ---------------------------------------------------------------------------------------


@contextmanager
def _staging(out_path: Path) -> Iterator[tuple[Path, Path]]:
    """A temporary image file beside ``out_path`` and a staging directory; rename on success."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    stage = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=f".{out_path.name}.stage."))
    try:
        yield tmp, stage
        tmp.chmod(0o644)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _step(n: int) -> int:
    return -(-n // SIZE_STEP) * SIZE_STEP


def _fs_path(path: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
        raise ImageError(f"disk file path {path!r}: expected an absolute path like /boot/vmlinuz")
    return p.relative_to("/").as_posix()


def _dirs_of(tree: Mapping[str, Path], *extra: str) -> set[str]:
    dirs: set[str] = set()
    for rel in (*tree, *extra):
        parent = PurePosixPath(rel).parent
        while parent.as_posix() != ".":
            dirs.add(parent.as_posix())
            parent = parent.parent
    return dirs


def _check_menu_lst(menu_lst: str, tree: Mapping[str, Path]) -> None:
    """The PV-GRUB rules (:mod:`pipeline.xen.menulst`, the one parser the Xen check uses too), then
    what only the disk builder knows: every entry boots from this whole-disk file system, and the
    kernel and initrd it names are files of the disk."""
    menu = menulst.parse(menu_lst)
    lines = menu_lst.splitlines()

    def line_of(entry: menulst.Entry, word: str) -> tuple[int, str]:
        for number, line in enumerate(lines[entry.line :], entry.line + 1):
            if line.split()[:1] == [word]:
                return number, line.split()[1]
        return entry.line, ""

    for entry in menu.entries:
        if entry.partition is not None:
            raise ImageError(
                f"menu.lst:{line_of(entry, 'root')[0]}: entry {entry.title!r} boots from "
                f"(hd0,{entry.partition}), but this disk is one file system without partitions",
                hint="use root (hd0)",
            )
        for word, path in (("kernel", entry.kernel), ("initrd", entry.initrd)):
            if path is not None and path.lstrip("/") not in tree:
                number, written = line_of(entry, word)
                raise ImageError(
                    f"menu.lst:{number}: {word} {written} is not a file of the disk",
                    hint=f"files on the disk: {', '.join('/' + t for t in sorted(tree))}",
                )


def _content_seed(tree: Mapping[str, Path], extra: bytes) -> str:
    h = hashlib.sha256(extra)
    for rel, src in sorted(tree.items()):
        h.update(rel.encode() + b"\0")
        with src.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _uuid(seed: str, purpose: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"erlang-unikernel:{purpose}:{seed}")


def _place(dest: Path, src: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(0o644)


def _place_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    dest.chmod(0o644)


def _fix_times(stage: Path) -> None:
    for path in [stage, *stage.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (EPOCH, EPOCH))


def _e2fs_env(tmp: Path) -> dict[str, str]:
    # A missing MKE2FS_CONFIG makes mke2fs use its built-in defaults instead of the host's
    # /etc/mke2fs.conf; E2FSPROGS_FAKE_TIME fixes the superblock's and new inodes' times.
    return {"MKE2FS_CONFIG": str(tmp.parent / ".no-mke2fs.conf"), "E2FSPROGS_FAKE_TIME": str(EPOCH)}


def _fix_inode_times(image: Path, paths: list[str]) -> None:
    """Set every time field of ``paths`` to :data:`EPOCH` (mke2fs -d copies the host files' ctimes)."""
    script = []
    for path in paths:
        p = "/" + path.lstrip("/")
        for fld in ("atime", "mtime", "ctime"):
            script.append(f"set_inode_field {p} {fld} @{EPOCH}")
    run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=("\n".join(script) + "\n").encode(),
        env=_e2fs_env(image),
        what="debugfs",
    )


def _check_size(image: Path, size: int) -> None:
    actual = image.stat().st_size
    if actual != size:
        raise ImageError(f"{image.name}: expected {size} bytes, the tools wrote {actual}")
