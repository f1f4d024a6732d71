"""The embedded local AWS: a moto server on 127.0.0.1, started on demand and reused.

The server runs as a background process whose pid and port are kept in ``.pipeline/local/`` so later
commands find it; ``invoke local.down`` stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Settings
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds; moto imports its models on start (about 2 s here)


def state_dir(settings: Settings) -> Path:
    return settings.work_dir / "local"


def endpoint(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.local.port}"


def ensure_running(
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Return the endpoint URL of the local AWS, starting the server first if it is not running."""
    url = endpoint(settings)
    if _answers(url):
        return url
    directory = state_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    log_file = (directory / "moto.log").open("ab")
    env = dict(os.environ, MOTO_EC2_LOAD_DEFAULT_AMIS="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(settings.local.port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # outlives the task that started it; stopped by local.down
    )
    (directory / "server.json").write_text(json.dumps({"pid": proc.pid, "port": settings.local.port}))
    deadline = clock() + START_TIMEOUT
    while clock() < deadline:
        if proc.poll() is not None:
            raise PipelineError(
                f"local AWS: the moto server exited with status {proc.returncode} on start",
                hint=f"see {directory / 'moto.log'}; is port {settings.local.port} taken? set local.port",
            )
        if _answers(url):
            log.info("local AWS started at %s (pid %d)", url, proc.pid)
            return url
        sleep(0.2)
    stop(settings)
    raise PipelineError(f"local AWS: no answer on {url} within {START_TIMEOUT:g}s", hint="see moto.log")


def stop(settings: Settings) -> bool:
    """Stop the local AWS if this checkout started it; return whether one was running."""
    info_file = state_dir(settings) / "server.json"
    if not info_file.is_file():
        return False
    pid = int(json.loads(info_file.read_text())["pid"])
    info_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as resp:  # noqa: S310 - loopback http
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
