"""Digests, canonical JSON and the build record (``manifest.json``).

A build directory is named by a digest of every input. Its ``manifest.json`` lists each input with
its digest or version and each output with its size and digest; it holds no timestamps, so two builds
of the same inputs are byte-identical, manifest included.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SCHEMA = 1
BUILD_ID_LEN = 16  # hex characters of the input digest used as the build id


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and fixed separators: equal data, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_of(value: Any) -> str:
    return sha256_bytes(canonical_json(value).encode())


def tree_digests(root: Path, base: Path, patterns: Iterable[str] = ("**/*",)) -> dict[str, str]:
    """``{path relative to base: sha256}`` for the regular files under ``root`` matching ``patterns``."""
    out: dict[str, str] = {}
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_file() and "_build" not in path.parts and "__pycache__" not in path.parts:
                out[path.relative_to(base).as_posix()] = sha256_file(path)
    return dict(sorted(out.items()))


def write_json(path: Path, value: Any) -> None:
    """Write pretty, sorted JSON atomically (temp file in the same directory, then rename)."""
    write_atomic(path, (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(build_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((build_dir / MANIFEST).read_text())
    return data


def file_entries(
    root: Path, skip: Iterable[str] = (MANIFEST,), skip_dirs: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Every regular file under ``root`` with its size and sha256, sorted by path; files named in
    ``skip`` and those under the ``skip_dirs`` prefixes (e.g. ``"disks/"``) are neither listed nor read."""
    skipped = set(skip)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skipped or rel.startswith(skip_dirs):
            continue
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries
