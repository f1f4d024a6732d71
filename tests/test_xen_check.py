"""``invoke xen.check`` on the app's own build: its ``pv`` disk (the file that becomes the PV AMI)
booted as a Xen PV guest through the PV-GRUB-compatible loader, answering HTTP from this host.

Slow (one build, one Xen boot); marked ``xen``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import build, config
from tests.project import copy_project, invoke

pytestmark = pytest.mark.xen


def test_xen_check_boots_the_builds_pv_disk_and_gets_health_and_version(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    built = build.build(config.load(project))
    done = invoke(project, "xen.check", "--json", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["disk"].endswith(f"{built.build_id}/disks/pv.img")
    assert record["menu_lst"] == "(hd0)/boot/grub/menu.lst"
    responses = {r["path"]: r for r in record["responses"]}
    assert responses["/health"]["status"] == 200
    # the guest had the volumes an instance gets, named as EC2 names them (root sda1, scratch sdf),
    # and the app's storage is on the scratch volume
    assert "volumes      sda1 (root), sdf (scratch)" in done.stderr
    assert json.loads(responses["/health"]["body"])["storage"] == "disc"
    version = json.loads(responses["/version"]["body"])
    assert version["build_id"] == built.build_id  # the guest runs this very build
    assert version["target"] == "beam" and version["env"] == "dev"
    for phase in ("xen", "dom0 kernel", "toolstack", "create", "loader", "boot", "http", "shutdown"):
        assert phase in record["phases"], record["phases"]
    assert "GET /version -> 200" in done.stderr
    assert "shutdown" in done.stderr and "guest a stopped" in done.stderr  # the app stopped when asked
