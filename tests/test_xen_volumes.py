"""The volumes ``invoke xen.check`` gives a guest (fast: nothing boots here; ``test_xen.py`` and
``test_xen_check.py`` boot them): the AMI's mapping, named and numbered as EC2 names them
(pipeline/images/devices.py), down to the Xen guest configuration and dom0's devices."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline import config
from pipeline.images import devices
from pipeline.xen import check, recipe
from pipeline.xen.host import PreparedHost
from pipeline.xen.machine import Guest, GuestDisk, XenMachine
from tests.project import copy_project


def machine(tmp: Path, guests: list[Path | Guest]) -> XenMachine:
    files = {name: tmp / name for name in ("xen", "vmlinuz", "dom0.cpio", "pvgrub.bin")}
    for path in files.values():
        path.write_bytes(b"")
    host = PreparedHost(tmp, files["xen"], files["vmlinuz"], files["dom0.cpio"], files["pvgrub.bin"], {})
    root = copy_project(tmp / "project")
    return XenMachine(host, recipe.load(root), root / "templates", guests, tmp / "run", 256, 8080)


def test_the_instance_volumes_of_each_target(tmp_path: Path) -> None:
    disk = tmp_path / "pv.img"
    disk.write_bytes(b"\0" * 512)
    project = copy_project(tmp_path / "p")
    for target, storage, expected in [
        ("beam", "auto", ["sda1", "sdf"]),
        ("ling", "auto", ["sda1", "xvda"]),
        ("ling", "ram", ["sda1"]),
    ]:
        overrides = [f'image.target="{target}"', f'app.storage="{storage}"', "deploy.scratch_size_gib=2"]
        settings = config.load(project, overrides=overrides)
        with check.instance_disks(settings, disk) as guest:
            assert [d.vdev for d in guest.disks] == expected
            assert guest.disks[0].file == disk and not guest.disks[0].writable  # the image is never written
            scratch = guest.disks[1:]
            for volume in scratch:
                assert volume.writable and volume.file.stat().st_size == 2 << 30  # a new blank volume
                assert volume.file.stat().st_blocks == 0  # sparse
            assert [devices.xen_vbd("/dev/" + d.vdev) for d in guest.disks] == [
                d.vbd for d in devices.mapping(target, "pv", storage)
            ]
        assert all(not d.file.exists() for d in scratch)  # removed afterwards


def test_guests_get_their_disks_under_ec2_names_in_order(tmp_path: Path) -> None:
    a = tmp_path / "a.img"
    b = tmp_path / "b.img"
    scratch = tmp_path / "s.img"
    for f in (a, b, scratch):
        f.write_bytes(b"")
    two = Guest((GuestDisk(b, "sda1"), GuestDisk(scratch, "sdf", writable=True)))
    m = machine(tmp_path, [a, two])
    argv = m.argv("qemu-system-x86_64", tmp_path / "dom0.cpio")
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert drives == [
        f"file={a},format=raw,if=virtio,snapshot=on",
        f"file={b},format=raw,if=virtio,snapshot=on",
        f"file={scratch},format=raw,if=virtio",  # the scratch volume takes the guest's writes
    ]
    m.run_dir.mkdir(parents=True)
    m._overlay()
    stage = m.run_dir / "overlay" / "etc" / "xen"
    assert (stage / "guest-a.devs").read_text() == "/dev/vda\n"
    assert (stage / "guest-b.devs").read_text() == "/dev/vdb /dev/vdc\n"
    disk_a = re.search(r"^disk = \[(.*)\]$", (stage / "guest-a.cfg").read_text(), re.M)
    disk_b = re.search(r"^disk = \[(.*)\]$", (stage / "guest-b.cfg").read_text(), re.M)
    assert disk_a is not None and disk_b is not None
    assert re.findall(r"vdev=(\w+),.*?target=(@DISK\d@)", disk_a.group(1)) == [("sda1", "@DISK0@")]
    assert re.findall(r"vdev=(\w+),.*?target=(@DISK\d@)", disk_b.group(1)) == [
        ("sda1", "@DISK0@"),
        ("sdf", "@DISK1@"),
    ]
    init = (m.run_dir / "overlay" / "init").read_text()
    assert 'for dev in $(cat "/etc/xen/guest-$1.devs")' in init


def test_the_check_probes_the_apps_own_health_and_version_paths(tmp_path: Path) -> None:
    """xen.check asks for what the target groups check (app.health_path) and the app's version path,
    not fixed ones; an app that cannot say which build it is (version_path "") is probed for health only."""
    import http.server
    import threading
    from types import SimpleNamespace

    project = copy_project(tmp_path / "p")
    settings = config.load(project, overrides=['app.health_path="/ready"', 'app.version_path="/build"'])
    assert check.probe_paths(settings) == ("/ready", "/build")
    assert check.probe_paths(config.load(project, overrides=['app.version_path=""'])) == ("/health",)

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200 if self.path in ("/ready", "/build") else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake = SimpleNamespace(http_port=server.server_address[1], clock=lambda: 0.0, lines=[], running=True)
        responses = check.probe(fake, "a", 5, check.Timer(lambda s: None), check.probe_paths(settings))  # type: ignore[arg-type]
    finally:
        server.shutdown()
    assert [(r.path, r.status) for r in responses] == [("/ready", 200), ("/build", 200)]
    assert asked == ["/ready", "/ready", "/build"]  # waited on the health path, then read both
