"""The apps under examples/, code the pipeline's authors did not write (mochiweb, jiffy, Elixir), each
built from its own directory (pipeline.toml next to the app), booted in QEMU and answering.

- mochiweb_hello: Debian's erlang-mochiweb; its own config/sys.config.j2 bakes a message per
  environment, and dev and prod answer differently;
- jiffy_status: Debian's erlang-jiffy, a NIF: the beam image carries jiffy.so and the C++ runtime it
  links; the ling target refuses the app naming jiffy. It goes through ``invoke build ami deploy`` on
  the local cloud and is served by the local load balancer (its gate relies on target health: it
  has no version path);
- umbrella_shop: two applications, a dependency from _checkouts/, its own relx release with its
  sys.config, relx's default vm.args (a node name: the image carries epmd) and an overlay file the
  app reads next to it;
- elixir_hello: an Elixir app handed over as ``mix release`` made it, on the erts it ships.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import build, config
from pipeline.errors import CompileError, ImageError
from pipeline.local import boot
from pipeline.local.qemu import Vm, http_get
from tests.cloud_support import qemu_processes
from tests.erlnode import free_port
from tests.project import REPO, invoke
from tests.railing_standin import make_toolchain, path_with, railing_dir
from tests.railing_standin.projects import ling_settings

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples"


def example(name: str, dest: Path) -> Path:
    """A copy of examples/NAME, as a team's own repository would be."""
    shutil.copytree(EXAMPLES / name, dest / name, ignore=shutil.ignore_patterns("_build", ".pipeline"))
    return dest / name


def serve(settings: config.Settings, probe: Callable[[int], Any]) -> Any:
    """Boot the current build (direct boot) and call ``probe`` with the app's forwarded port."""
    answers: list[Any] = []

    def wait(vm: Vm) -> None:
        answers.append(probe(vm.ports[settings.app.port]))

    result = boot.boot(settings, wait=wait, timeout=600)
    assert result.boot_seconds > 0
    return answers[0]


def text(port: int, path: str) -> tuple[int, str]:
    status, body = http_get(port, path, timeout=10)
    return status, body.decode(errors="replace").strip()


def test_mochiweb_app_bakes_its_own_keys_per_environment(tmp_path: Path) -> None:
    root = example("mochiweb_hello", tmp_path)
    seen = {}
    for env in ("dev", "prod"):
        s = config.load(root, env=env)
        result = build.build(s)
        applications = {a["name"] for a in result.manifest["app"]["applications"]}
        assert {"mochiweb", "mochiweb_hello", "inets", "ssl"} <= applications  # what mochiweb's .app needs
        (dep,) = result.manifest["dependencies"]
        assert (dep["name"], dep["source"], dep["version"]) == ("mochiweb", "installed", "3.1.1")
        seen[env] = serve(s, lambda port: (text(port, "/"), text(port, "/build")))
        assert seen[env][1] == (200, result.build_id)
        checks = boot.boot(s, check=True, timeout=600).checks
        assert all(c.ok for c in checks), checks
    assert seen["dev"][0] == (200, "Hello from mochiweb, dev")
    assert seen["prod"][0] == (200, "Hello from mochiweb, prod")


def _initramfs_names(result: build.BuildResult) -> list[str]:
    initrd = result.directory / result.manifest["image"]["initramfs"]["file"]
    raw = subprocess.run(["zstd", "-dc", str(initrd)], capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True)
    return listing.stdout.decode().split()


def test_an_app_with_a_nif_runs_on_beam_and_is_refused_by_ling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = example("jiffy_status", tmp_path)
    s = config.load(root, env="prod")
    result = build.build(s)
    names = _initramfs_names(result)
    assert "opt/erlang/lib/jiffy-1.1.1/priv/jiffy.so" in names
    # every library the NIF loads, as the dynamic loader resolves it here, is in the image
    nif = next(Path("/usr/lib/erlang/lib").glob("jiffy-*/priv/jiffy.so"))
    ldd = subprocess.run(["ldd", str(nif)], capture_output=True, text=True, check=True).stdout
    needed = {w for line in ldd.splitlines() for w in line.split() if w.startswith("/")}
    assert needed and needed <= set(result.manifest["image"]["runtime"]["libraries"])
    status, body = serve(s, lambda port: text(port, "/"))
    assert status == 200
    assert json.loads(body) == {
        "service": "status (prod)",
        "limits": {"requests_per_second": 500, "burst": 100},
    }
    otp17 = make_toolchain(tmp_path / "otp17", "17")
    monkeypatch.setenv("PATH", path_with(railing_dir(tmp_path / "railing")))
    with pytest.raises(CompileError) as err:
        build.build(config.load(root, overrides=ling_settings(otp17)))
    assert str(err.value).startswith("ling: dependency jiffy has native code")


