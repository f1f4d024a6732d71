"""What the deploy stage refuses before it changes anything when the local cloud cannot run the release:
more VMs than this machine's memory holds, a listener port the local load balancer cannot take."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from localaws import LocalAws, Recorder

from pipeline import config
from pipeline.aws import deploy
from pipeline.aws.deployment import Runtime, capacity
from pipeline.aws.session import Clients
from pipeline.errors import PipelineError
from pipeline.local import memory
from pipeline.local import server as local_server
from tests.deploy_support import register_ami
from tests.erlnode import free_port
from tests.project import copy_project, invoke

BUILD = "5555555555ee"
HUGE = ("local.vm_memory_mb=8192", "local.capacity=8")


def _too_big_for_this_machine() -> None:
    need = 8 * (8192 + memory.QEMU_OVERHEAD_MB)
    if memory.available_mb() - memory.MARGIN_MB >= need:
        pytest.skip(f"this machine has room for {need} MiB of VMs")


def attempt(aws: LocalAws, *overrides: str) -> tuple[PipelineError, Recorder]:
    rec = Recorder()
    settings = aws.settings(*overrides)
    clients = aws.clients(recorder=rec)
    register_ami(clients, settings, BUILD)
    rec.clear()
    with pytest.raises(PipelineError) as err:
        deploy.deploy(settings, clients, Runtime(confirm=lambda _q: True), BUILD)
    return err.value, rec


def test_more_vms_than_the_memory_holds_are_refused_before_any_change(aws: LocalAws) -> None:
    _too_big_for_this_machine()
    err, rec = attempt(aws, *HUGE)
    assert isinstance(err, memory.NotEnoughMemory)
    assert str(err).startswith("the local cloud: 8 VM(s) of 8192 MiB need 66560 MiB, but only ")
    assert rec.mutating() == []
    assert aws.clients().cloudformation().describe_stacks()["Stacks"] == []


def test_the_local_cloud_runs_local_capacity_instances_per_colour() -> None:
    assert capacity(config.load(env="prod")) == 1  # local.capacity, not prod's deploy.capacity of 2
    assert capacity(config.load(env="prod", overrides=['aws.endpoint="aws"'])) == 2


def test_a_listener_port_another_program_holds_is_refused_before_any_change(aws: LocalAws) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err, rec = attempt(aws, f"deploy.listener_port={port}")
    assert str(err) == (
        f"deploy.listener_port: port {port} on 127.0.0.1 is taken by another program "
        "(hint: stop it, or choose another port with --set deploy.listener_port=PORT)"
    )
    assert rec.mutating() == []


def test_the_refusal_is_one_line_and_exit_status_1_through_invoke(tmp_path: Path) -> None:
    _too_big_for_this_machine()
    root = copy_project(tmp_path / "proj")
    sets = [f"local.port={free_port()}", f"deploy.listener_port={free_port()}", *HUGE]
    settings = config.load(root, env="dev", overrides=sets)
    try:
        clients = Clients(region="us-east-1", endpoint_url=local_server.ensure_running(settings))
        register_ami(clients, settings, BUILD)
        out = invoke(root, "deploy", "--yes", "--build-id", BUILD, *[a for s in sets for a in ("--set", s)])
    finally:
        local_server.stop(settings)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the local cloud: 8 VM(s) of 8192 MiB need 66560 MiB")
    assert last.endswith(
        "(hint: lower local.capacity or local.vm_memory_mb, or stop other VMs (invoke local.down))"
    )
