"""Debian packages the images are made from (kernel, busybox), fetched and unpacked, never installed.

``apt-get download NAME=VERSION`` fetches the exact pinned ``.deb`` (as any user; it reads the host's
apt lists), ``dpkg-deb -x`` unpacks it into a per-user cache outside the project:
``$XDG_CACHE_HOME/erlang-unikernel/debs/NAME_VERSION/`` (``~/.cache/...`` without XDG_CACHE_HOME).
An unpacked package is reused; it appears in the cache only complete (unpacked under a temporary name,
then renamed), so a killed fetch leaves nothing that looks usable.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ImageError, ToolFailed
from pipeline.manifest import sha256_file
from pipeline.proc import run

log = logging.getLogger(__name__)

CACHE_NAME = "erlang-unikernel"


@dataclass(frozen=True)
class Package:
    """An unpacked Debian package: its files are under ``root`` as they would be under ``/``."""

    name: str
    version: str
    root: Path
    deb_sha256: str


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """The download cache: ``$XDG_CACHE_HOME/erlang-unikernel`` or ``~/.cache/erlang-unikernel``."""
    environ = os.environ if env is None else env
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_NAME


def fetch(name: str, version: str, where: str, cache: Path | None = None) -> Package:
    """The package ``name`` at exactly ``version``, unpacked (downloaded first if not cached).

    ``where`` names the pin for error messages (``ami/beam.toml: kernel``). Raises
    :class:`ImageError` when apt has no such version or the downloaded file is another version.
    """
    base = (cache or cache_dir()) / "debs"
    final = base / f"{name}_{version.replace(':', '%3a')}"
    if (final / "root").is_dir() and (final / "deb.sha256").is_file():
        return Package(name, version, final / "root", (final / "deb.sha256").read_text().strip())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base, prefix=f".{name}."))
    try:
        # apt drops privileges to _apt for downloads; a private temp dir is not writable for it.
        work.chmod(0o755)
        try:
            run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{name}={version}"],
                cwd=work,
                what="apt-get download",
            )
        except ToolFailed as err:
            raise ImageError(
                f"{where}: Debian package {name} version {version} is not available from apt ({err.message})",
                hint=f"run apt-get update; apt-cache policy {name} lists the versions there are",
            ) from err
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise ImageError(f"{where}: apt-get download {name}={version} gave {len(debs)} files")
        fields = run(["dpkg-deb", "-f", debs[0], "Package", "Version"]).stdout.decode().splitlines()
        got = dict(line.split(": ", 1) for line in fields if ": " in line)
        if got.get("Package") != name or got.get("Version") != version:
            raise ImageError(
                f"{where}: downloaded {debs[0].name} is {got.get('Package')} {got.get('Version')}, "
                f"not the pinned {name} {version}"
            )
        run(["dpkg-deb", "-x", debs[0], work / "root"], what="dpkg-deb")
        digest = sha256_file(debs[0])
        (work / "deb.sha256").write_text(digest + "\n")
        debs[0].unlink()
        try:
            work.rename(final)
        except OSError:
            if not (final / "deb.sha256").is_file():  # not a concurrent fetch of the same package
                raise
        else:
            log.info("fetched %s %s", name, version)
            work = final  # nothing left to clean up
        return Package(name, version, final / "root", (final / "deb.sha256").read_text().strip())
    finally:
        if work != final:
            shutil.rmtree(work, ignore_errors=True)
