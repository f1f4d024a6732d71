"""The embedded local AWS: a moto server on 127.0.0.1, started on demand and reused.

The server (``pipeline.local.moto_app``) runs as a background process whose pid and port are kept in
``.pipeline/local/server.json`` so later commands find it; ``invoke local.down`` stops it. Its state
is journaled in ``.pipeline/local/`` and replayed when it starts again, so AMIs, snapshots and stacks
outlive a restart; ``invoke local.down --wipe`` forgets them.

The same process runs the local cloud (``cloud.py``: the instances as QEMU VMs, behind a local load
balancer); every task hands it its ``local.*`` settings, and stopping the server stops its VMs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline
from pipeline.aws.wait import poll
from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.local.control import CloudConfig, configure
from pipeline.local.moto_app import BLOBS, JOURNAL, STATUS_PATH
from pipeline.proc import alive

log = logging.getLogger(__name__)

# seconds; moto imports its models (about 2 s here), then the journal is replayed (about 1 s per
# thousand requests)
START_TIMEOUT = 120.0
# The local cloud shuts its VMs down before the server exits (the guests get 20 s after the power
# button, in parallel).
STOP_TIMEOUT = 60.0


def state_dir(settings: Settings) -> Path:
    return settings.work_dir / "local"


def endpoint(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.local.port}"


def status(settings: Settings) -> dict[str, Any] | None:
    """What the local AWS of this checkout reports about itself, or None if it is not running."""
    info = _identity(endpoint(settings))
    if info is None or Path(info["state_dir"]) != state_dir(settings).resolve():
        return None
    return info


def ensure_running(
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Return the endpoint URL of the local AWS, starting the server first if it is not running."""
    url = endpoint(settings)
    directory = state_dir(settings)
    cloud = CloudConfig.from_settings(settings)
    if _check_owner(url, directory, settings.local.port):
        configure(url, cloud)  # the local cloud follows this task's local.* settings
        return url
    directory.mkdir(parents=True, exist_ok=True)
    log_file = (directory / "moto.log").open("ab")
    env = dict(os.environ, MOTO_EC2_LOAD_DEFAULT_AMIS="false")
    # The server imports this very package, wherever it lives (a checkout need not be installed).
    package_parent = str(Path(pipeline.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "pipeline.local.moto_app", "--port", str(settings.local.port)]
    proc = subprocess.Popen(
        [*argv, "--state", str(directory.resolve()), "--cloud", cloud.to_json()],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # outlives the task that started it; stopped by local.down
    )
    log_file.close()
    (directory / "server.json").write_text(json.dumps({"pid": proc.pid, "port": settings.local.port}))

    def answers() -> str | None:
        if proc.poll() is not None:
            raise PipelineError(
                f"local AWS: the server exited with status {proc.returncode} on start",
                hint=f"see {directory / 'moto.log'}; is port {settings.local.port} taken? set local.port",
            )
        return url if _check_owner(url, directory, settings.local.port) else None

    def gave_up() -> PipelineError:
        stop(settings)
        return PipelineError(f"local AWS: no answer on {url} within {START_TIMEOUT:g}s", hint="see moto.log")

    poll(
        answers,
        what="local AWS",
        timeout=START_TIMEOUT,
        sleep=sleep,
        clock=clock,
        first=0.2,
        most=0.2,
        expired=gave_up,
    )
    log.info("local AWS started at %s (pid %d)", url, proc.pid)
    return url


def stop(
    settings: Settings,
    wipe: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Stop the local AWS of this checkout; return whether one was running.

    ``wipe`` also deletes its journal, so the next start begins with an empty AWS.
    """
    directory = state_dir(settings)
    info_file = directory / "server.json"
    running = False
    if info_file.is_file():
        pid = int(json.loads(info_file.read_text())["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
            running = True
        except ProcessLookupError:
            pass
        deadline = clock() + STOP_TIMEOUT
        while running and alive(pid) and clock() < deadline:
            sleep(0.1)
        if running and alive(pid):
            log.warning("local AWS (pid %d) did not stop within %.0fs; killing it", pid, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its VMs die with it (QEMU's parent-death signal)
        info_file.unlink(missing_ok=True)
    if wipe:
        (directory / JOURNAL).unlink(missing_ok=True)
        shutil.rmtree(directory / BLOBS, ignore_errors=True)
        shutil.rmtree(directory / "cloud", ignore_errors=True)  # assembled disks, console logs
    return running


def _check_owner(url: str, directory: Path, port: int) -> bool:
    """True if this checkout's local AWS answers on ``url``; an error if something else does."""
    info = _probe(url)
    if info is None:
        return False
    if info == OTHER:
        raise PipelineError(
            f"local AWS: port {port} is served by something that is not this pipeline's local AWS",
            hint="stop it, or pick another port with local.port in pipeline.toml",
        )
    if Path(info["state_dir"]) != directory.resolve():
        raise PipelineError(
            f"local AWS: port {port} is served by the local AWS of another checkout ({info['state_dir']})",
            hint="stop it (invoke local.down there), or set local.port to a free port",
        )
    return True


OTHER: dict[str, Any] = {}  # something answered, but not as the pipeline's local AWS


def _identity(url: str) -> dict[str, Any] | None:
    info = _probe(url)
    return None if info is None or info is OTHER else info


def _probe(url: str) -> dict[str, Any] | None:
    """One request: None if nothing listens, OTHER if something else answers, else the server's identity."""
    try:
        with urllib.request.urlopen(f"{url}{STATUS_PATH}", timeout=5) as resp:  # noqa: S310 - loopback
            data = json.loads(resp.read())
    except urllib.error.HTTPError:
        return OTHER  # an HTTP answer, but not ours (a plain moto server says 404 here)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None
    except ValueError:
        return OTHER
    return data if isinstance(data, dict) and "state_dir" in data else OTHER
