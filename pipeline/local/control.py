"""The pipeline's side of the local cloud: its settings, its state, and where its load balancer answers.

The cloud itself runs in the local AWS's process (:mod:`pipeline.local.cloud`); tasks reach it through
the server's ``/_pipeline/cloud`` endpoint. Everything here is plain HTTP on 127.0.0.1 and the
standard library, so importing it costs nothing.

:func:`local_url` is the one place where an address of the local AWS's load balancers (moto's made-up
``*.elb.amazonaws.com`` DNS names, which resolve nowhere) becomes the address where the local load
balancer really answers: 127.0.0.1 at the listener's port.
"""

from __future__ import annotations

import errno
import json
import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.local import memory

PATH = "/_pipeline/cloud"
LOCAL_HOST = "127.0.0.1"
TIMEOUT = 10.0


@dataclass(frozen=True)
class CloudConfig:
    """The ``local.*`` settings the cloud acts on (they apply to VMs started from then on)."""

    run_instances: bool = True
    boot: Literal["uefi", "direct"] = "uefi"
    vm_memory_mb: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudConfig:
        local = settings.local
        return cls(local.run_instances, local.boot, local.vm_memory_mb)

    @classmethod
    def from_json(cls, text: str) -> CloudConfig:
        data = json.loads(text) if text else {}
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return cls(
            run_instances=bool(data.get("run_instances", True)),
            boot="direct" if data.get("boot") == "direct" else "uefi",
            vm_memory_mb=int(data.get("vm_memory_mb", 256)),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def local_url(url: str) -> str:
    """The local load balancer's address for a load balancer URL of the local AWS (its ``Url`` output):
    the same scheme, port and path on 127.0.0.1."""
    if not url:
        return url
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return urlunsplit((parts.scheme or "http", f"{LOCAL_HOST}:{port}", parts.path, parts.query, ""))


def _endpoint(settings: Settings) -> str:
    return f"http://{LOCAL_HOST}:{settings.local.port}{PATH}"


def status(settings: Settings) -> dict[str, Any] | None:
    """The cloud's state as its server reports it, or None when the local AWS is not running."""
    try:
        with urllib.request.urlopen(_endpoint(settings), timeout=TIMEOUT) as resp:  # noqa: S310 - loopback
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def configure(endpoint: str, config: CloudConfig) -> dict[str, Any]:
    """Give the cloud of the local AWS at ``endpoint`` its settings; return its state."""
    request = urllib.request.Request(  # noqa: S310 - the local AWS's http URL
        f"{endpoint}{PATH}",
        data=config.to_json().encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:  # noqa: S310 - loopback
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise PipelineError(
            f"local cloud: the local AWS at {endpoint} did not take its settings ({err})",
            hint="restart it: invoke local.down, then run the task again",
        ) from err
    return data if isinstance(data, dict) else {}


def check_room(settings: Settings, count: int) -> None:
    """Refuse (:class:`~pipeline.local.memory.NotEnoughMemory`) to start ``count`` more VMs of
    ``local.vm_memory_mb`` when the machine cannot hold them beside the VMs that run already."""
    if count <= 0 or not settings.local.run_instances:
        return
    state = status(settings) or {}
    running = [
        memory.Running(int(r.get("memory_mb", 0)), int(r.get("rss_mb", 0)))
        for r in state.get("memory", {}).get("running", [])
    ]
    memory.check_room(count, settings.local.vm_memory_mb, memory.available_mb(), running)


def check_listener(settings: Settings, stack_url: str) -> None:
    """Refuse a listener port the local load balancer cannot take: one that another stack's listener
    holds already, one that another program holds, or a privileged one without the right to bind it.
    ``stack_url`` is the stack's own ``Url`` output ("" before it exists)."""
    if not settings.local.run_instances:
        return
    state = status(settings) or {}
    _check_port(settings, settings.deploy.listener_port, "listener_port", stack_url, state)
    if settings.deploy.certificate_arn:
        _check_port(settings, settings.deploy.https_port, "https_port", stack_url, state)


def _check_port(settings: Settings, port: int, key: str, stack_url: str, state: dict[str, Any]) -> None:
    for entry in state.get("listeners", []):
        if entry.get("port") != port or entry.get("error"):
            continue
        if stack_url and entry.get("dns_name") and entry["dns_name"] in stack_url:
            return  # this stack's own listener, served already
        raise PipelineError(
            f"deploy.{key}: port {port} is the local listener of another stack "
            f"({entry.get('load_balancer')})",
            hint=f"give env {settings.env} its own port, e.g. --set deploy.{key}={port + 1}",
        )
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOCAL_HOST, port))
        except OSError as err:
            if err.errno == errno.EACCES:
                raise PipelineError(
                    f"deploy.{key}: the local load balancer may not listen on port {port} "
                    "(ports below 1024 need root)",
                    hint=f"use a port of 1024 or above, e.g. --set deploy.{key}=8000",
                ) from err
            if err.errno == errno.EADDRINUSE:
                raise PipelineError(
                    f"deploy.{key}: port {port} on {LOCAL_HOST} is taken by another program",
                    hint=f"stop it, or choose another port with --set deploy.{key}=PORT",
                ) from err
            raise


def show_status(state: dict[str, Any] | None, settings: Settings) -> None:
    """Print the local cloud's VMs and listeners (stderr)."""
    from pipeline import ui

    if state is None:
        port = settings.local.port
        ui.say(f"the local AWS is not running on port {port} (the next task that needs it starts it)")
        return
    config = state.get("config", {})
    if not config.get("run_instances", True):
        ui.say("the local cloud runs no instances (local.run_instances = false)")
    machines = state.get("machines", [])
    ui.table(
        f"local cloud: {len(machines)} instance(s), {config.get('boot', '?')} boot, "
        f"{config.get('vm_memory_mb', '?')} MiB per VM",
        ("instance", "colour", "build", "port", "health", "uptime", "state"),
        [
            (
                m["instance_id"],
                m.get("color") or "-",
                m.get("build_id") or "-",
                m.get("port") or "-",
                m.get("health", "?") + (f" ({m['description']})" if m.get("description") else ""),
                _duration(float(m.get("uptime") or 0)),
                m.get("phase", "?") + (f": {m['error']}" if m.get("error") else ""),
            )
            for m in machines
        ],
    )
    for entry in state.get("listeners", []):
        if entry.get("error"):
            ui.warn(f"load balancer: {entry['error']}")
        else:
            scheme = str(entry.get("protocol") or "HTTP").lower()
            ui.say(f"load balancer {entry['load_balancer']}: {scheme}://{LOCAL_HOST}:{entry['port']}")


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
