"""PV disk images for the Xen tests: a small Linux guest that answers HTTP, and broken disks.

The guest kernel is Debian's (the dom0 kernel package of ami/xen.toml, a Xen PV-capable kernel); its
initramfs holds busybox, the Xen network frontend module and an /init that gets an address by DHCP
and serves /health and /version with busybox httpd, the same HTTP contract as the app. Disks are ext2
file systems on the whole disk, made with ``mke2fs -d`` (no root, no mount), as PV-GRUB ``hd0`` reads.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.images import debs
from pipeline.xen import host as xenhost
from pipeline.xen.recipe import XenRecipe

GUEST_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "fixture: init, guest type $(cat /sys/hypervisor/guest_type 2>/dev/null)"
# The Xen devices this guest was given, as xenstore numbers them (vbd-2049: the root /dev/sda1).
echo "fixture: devices $(ls /sys/bus/xen/devices | tr '\n' ' ')"
# Xen's shutdown request makes the kernel run poweroff_cmd; power off at once.
printf '#!/bin/sh\necho "fixture: shutdown requested"\nexec poweroff -f\n' > /poweroff.sh
chmod 755 /poweroff.sh
echo /poweroff.sh > /proc/sys/kernel/poweroff_cmd
insmod /xen-netfront.ko
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /udhcpc.sh -t 20 -T 1 -n -q || echo "fixture: no DHCP lease"
mkdir -p /www
echo ok > /www/health
echo "{version}" > /www/version
httpd -p {port} -h /www
echo "fixture: serving on port {port}"
exec sh -c 'while :; do sleep 3600; done'
"""

UDHCPC = """#!/bin/sh
[ "$1" = bound ] || exit 0
ifconfig "$interface" "$ip" netmask "$subnet" up
[ -n "$router" ] && route add default gw "$router"
echo "fixture: address $ip"
"""


def kernel_root(recipe: XenRecipe, cache: Path | None = None) -> Path:
    name = recipe.dom0.kernel_package
    return debs.fetch(name, recipe.packages[name], "ami/xen.toml", cache).root


def guest_kernel(recipe: XenRecipe) -> Path:
    return next((kernel_root(recipe) / "boot").glob("vmlinuz-*"))


def guest_initrd(recipe: XenRecipe, work: Path, version: str, port: int) -> Path:
    """A gzip'd initramfs: busybox, xen-netfront.ko and the /init above."""
    stage = work / "initrd"
    for d in ("bin", "proc", "sys", "dev"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copyfile(busybox, stage / "bin" / "busybox")
    (stage / "bin" / "busybox").chmod(0o755)
    netfront = next(kernel_root(recipe).glob("lib/modules/*/kernel/drivers/net/xen-netfront.ko"))
    shutil.copyfile(netfront, stage / "xen-netfront.ko")
    (stage / "init").write_text(GUEST_INIT.replace("{version}", version).replace("{port}", str(port)))
    (stage / "udhcpc.sh").write_text(UDHCPC)
    (stage / "init").chmod(0o755)
    (stage / "udhcpc.sh").chmod(0o755)
    archive = xenhost.cpio(stage)
    out = work / "initrd.gz"
    subprocess.run(["gzip", "-1", "-n"], input=archive, stdout=out.open("wb"), check=True)
    return out


def ext2_disk(path: Path, files: dict[str, bytes | Path], size_mb: int = 64) -> Path:
    """An ext2 file system on the whole disk at ``path`` holding ``files`` (path in the fs -> content)."""
    stage = path.parent / (path.name + ".stage")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for rel, content in files.items():
        dest = stage / rel.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
        else:
            dest.write_bytes(content)
    with path.open("wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(stage), str(path)], check=True, capture_output=True
    )
    shutil.rmtree(stage)
    return path


def menu_lst(kernel: str, initrd: str | None = None, args: str = "console=hvc0 quiet") -> bytes:
    text = f"default 0\ntimeout 0\ntitle test guest\nroot (hd0)\nkernel {kernel} {args}\n"
    if initrd:
        text += f"initrd {initrd}\n"
    return text.encode()
