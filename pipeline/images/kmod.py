"""Kernel modules of an unpacked kernel package: find them by name and order them for ``insmod``.

The package has no ``modules.dep`` (``depmod`` runs when a kernel is installed, and this one never is),
so dependencies come from each module's own ``.modinfo`` section (``depends=a,b``), read with
pyelftools. ``insmod`` does not resolve dependencies, so the order matters: every module comes after
the modules it depends on (for virtio networking: virtio_ring, virtio, failover, net_failover, the
virtio PCI transports, then virtio_net).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pipeline.errors import ImageError


@dataclass(frozen=True)
class Module:
    name: str  # the kernel's name for it: dashes become underscores (xen-netfront -> xen_netfront)
    path: Path  # the .ko file
    relpath: str  # relative to lib/modules/<release>/
    depends: tuple[str, ...]


def canonical(name: str) -> str:
    return name.replace("-", "_")


class ModuleIndex:
    """The modules of one kernel release, unpacked at ``modules_dir`` (``lib/modules/<release>``)."""

    def __init__(self, modules_dir: Path) -> None:
        self.dir = modules_dir
        self.release = modules_dir.name
        self.files = {canonical(p.name.removesuffix(".ko")): p for p in sorted(modules_dir.rglob("*.ko"))}

    def module(self, name: str, where: str) -> Module:
        key = canonical(name)
        path = self.files.get(key)
        if path is None:
            raise ImageError(
                f"{where}: kernel module {name} is not in kernel {self.release}",
                hint="check the name (a file name under lib/modules without .ko) or whether it is built in",
            )
        return Module(key, path, path.relative_to(self.dir).as_posix(), _depends(path))

    def load_order(self, names: tuple[str, ...], where: str) -> list[Module]:
        """``names`` and everything they depend on, dependencies first (each module once)."""
        ordered: list[Module] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            key = canonical(name)
            if key in seen:
                return
            if key in chain:
                raise ImageError(
                    f"{where}: kernel modules depend on each other in a cycle: {' -> '.join(chain)}"
                )
            mod = self.module(name, where)
            for dep in mod.depends:
                visit(dep, (*chain, key))
            seen.add(key)
            ordered.append(mod)

        for n in names:
            visit(n, ())
        return ordered


def _depends(path: Path) -> tuple[str, ...]:
    with path.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return tuple(canonical(d) for d in item[len(b"depends=") :].decode().split(",") if d)
    return ()
