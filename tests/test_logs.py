"""``invoke logs``: the console output of an environment's instances, and the console of a colour that
fails its health gate printed before the rollback.

The answers come from the local AWS's GetConsoleOutput (:mod:`pipeline.local.console`), installed in
the in-process moto with console files the test writes: the same code answers in the local AWS's
server, where the files are the VMs' serial consoles (tests/test_local_cloud_e2e.py reads a real one).
What EC2 does is taken from its API reference (GetConsoleOutput): the output is base64-encoded, only
the most recent 64 KB are available, ``Latest=true`` gives the console as it is now on Nitro types.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from awstest import FakeClock, Recorder
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pipeline import config
from pipeline.aws import deploy, iam, logs
from pipeline.aws.deploy import Runtime
from pipeline.aws.session import Clients
from pipeline.config import Settings
from pipeline.errors import DeployError, PipelineError
from pipeline.local import console
from tests.deploy_support import REGION, TargetHealth, make_clients, register_ami

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = ["deploy.bake_seconds=10", "deploy.retention_seconds=0", "deploy.health_timeout_seconds=60"]
B1, B2 = "1111111111aa", "2222222222bb"


@dataclass
class Env:
    settings: Settings
    clients: Clients
    rec: Recorder
    health: TargetHealth
    consoles: Path
    clock: FakeClock = field(default_factory=FakeClock)
    lines: list[str] = field(default_factory=list)

    def runtime(self) -> Runtime:
        return Runtime(sleep=self.clock.sleep, clock=self.clock.clock, confirm=lambda _q: True)

    def write(self, line: str) -> None:
        self.lines.append(line)

    def instances(self, color: str) -> list[str]:
        reservations = self.clients.ec2().describe_instances(
            Filters=[{"Name": "tag:Color", "Values": [color]}]
        )["Reservations"]
        return sorted(
            i["InstanceId"]
            for r in reservations
            for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")
        )

    def console_file(self, instance_id: str, text: str) -> Path:
        path = self.consoles / f"{instance_id}.log"
        path.write_text(text)
        return path


@pytest.fixture
def env(aws_in_process: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    rec = Recorder()
    consoles = tmp_path / "consoles"
    consoles.mkdir()

    def finder(instance_id: str) -> Path | None:
        path = consoles / f"{instance_id}.log"
        return path if path.is_file() else None

    console.install(finder)
    try:
        yield Env(
            config.load(REPO, env="dev", overrides=OVERRIDES),
            make_clients(rec),
            rec,
            TargetHealth(monkeypatch),
            consoles,
        )
    finally:
        console.uninstall()


@pytest.fixture
def live(env: Env) -> tuple[Env, str]:
    """B1 live on blue; its instance's console holds a boot."""
    register_ami(env.clients, env.settings, B1)
    deploy.deploy(env.settings, env.clients, env.runtime(), B1)
    (instance,) = env.instances("blue")
    env.console_file(instance, BOOT)
    return env, instance


BOOT = (
    "[    0.000000] Linux version 6.1.0-56-cloud-amd64\n"
    "[1.20] init: build 1111111111aa (dev); kernel 6.1.0\n"
    "[2.31] init: network: 10.0.2.15/24\n"
    "[3.02] init: starting the Erlang VM\n"
    "2026-01-01T00:00:05.000000Z info: application: erlang_web, started_at: nonode@nohost\n"
)


# -- reading the console --------------------------------------------------------------------------


def test_the_live_colours_console_is_printed_line_by_line_with_instance_and_colour(
    live: tuple[Env, str],
) -> None:
    env, instance = live
    shown = logs.show(env.clients, env.settings, env.write)
    assert [i.instance_id for i in shown] == [instance]
    assert env.lines == [f"{instance} blue | {line}" for line in BOOT.splitlines()]
    # Nitro's latest console output, not the buffered one
    assert env.rec.named("GetConsoleOutput") == [{"InstanceId": instance, "Latest": True}]


def test_tail_keeps_the_last_lines_and_a_colour_without_instances_is_one_clear_line(
    live: tuple[Env, str],
) -> None:
    env, instance = live
    logs.show(env.clients, env.settings, env.write, tail=2)
    assert env.lines == [f"{instance} blue | {line}" for line in BOOT.splitlines()[-2:]]
    with pytest.raises(PipelineError) as err:
        logs.show(env.clients, env.settings, env.write, color="green")
    assert str(err.value) == (
        "stack erlang-web-dev: no instance of green has run in the last hour "
        "(hint: invoke status shows the capacity of each colour)"
    )


