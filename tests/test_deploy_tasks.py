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

    # the history: newest first, how each ended; JSON on stdout
    hist = invoke(root, "history", "--json", *sets)
    assert hist.returncode == 0, hist.stderr
    releases = json.loads(hist.stdout)["releases"]
    assert [(r["kind"], r["build_id"], r["outcome"], r["live_now"]) for r in releases] == [
        ("rollback", B1, "baked", True),
        ("deploy", B2, "rolled back by hand", False),
        ("deploy", B1, "baked", False),
    ]
    assert "releases of stack erlang-web-dev, newest first" in hist.stderr
    bad_to = invoke(root, "rollback", "--yes", "--to", "v1", *sets)
    assert bad_to.returncode == 1
    assert bad_to.stderr.strip().splitlines()[-1] == (
        'error: --to: expected a build id (hex, as invoke history shows it) or "blue"/"green", got "v1" '
        "(hint: invoke history lists the releases that went live)"
    )
    again = invoke(root, "rollback", "--yes", *sets)  # v2 was rolled back by hand: no target left
    assert again.returncode == 1
    assert "there is no earlier live release to return to" in again.stderr.strip().splitlines()[-1]

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

    # destroy: the stack (with its own VPC) is deleted in the local AWS; gc's plan is the result
    gone = invoke(root, "destroy", "--yes", *sets)
    assert gone.returncode == 0, gone.stderr
    assert "stack erlang-web-dev deleted" in gone.stderr
    plan = json.loads(gone.stdout)
    assert plan["would_remove"] == [] and {k["id"] for k in plan["kept"]} >= {ami1, ami2}
    assert all(v["IsDefault"] for v in clients.ec2().describe_vpcs()["Vpcs"])  # the stack's VPC is gone


def test_synth_and_iam_policy_tasks(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "proj")
    synth = invoke(root, "synth")
    assert synth.returncode == 0, synth.stderr
    assert sorted(p.name for p in (root / "cfn").iterdir()) == [
        "erlang-web-dev-role.json",  # the bootstrap stack of each environment's service role
        "erlang-web-dev.json",
        "erlang-web-prod-role.json",
        "erlang-web-prod.json",
    ]
    assert "wrote cfn/erlang-web-dev.json" in synth.stderr
    again = invoke(root, "synth")
    assert "cfn/ is up to date" in again.stderr
    policy = invoke(root, "iam-policy", "--env", "prod", "--account", "123456789012")
    assert policy.returncode == 0, policy.stderr
    doc = json.loads(policy.stdout)
    stack = next(s for s in doc["Statement"] if s["Sid"] == "StackChanges")
    assert stack["Resource"] == ["arn:aws:cloudformation:us-east-1:123456789012:stack/erlang-web-prod/*"]
    role = invoke(root, "iam-policy", "--env", "prod", "--account", "123456789012", "--role")
    assert role.returncode == 0, role.stderr
    statements = {s["Sid"] for s in json.loads(role.stdout)["Statement"]}
    assert {"OwnBalancing", "LaunchOwnImages", "TagOnCreate"} <= statements
    template = json.loads((root / "cfn" / "erlang-web-prod-role.json").read_text())
    assert template["Resources"]["ServiceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


@pytest.mark.slow  # a real beam build
def test_quick_start_twice_then_destroy_gc_and_down(
    project: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``invoke build ami deploy`` as the README's quick start runs it (on a free port): it ends with
    the status table, and the second run changes nothing (the local AWS journals every request that
    changes something, and its journal does not grow). Then the clean-up the README names."""
    root, sets = project
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal width
    journal = root / ".pipeline" / "local" / "journal.jsonl"
    first = invoke(root, "build", *sets, "ami", *sets, "deploy", *sets)
    assert first.returncode == 0, first.stderr
    assert "is live on blue" in first.stderr
    # (UPDATE_COMPLETE: once the release had baked, an update recorded it live)
    table = first.stderr[first.stderr.rindex("stack erlang-web-dev: UPDATE_COMPLETE") :]
    assert "blue (live)" in table and table.rstrip().endswith("┘")  # the status table comes last
    changes = len(journal.read_text().splitlines())

    second = invoke(root, "build", *sets, "ami", *sets, "deploy", *sets)
    assert second.returncode == 0, second.stderr
    assert "is up to date (nothing changed)" in second.stderr
    assert "is already live on blue: nothing to do" in second.stderr
    assert len(journal.read_text().splitlines()) == changes  # no request changed anything

    gone = invoke(root, "destroy", "--yes", *sets)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["would_remove"] == []
    gc = invoke(root, "gc", "--yes", *sets)
    assert gc.returncode == 0, gc.stderr
    record = json.loads(gc.stdout)
    assert record["removed"] == [] and len(record["kept"]) == 1  # the newest image stays (ami.keep)
    down = invoke(root, "local.down", *sets)
    assert down.returncode == 0 and "stopped the local AWS" in down.stderr
    settings = config.load(root, env="dev", overrides=sets[1::2])
    assert local_server.status(settings) is None


def test_sigterm_acts_like_ctrl_c_in_every_task() -> None:
    """A CI system cancels a job with SIGTERM: the task sees KeyboardInterrupt (a deploy rolls back)
    and ends with status 130, as after Ctrl-C."""
    import os
    import signal

    from invoke.exceptions import Exit

    from pipeline.cli.common import failures

    previous = signal.getsignal(signal.SIGTERM)
    reached = []
    try:
        with pytest.raises(Exit) as stopped, failures():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0)  # let the handler run
            except KeyboardInterrupt:
                reached.append("KeyboardInterrupt")
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert reached == ["KeyboardInterrupt"]
    assert (stopped.value.code, stopped.value.message) == (130, "interrupted")
