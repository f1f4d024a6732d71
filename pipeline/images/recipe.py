"""The ``beam`` image recipe, ``ami/beam.toml``: package pins, kernel modules per platform, OTP
applications and disks, loaded once and validated. Errors name the file and the key:

    ami/beam.toml: kernel.version: expected a Debian version string, got ""
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigError
from pipeline.images.initramfs import COMPRESSIONS, Compression

RECIPE = "ami/beam.toml"
DISK_NAMES = ("hvm-uefi", "pv")
# Debian version: [epoch:]upstream[-revision], upstream starting with a digit.
_DEB_VERSION = re.compile(r"^(\d+:)?\d[A-Za-z0-9.+~-]*$")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_DETECT = re.compile(r"^(pci:[0-9a-f]{4}|xen|acpi)$")


@dataclass(frozen=True)
class Pin:
    package: str
    version: str


@dataclass(frozen=True)
class Platform:
    name: str
    description: str
    detect: str  # "pci:1af4", "xen" or "acpi"
    modules: tuple[str, ...]


@dataclass(frozen=True)
class DiskSpec:
    name: Literal["hvm-uefi", "pv"]
    console: str
    cmdline_max: int


@dataclass(frozen=True)
class Recipe:
    kernel: Pin
    kernel_cmdline: str
    busybox: Pin
    compression: Compression
    otp_applications: tuple[str, ...]
    otp_programs: tuple[str, ...]
    interface: str
    wait_seconds: int
    dhcp_tries: int
    platforms: tuple[Platform, ...]
    disks: tuple[DiskSpec, ...]


def load(root: Path) -> Recipe:
    """Read and validate ``ami/beam.toml`` under the project ``root``."""
    path = root / RECIPE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{RECIPE}: not found", hint="restore it from git") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{RECIPE}: not valid TOML: {err}", hint="fix the syntax at that line") from err
    r = _Reader(raw)
    platforms = tuple(
        Platform(
            name=name,
            description=r.text(f"platforms.{name}.description"),
            detect=r.match(
                f"platforms.{name}.detect", _DETECT, '"pci:VENDOR" (4 hex digits), "xen" or "acpi"'
            ),
            modules=r.names(f"platforms.{name}.modules", _MODULE, "kernel module names", nonempty=True),
        )
        for name in r.table("platforms")
    )
    disks = []
    for name in r.table("disks"):
        if name not in DISK_NAMES:
            raise ConfigError(f"{RECIPE}: disks.{name}: unknown disk", hint=f"known: {', '.join(DISK_NAMES)}")
        disks.append(
            DiskSpec(
                name=name,  # type: ignore[arg-type]
                console=r.match(f"disks.{name}.console", re.compile(r"^(ttyS\d|hvc\d)$"), "ttyS0 or hvc0"),
                cmdline_max=r.integer(f"disks.{name}.cmdline_max", 256, 4096),
            )
        )
    compression = r.text("initramfs.compression")
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"{RECIPE}: initramfs.compression: expected one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    return Recipe(
        kernel=r.pin("kernel"),
        kernel_cmdline=r.text("kernel.cmdline", empty_ok=True),
        busybox=r.pin("busybox"),
        compression=compression,
        otp_applications=r.names(
            "otp.applications", re.compile(r"^[a-z][a-z0-9_]*$"), "OTP application names"
        ),
        otp_programs=r.names("otp.programs", re.compile(r"^[a-z_.]+$"), "erts program names", nonempty=True),
        interface=r.match("network.interface", re.compile(r"^[a-z][a-z0-9]{0,14}$"), "an interface name"),
        wait_seconds=r.integer("network.wait_seconds", 1, 600),
        dhcp_tries=r.integer("network.dhcp_tries", 1, 600),
        platforms=platforms,
        disks=tuple(disks),
    )


class _Reader:
    """Typed access to the raw TOML with ``ami/beam.toml: a.b: expected ..., got ...`` errors."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def get(self, dotted: str) -> Any:
        value: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(
                    f"{RECIPE}: {dotted}: missing", hint=f"add {dotted.rsplit('.', 1)[-1]} = ..."
                )
            value = value[part]
        return value

    def fail(self, dotted: str, expect: str, value: Any) -> ConfigError:
        return ConfigError(f"{RECIPE}: {dotted}: expected {expect}, got {value!r}")

    def table(self, dotted: str) -> list[str]:
        value = self.get(dotted)
        if not isinstance(value, dict) or not value:
            raise self.fail(dotted, "a non-empty table", value)
        return list(value)

    def text(self, dotted: str, empty_ok: bool = False) -> str:
        value = self.get(dotted)
        if not isinstance(value, str) or (not empty_ok and not value.strip()):
            raise self.fail(dotted, "a non-empty string", value)
        return value

    def match(self, dotted: str, pattern: re.Pattern[str], expect: str) -> str:
        value = self.get(dotted)
        if not isinstance(value, str) or not pattern.match(value):
            raise self.fail(dotted, expect, value)
        return value

    def integer(self, dotted: str, lo: int, hi: int) -> int:
        value = self.get(dotted)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(dotted, f"an integer {lo}-{hi}", value)
        return value

    def names(
        self, dotted: str, pattern: re.Pattern[str], expect: str, nonempty: bool = False
    ) -> tuple[str, ...]:
        value = self.get(dotted)
        if (
            not isinstance(value, list)
            or (nonempty and not value)
            or not all(isinstance(v, str) and pattern.match(v) for v in value)
        ):
            raise self.fail(dotted, f"a list of {expect}", value)
        return tuple(value)

    def pin(self, section: str) -> Pin:
        return Pin(
            package=self.match(f"{section}.package", _DEB_NAME, "a Debian package name"),
            version=self.match(
                f"{section}.version", _DEB_VERSION, 'an exact Debian version like "6.1.192-2"'
            ),
        )