def test_an_instance_of_another_environment_is_refused(live: tuple[Env, str]) -> None:
    env, instance = live
    logs.show(env.clients, env.settings, env.write, instance_id=instance)
    assert env.lines[0] == f"{instance} blue | {BOOT.splitlines()[0]}"
    other = config.load(REPO, env="prod", overrides=OVERRIDES)
    with pytest.raises(
        PipelineError, match=f"--instance {instance}: not an instance of stack erlang-web-prod"
    ):
        logs.show(env.clients, other, env.write, instance_id=instance)
    with pytest.raises(PipelineError, match="not an instance of stack erlang-web-dev"):
        logs.show(env.clients, env.settings, env.write, instance_id="i-0123456789abcdef0")


def test_without_a_stack_there_is_nothing_to_show(env: Env) -> None:
    with pytest.raises(PipelineError, match="stack erlang-web-dev does not exist: no instances"):
        logs.show(env.clients, env.settings, env.write)


def test_control_characters_from_the_guest_are_shown_escaped(live: tuple[Env, str]) -> None:
    env, instance = live
    env.console_file(instance, "ok\r\n\x1b]0;owned\x07title\x1b[2Jcleared\n\tindented\npartial")
    logs.show(env.clients, env.settings, env.write)
    assert env.lines == [
        f"{instance} blue | ok",
        f"{instance} blue | \\x1b]0;owned\\x07title\\x1b[2Jcleared",
        f"{instance} blue | \tindented",
        f"{instance} blue | partial",  # a line still being written is shown too
    ]


def test_the_answer_is_base64_of_the_most_recent_64_kb_and_when_it_was_written(env: Env) -> None:
    register_ami(env.clients, env.settings, B1)
    deploy.deploy(env.settings, env.clients, env.runtime(), B1)
    (instance,) = env.instances("blue")
    data = b"".join(b"line %06d\n" % n for n in range(10000))  # 120,000 bytes
    path = env.consoles / f"{instance}.log"
    path.write_bytes(data)
    os.utime(path, (1767225600, 1767225600))  # 2026-01-01T00:00:00Z
    raw: dict[str, bytes] = {}

    def keep_body(response_dict: dict[str, Any], **_: Any) -> None:
        raw["body"] = response_dict["body"]

    ec2 = env.clients.ec2()
    ec2.meta.events.register("before-parse.ec2.GetConsoleOutput", keep_body)
    resp = ec2.get_console_output(InstanceId=instance, Latest=True)
    tail = data[-64 * 1024 :]
    assert resp["Output"] == tail.decode()  # botocore decodes what EC2 sends base64-encoded
    assert f"<output>{base64.b64encode(tail).decode()}</output>".encode() in raw["body"]
    assert resp["Timestamp"].timestamp() == 1767225600
    path.unlink()  # an instance that posted nothing: no Output at all
    assert "Output" not in ec2.get_console_output(InstanceId=instance)
    with pytest.raises(ClientError) as err:
        ec2.get_console_output(InstanceId="i-0123456789abcdef0")
    assert err.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"


def test_a_type_that_cannot_give_the_latest_output_is_asked_for_the_buffered_one() -> None:
    clients = Clients(region=REGION)
    ec2 = clients.ec2()
    with Stubber(ec2) as stub:
        stub.add_client_error(
            "get_console_output",
            "UnsupportedOperation",
            "The latest console output is not supported for this instance type.",
            expected_params={"InstanceId": "i-0abc", "Latest": True},
        )
        stub.add_response(
            "get_console_output",
            {"InstanceId": "i-0abc", "Output": base64.b64encode(b"xen boot\n").decode()},
            expected_params={"InstanceId": "i-0abc"},
        )
        assert logs.console(ec2, "i-0abc") == "xen boot\n"
        stub.add_client_error(
            "get_console_output",
            "UnauthorizedOperation",
            "no",
            expected_params={"InstanceId": "i-0abc", "Latest": True},
        )
        with pytest.raises(ClientError):  # anything else is not asked again
            logs.console(ec2, "i-0abc")
        stub.assert_no_pending_responses()


# -- following ----------------------------------------------------------------------------------------


def test_new_lines_are_found_after_the_last_ones_seen_even_when_the_window_slid() -> None:
    seen = [f"l{n}" for n in range(30)]
    assert logs.new_lines([], ["a", "b"]) == ["a", "b"]
    assert logs.new_lines(seen, seen) == []
    assert logs.new_lines(seen, [*seen[12:], "l30", "l31"]) == ["l30", "l31"]  # the oldest fell out
    assert logs.new_lines(seen, ["boot again", "x"]) == ["boot again", "x"]  # nothing recognisable


def test_follow_prints_only_new_complete_lines_and_picks_up_new_instances(
    live: tuple[Env, str],
) -> None:
    env, instance = live
    path = env.consoles / f"{instance}.log"
    looks: list[int] = []

    def sleep(_seconds: float) -> None:
        looks.append(1)
        if len(looks) == 1:
            with path.open("a") as f:
                f.write("2026-01-01T00:01:00.000000Z error: GET /counter answered 503\nhalf a li")
        elif len(looks) == 2:
            with path.open("a") as f:
                f.write("ne\n")

    logs.follow(env.clients, env.settings, env.write, tail=1, sleep=sleep, looks=3)
    assert env.lines == [
        f"{instance} blue | {BOOT.splitlines()[-1]}",
        f"{instance} blue | 2026-01-01T00:01:00.000000Z error: GET /counter answered 503",
        f"{instance} blue | half a line",
    ]
    assert env.rec.named("GetConsoleOutput") == [{"InstanceId": instance, "Latest": True}] * 3