def test_an_umbrella_release_with_a_checkout_dependency_overlay_and_node_name(tmp_path: Path) -> None:
    root = example("umbrella_shop", tmp_path)
    s = config.load(root)
    assert s.app.name == "shop"  # the relx release's name
    result = build.build(s)
    m = result.manifest
    assert {a["name"] for a in m["app"]["applications"]} >= {"shop_web", "shop_store", "greeter", "sasl"}
    assert [(d["name"], d["source"]) for d in m["dependencies"]] == [("greeter", "checkout")]
    names = _initramfs_names(result)
    assert "opt/erlang/etc/motd.txt" in names  # the relx overlay
    assert any(n.endswith("/bin/epmd") for n in names)  # relx's vm.args names the node
    answers = serve(s, lambda port: (text(port, "/ready"), text(port, "/"), text(port, "/")))
    assert answers == (
        (200, "ready"),
        (200, "*** Welcome to the shop ***, visit 1"),
        (200, "*** Welcome to the shop ***, visit 2"),
    )


def test_an_elixir_release_made_by_mix_boots_on_its_own_erts(tmp_path: Path) -> None:
    root = example("elixir_hello", tmp_path)
    env = {**os.environ, "MIX_ENV": "prod", "HOME": str(tmp_path)}
    subprocess.run(["mix", "release", "--overwrite"], cwd=root, env=env, check=True, capture_output=True)
    s = config.load(root, env="dev")
    result = build.build(s)
    runtime = result.manifest["image"]["runtime"]
    assert runtime["own_erts"] is True
    assert {"elixir", "logger", "elixir_hello"} <= set(runtime["applications"])
    assert result.manifest["app"]["source"] == "release"
    assert serve(s, lambda port: (text(port, "/healthz"), text(port, "/"))) == (
        (200, "ok"),
        (200, "Hello from Elixir, dev"),
    )


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    root = example("jiffy_status", tmp_path)
    sets = [f"local.port={free_port()}", f"deploy.listener_port={free_port()}", "local.boot=direct"]
    args = [a for s in sets for a in ("--set", s)]
    try:
        yield root, args
    finally:
        down = invoke(root, "local.down", *args, timeout=180)
        assert down.returncode == 0, down.stderr
        assert qemu_processes(str(root)) == {}


def test_an_example_goes_through_build_ami_deploy_and_is_served_by_the_local_load_balancer(
    local_cloud: tuple[Path, list[str]],
) -> None:
    root, args = local_cloud
    out = invoke(root, "build", *args, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    out = invoke(root, "ami", *args, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    out = invoke(root, "deploy", "--yes", *args, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    said = " ".join(out.stderr.split())  # the console wraps long lines
    assert "build not checked (no app.version_path): relying on target health" in said
    url = out.stdout.strip().splitlines()[-1]
    port = int(url.rsplit(":", 1)[1])
    status, body = text(port, "/")
    assert status == 200 and json.loads(body)["service"] == "status (dev)"


def test_an_app_that_never_answers_its_health_path_ends_with_the_console_and_its_log(tmp_path: Path) -> None:
    root = example("jiffy_status", tmp_path)
    s = config.load(root, overrides=['app.health_path="/never"'])
    build.build(s)
    with pytest.raises(ImageError) as err:
        boot.boot(s, check=True, timeout=90)
    line = str(err.value)
    assert "GET /never did not answer 200 within 90s (last: 404); console: " in line
    console = line.split("console: ", 1)[1].split(" (hint:", 1)[0]
    assert console.strip() not in ("", "(nothing printed)")  # the guest's own last lines
    assert f"(hint: see the console log {s.work_dir / 'run'}" in line and "\n" not in line
    assert qemu_processes(str(root)) == {}
    assert not list((s.work_dir / "run").glob("*/scratch-*.img"))
