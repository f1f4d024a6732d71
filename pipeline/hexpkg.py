"""Hex packages in rebar3's package cache, read offline (hex tarball format 3: an uncompressed tar of
``VERSION``, ``CHECKSUM``, ``metadata.config`` and ``contents.tar.gz``; rebar3 keeps them as
``<cache>/hex/hexpm/packages/NAME-VSN.tar``), and hex's version requirements."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

from pipeline.errors import ConfigError

HEX_DIRS = ("hex/hexpm/packages", "hex/default/packages")  # rebar3's cache layout, newer first


def materialize(package: Path, dest: Path) -> None:
    """Unpack a hex package's ``contents.tar.gz`` into ``dest``."""
    with tarfile.open(package) as outer:
        contents = member(outer, "contents.tar.gz")
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(contents), mode="r:gz") as inner:
        inner.extractall(dest, filter="data")


def cache() -> Path:
    return Path(os.environ.get("REBAR_CACHE_DIR") or Path.home() / ".cache" / "rebar3")


def find(package: str, requirement: str) -> Path | None:
    """The newest cached ``PACKAGE-VSN.tar`` whose version meets ``requirement`` ("" = any)."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for sub in HEX_DIRS:
        for tar in (cache() / sub).glob(f"{package}-*.tar"):
            version = tar.name.removeprefix(f"{package}-").removesuffix(".tar")
            key = semver(version)
            if key is not None and meets(version, requirement):
                candidates.append((key, tar))
    return max(candidates)[1] if candidates else None


def meets(version: str, requirement: str) -> bool:
    """Whether ``version`` meets a hex requirement: ``1.2.3``, ``== 1.2.3``, ``>= 1.2``, ``~> 1.2``,
    ``~> 1.2.3``, joined with ``and`` / ``or``."""
    requirement = requirement.strip()
    if not requirement:
        return True
    if " or " in requirement:
        return any(meets(version, r) for r in requirement.split(" or "))
    if " and " in requirement:
        return all(meets(version, r) for r in requirement.split(" and "))
    m = re.match(r"^(~>|==|>=|<=|>|<|!=)?\s*(\S+)$", requirement)
    v = semver(version)
    if m is None or v is None:
        return False
    op, target_text = m.group(1) or "==", m.group(2)
    target = semver(target_text)
    if target is None:
        return False
    if op == "~>":
        parts = target_text.split(".")
        upper = list(target[: len(parts) - 1])
        upper[-1] += 1
        return v >= target and v[: len(upper)] < tuple(upper)
    return {"==": v == target, ">=": v >= target, "<=": v <= target, ">": v > target,
            "<": v < target, "!=": v != target}[op]  # fmt: skip


def member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError as err:
        raise ConfigError(f"{tar.name!s}: no {name}: not a hex package (format 3)") from err
    if f is None:
        raise ConfigError(f"{tar.name!s}: {name} is not a file")
    return f.read()


def semver(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if m is None:
        return None
    return tuple(int(g or 0) for g in m.groups())