# -- a colour that fails its health gate --------------------------------------------------------------


def test_a_release_that_fails_its_gate_has_its_console_printed_before_the_rollback(
    live: tuple[Env, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _ = live
    monkeypatch.setenv("COLUMNS", "200")
    v2 = register_ami(env.clients, env.settings, B2)
    env.health.states[v2] = "unhealthy"
    broken = "2026-01-01T00:00:07.000000Z error: erlang_web: counter storage failed: enoent"
    real = logs.select

    def select_and_write(*args: Any, **kwargs: Any) -> list[logs.Instance]:
        for instance in env.instances("green"):  # the VMs have booted by the time the gate gives up
            env.console_file(instance, BOOT + broken + "\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(logs, "select", select_and_write)
    mark = env.rec.mark()
    with pytest.raises(DeployError, match="rolled back"):
        deploy.deploy(env.settings, env.clients, env.runtime(), B2)
    (green,) = {c.params["InstanceId"] for c in env.rec.since(mark) if c.operation == "GetConsoleOutput"}
    err = capsys.readouterr().err
    assert f"last 6 console lines of {green} (green, running):" in err
    assert f"  {green} green | {broken}" in err
    # read while green still ran: before the update that takes its instances away
    calls = [c.operation for c in env.rec.since(mark)]
    read = calls.index("GetConsoleOutput")
    updates = [n for n, c in enumerate(env.rec.since(mark)) if c.operation == "UpdateStack"]
    rollback = [
        n
        for n in updates
        if {p["ParameterKey"]: p["ParameterValue"] for p in env.rec.since(mark)[n].params["Parameters"]}[
            "GreenCapacity"
        ]
        == "0"
    ]
    assert rollback and updates[0] < read < rollback[0]


def test_the_policy_allows_reading_the_consoles_of_the_environments_own_instances_only() -> None:
    import json

    doc = json.loads(iam.policy_json(config.load(REPO, env="dev"), "123456789012"))
    (read,) = [s for s in doc["Statement"] if "ec2:GetConsoleOutput" in s["Action"]]
    assert read["Action"] == ["ec2:GetConsoleOutput"]
    assert read["Resource"] == ["arn:aws:ec2:us-east-1:123456789012:instance/*"]
    assert read["Condition"] == {
        "StringEquals": {
            "aws:ResourceTag/App": "erlang_web",
            "aws:ResourceTag/Env": "dev",
            "aws:ResourceTag/ManagedBy": "erlang-unikernel-pipeline",
        }
    }


def test_bad_flags_are_one_line_before_any_aws_call(tmp_path: Path) -> None:
    from tests.project import copy_project, invoke

    root = copy_project(tmp_path / "proj")
    for args, line in [
        (
            ["--colour", "purple"],
            'error: --colour: expected "blue" or "green", got "purple" (hint: leave --colour out for the '
            "live colour (both while the traffic is split))",
        ),
        (
            ["--colour", "blue", "--instance", "i-0abc"],
            "error: --colour and --instance: give one of them (hint: an instance has one colour)",
        ),
    ]:
        out = invoke(root, "logs", *args)
        assert (out.returncode, out.stderr.strip(), out.stdout) == (1, line, "")
    out = invoke(root, "logs", "--tail", "ten")
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.startswith('error: --tail: expected a whole number, got "ten" (hint: ')


# -- the app's own lines --------------------------------------------------------------------------------


def test_erlang_web_logs_its_start_and_each_request_it_answers_with_a_5xx(
    erlang_web_node: Any, tmp_path: Path
) -> None:
    from tests.erlnode import Atom, Chars, wait_for

    missing = tmp_path / "no" / "such" / "dir"  # disc storage that cannot start: 503s
    n = erlang_web_node(storage=Atom("disc"), scratch_dir=Chars(str(missing)), wait="listening")
    wait_for(lambda: n.get_json("/health")[1].get("status") == "storage_failed" or None, 20, "storage_failed")
    assert n.get_json("/counter", "POST") == (503, {"error": "storage_unavailable"})
    assert n.request("GET", "/")[0] == 200
    line = 'erlang_web: POST /counter answered 503: {"error":"storage_unavailable"}'
    log = wait_for(lambda: n.log() if line in n.log() else None, 10, "the 503 in the log")
    assert 'erlang_web: GET /health answered 503: {"status":"storage_failed"' in log
    assert "answered 200" not in log and " GET / " not in log  # successes are not logged
    assert "erlang_web: started (build " in log
