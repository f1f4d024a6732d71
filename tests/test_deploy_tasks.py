"""The deploy tasks as a user runs them: ``invoke deploy/status/plan/rollback/destroy/synth/iam-policy``
in a copy of the project, against the embedded local AWS (a moto server on a free port)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import config
from pipeline.aws.session import Clients
from pipeline.local import server as local_server
from tests.deploy_support import register_ami
from tests.erlnode import free_port
from tests.project import copy_project, invoke

B1, B2 = "1111111111aa", "2222222222bb"


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A project copy whose local AWS listens on a free port (stopped at the end)."""
    root = copy_project(tmp_path / "proj")
    port = free_port()
    # The AMIs are the ami stage's stand-ins (no disk behind them): the local cloud runs no VMs here.
    overrides = [
        f"local.port={port}",
        "deploy.bake_seconds=0",
        "deploy.retention_seconds=0",
        "local.run_instances=false",
    ]
    settings = config.load(root, env="dev", overrides=overrides)
    try:
        yield root, [arg for o in overrides for arg in ("--set", o)]
    finally:
        local_server.stop(settings)


def test_deploy_status_rollback_and_bad_input_through_invoke(
    project: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, sets = project
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables at the terminal width
    settings = config.load(root, env="dev", overrides=sets[1::2])
    # the ami stage's stand-in: AMIs registered in the local AWS with the pipeline's tags
    clients = Clients(region=settings.aws.region, endpoint_url=local_server.ensure_running(settings))
    ami1 = register_ami(clients, settings, B1)
    ami2 = register_ami(clients, settings, B2)

    first = invoke(root, "deploy", "--yes", "--build-id", B1, *sets)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith("http://")  # the result on stdout: the app's URL
    assert "blue (live)" in first.stderr and ami1 in first.stderr  # ends with the status table

    second = invoke(root, "deploy", "--yes", "--build-id", B2, *sets)
    assert second.returncode == 0, second.stderr
    status = invoke(root, "status", "--json", *sets)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["live"] == "green"
    assert {c["color"]: (c["image_id"], c["weight"], c["capacity"]) for c in record["colors"]} == {
        "blue": (ami1, 0, 0),
        "green": (ami2, 100, 1),
    }

    # without --yes and without a terminal to ask, nothing is changed
    declined = invoke(root, "rollback", *sets)
    assert declined.returncode == 1
    assert declined.stderr.strip().splitlines()[-1] == (
        "error: rollback not confirmed: nothing was changed (hint: pass --yes to skip the question)"
    )
    back = invoke(root, "rollback", "--yes", *sets)
    assert back.returncode == 0, back.stderr
    assert "blue (live)" in back.stderr

    # bad input: one line, exit 1, the live colour untouched
    missing = invoke(root, "deploy", "--yes", "--build-id", "3333333333cc", *sets)
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no AMI of build 3333333333cc (beam, hvm) in us-east-1")
    )
    live = clients.cloudformation().describe_stacks(StackName="erlang-web-dev")["Stacks"][0]["Parameters"]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in live}["BlueWeight"] == "100"


def test_synth_and_iam_policy_tasks(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "proj")
    synth = invoke(root, "synth")
    assert synth.returncode == 0, synth.stderr
    assert sorted(p.name for p in (root / "cfn").iterdir()) == ["erlang-web-dev.json", "erlang-web-prod.json"]
    assert "wrote cfn/erlang-web-dev.json" in synth.stderr
    again = invoke(root, "synth")
    assert "cfn/ is up to date" in again.stderr
    policy = invoke(root, "iam-policy", "--env", "prod", "--account", "123456789012")
    assert policy.returncode == 0, policy.stderr
    doc = json.loads(policy.stdout)
    stack = next(s for s in doc["Statement"] if s["Sid"] == "Stack")
    assert stack["Resource"] == ["arn:aws:cloudformation:us-east-1:123456789012:stack/erlang-web-prod/*"]
