"""Parse and check a ``menu.lst`` against what EC2's PV-GRUB (GNU GRUB 0.97 as a Xen PV kernel) boots.

The local loader is GRUB 2 reading menu.lst through its legacy parser, which is more lenient than
GRUB 0.97: it accepts things PV-GRUB would not, or reads them differently. So menu.lst is held to a
small subset both agree on, checked here before anything boots (one place; the disk builders'
files go through it in ``pvdisk.inspect``):

- ``default N`` and ``timeout N`` (before the first ``title``);
- per entry: ``title TEXT``, ``root (hd0)`` or ``root (hd0,N)`` with N 0-3 (MBR partitions, GRUB 0.97
  counts from 0), ``kernel PATH [ARGS]`` once, then at most one ``initrd PATH``;
- blank lines and ``#`` comments.

Anything else (``hiddenmenu``, ``fallback``, GRUB 2 syntax such as ``linux`` or ``(hd0,msdos1)``,
``=`` separators) is an error naming the line. A Xen PV kernel command line is at most 1023 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ImageError

KEYWORDS = ("default", "timeout", "title", "root", "kernel", "initrd")
SUBSET_HINT = "keep menu.lst to " + ", ".join(KEYWORDS) + " (what PV-GRUB and the local loader agree on)"
XEN_CMDLINE_MAX = 1023  # Xen's guest command line holds 1024 bytes with the terminating NUL
_DEVICE = re.compile(r"^\(hd0(?:,([0-3]))?\)$")
_PATH = re.compile(r"^(\(hd0(?:,[0-3])?\))?(/\S*)$")


@dataclass(frozen=True)
class Entry:
    title: str
    partition: int | None  # None: the whole disk, root (hd0); else the MBR partition, root (hd0,N)
    kernel: str  # absolute path on that file system
    args: str
    initrd: str | None
    line: int  # of the title


@dataclass(frozen=True)
class MenuLst:
    default: int
    timeout: int
    entries: tuple[Entry, ...]

    @property
    def boot(self) -> Entry:
        """The entry PV-GRUB boots."""
        return self.entries[self.default]


def parse(text: str, where: str = "menu.lst") -> MenuLst:
    """Parse ``text``; raise :class:`ImageError` naming ``where`` and the line on anything outside the
    subset."""
    default, timeout = 0, 0
    entries: list[Entry] = []
    current: dict[str, object] | None = None
    default_line = 0

    def close() -> None:
        if current is None:
            return
        line = int(str(current["line"]))
        if "root" not in current:
            raise ImageError(f"{where}:{line}: entry {current['title']!r} has no root", hint=SUBSET_HINT)
        if "kernel" not in current:
            raise ImageError(
                f"{where}:{line}: entry {current['title']!r} has no kernel line", hint=SUBSET_HINT
            )
        root = current["root"]
        entries.append(
            Entry(
                title=str(current["title"]),
                partition=root if isinstance(root, int) else None,
                kernel=str(current["kernel"]),
                args=str(current.get("args", "")),
                initrd=str(current["initrd"]) if "initrd" in current else None,
                line=line,
            )
        )

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, rest = ([*line.split(None, 1), ""])[:2]
        rest = rest.strip()
        at = f"{where}:{number}: {line!r}"
        if word not in KEYWORDS:
            raise ImageError(f"{at}: {word.split('=')[0]!r} is not accepted here", hint=SUBSET_HINT)
        if word in ("default", "timeout"):
            if current is not None or entries:
                raise ImageError(f"{at}: {word} must come before the first title", hint=SUBSET_HINT)
            if not rest.isdigit():
                raise ImageError(f"{at}: {word} takes a number", hint=SUBSET_HINT)
            if word == "default":
                default, default_line = int(rest), number
            else:
                timeout = int(rest)
            continue
        if word == "title":
            close()
            current = {"title": rest, "line": number}
            continue
        if current is None:
            raise ImageError(f"{at}: {word} outside an entry (no title line before it)", hint=SUBSET_HINT)
        if word in current:
            raise ImageError(f"{at}: a second {word} line in entry {current['title']!r}", hint=SUBSET_HINT)
        if word == "root":
            m = _DEVICE.match(rest)
            if m is None:
                raise ImageError(
                    f"{at}: root must be (hd0) for a whole-disk file system or (hd0,0)-(hd0,3) "
                    "for an MBR partition",
                    hint=SUBSET_HINT,
                )
            current["root"] = int(m.group(1)) if m.group(1) is not None else "whole disk"
        elif word == "kernel":
            path, args = ([*rest.split(None, 1), ""])[:2]
            current["kernel"] = _path(path, at)
            current["args"] = args.strip()
            if len(current["args"]) > XEN_CMDLINE_MAX:  # type: ignore[arg-type]
                raise ImageError(
                    f"{where}:{number}: kernel command line is {len(str(current['args']))} bytes, "
                    f"Xen passes at most {XEN_CMDLINE_MAX}",
                    hint="shorten the kernel arguments",
                )
        else:  # initrd
            if "kernel" not in current:
                raise ImageError(f"{at}: initrd before kernel (GRUB 0.97 refuses it)", hint=SUBSET_HINT)
            path, extra = ([*rest.split(None, 1), ""])[:2]
            if extra.strip():
                raise ImageError(f"{at}: initrd takes one path", hint=SUBSET_HINT)
            current["initrd"] = _path(path, at)
    close()
    if not entries:
        raise ImageError(f"{where}: no boot entry (title, root, kernel)", hint=SUBSET_HINT)
    if default >= len(entries):
        raise ImageError(
            f"{where}:{default_line}: default {default} but there are {len(entries)} entries "
            "(counted from 0)",
            hint=SUBSET_HINT,
        )
    return MenuLst(default, timeout, tuple(entries))


def _path(text: str, at: str) -> str:
    m = _PATH.match(text)
    if m is None:
        raise ImageError(f"{at}: {text!r} is not an absolute path like /boot/vmlinuz", hint=SUBSET_HINT)
    return m.group(2)
