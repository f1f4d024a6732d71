"""Load and validate ``ami/xen.toml``: the pinned Debian packages and settings of the Xen test host.

Nothing outside this module reads the raw TOML. Errors name the file and the key::

    ami/xen.toml: dom0.memory_mb: expected integer 128-4096, got 12
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.manifest import sha256_bytes

RECIPE = Path("ami") / "xen.toml"


@dataclass(frozen=True)
class Hypervisor:
    package: str
    image: str  # gzipped multiboot ELF inside the package
    cmdline: str


@dataclass(frozen=True)
class Dom0:
    kernel_package: str
    memory_mb: int
    cmdline: str
    programs: tuple[str, ...]
    libraries: tuple[str, ...]
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Qemu:
    cpu: str
    smp: int
    memory_mb: int
    tb_size_mb: int


@dataclass(frozen=True)
class Timeouts:
    toolstack: float
    create: float
    loader: float
    boot: float
    stop: float
    poweroff: float


@dataclass(frozen=True)
class XenRecipe:
    path: Path
    digest: str  # sha256 of the file: names the cached test host
    packages: dict[str, str]  # Debian package -> exact version
    hypervisor: Hypervisor
    dom0: Dom0
    grub_modules: tuple[str, ...]
    qemu: Qemu
    timeouts: Timeouts


def load(root: Path) -> XenRecipe:
    """Read ``ami/xen.toml`` under the project ``root``; raise :class:`ConfigError` naming the key."""
    path = root / RECIPE
    src = RECIPE.as_posix()
    try:
        data = path.read_bytes()
        raw = tomllib.loads(data.decode())
    except OSError as err:
        raise ConfigError(f"{src}: cannot read: {err.strerror}", hint="restore it from git") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{src}: not valid TOML: {err}", hint="fix the syntax at that line") from err
    r = _Reader(src, raw)
    packages = r.table("packages")
    for name, version in packages.items():
        if not isinstance(version, str) or not version.strip():
            raise ConfigError(f'{src}: packages."{name}": expected an exact version string, got {version!r}')
    hyper = Hypervisor(
        package=r.package("hypervisor.package", packages),
        image=r.text("hypervisor.image"),
        cmdline=r.text("hypervisor.cmdline"),
    )
    dom0 = Dom0(
        kernel_package=r.package("dom0.kernel_package", packages),
        memory_mb=r.integer("dom0.memory_mb", 128, 4096),
        cmdline=r.text("dom0.cmdline", no=","),
        programs=r.strings("dom0.programs"),
        libraries=r.strings("dom0.libraries", empty=True),
        modules=r.strings("dom0.modules"),
    )
    qemu = Qemu(
        cpu=r.text("qemu.cpu"),
        smp=r.integer("qemu.smp", 1, 8),
        memory_mb=r.integer("qemu.memory_mb", 512, 16384),
        tb_size_mb=r.integer("qemu.tb_size_mb", 32, 2048),
    )
    timeouts = Timeouts(
        **{k: float(r.integer(f"timeouts.{k}", 5, 3600)) for k in Timeouts.__dataclass_fields__}
    )
    if dom0.memory_mb + 256 > qemu.memory_mb:
        raise ConfigError(
            f"{src}: qemu.memory_mb: {qemu.memory_mb} leaves no room for a guest next to dom0's "
            f"{dom0.memory_mb} MiB",
            hint="give QEMU at least dom0.memory_mb + image.memory_mb + 64",
        )
    return XenRecipe(
        path=path,
        digest=sha256_bytes(data),
        packages=dict(packages),
        hypervisor=hyper,
        dom0=dom0,
        grub_modules=r.strings("loader.grub_modules"),
        qemu=qemu,
        timeouts=timeouts,
    )


class _Reader:
    """Typed access to dotted keys, with errors that name the key."""

    def __init__(self, src: str, raw: Mapping[str, Any]) -> None:
        self.src = src
        self.raw = raw

    def _get(self, key: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"{self.src}: {key}: missing", hint="restore it from git")
            node = node[part]
        return node

    def _fail(self, key: str, expect: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.src}: {key}: expected {expect}, got {value!r}")

    def table(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping) or not value:
            raise self._fail(key, "a non-empty table", value)
        return dict(value)

    def text(self, key: str, no: str = "") -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip() or any(c in value for c in no):
            extra = f" without {no!r}" if no else ""
            raise self._fail(key, f"a non-empty string{extra}", value)
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"integer {lo}-{hi}", value)
        return value

    def strings(self, key: str, empty: bool = False) -> tuple[str, ...]:
        value = self._get(key)
        ok: Callable[[Any], bool] = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
        if not isinstance(value, list) or (not value and not empty) or not all(map(ok, value)):
            raise self._fail(key, "a list of non-empty strings", value)
        return tuple(value)

    def package(self, key: str, packages: Mapping[str, str]) -> str:
        name = self.text(key)
        if name not in packages:
            raise ConfigError(
                f"{self.src}: {key}: package {name!r} is not pinned in [packages]",
                hint=f'add "{name}" = "VERSION" to [packages]',
            )
        return name
