"""When the local AWS dies in the middle of a task, the error says so and what to do; any task then
starts it again with its state (the journal), so running the task again resumes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from localaws import write_project

from pipeline import config
from pipeline.aws import session
from pipeline.aws.session import Clients, LocalAwsDown
from pipeline.local import server
from pipeline.proc import alive
from tests.cloud_support import until
from tests.erlnode import free_port


def test_a_killed_local_aws_is_named_with_the_way_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path)
    settings = config.load(tmp_path, overrides=[f"local.port={free_port()}", "local.run_instances=false"])
    url = server.ensure_running(settings)
    try:
        ec2 = Clients(region="us-east-1", endpoint_url=url).ec2()
        image = ec2.register_image(Name="before-the-kill", RootDeviceName="/dev/xvda")["ImageId"]
        pid = json.loads((server.state_dir(settings) / "server.json").read_text())["pid"]
        os.killpg(pid, signal.SIGKILL)  # the server this test started
        until("the server is gone", lambda: not alive(pid), 30)
        # one attempt: the message is the subject here, not botocore's back-off before it
        monkeypatch.setattr(session, "MAX_ATTEMPTS", 1)
        with pytest.raises(LocalAwsDown) as err:
            Clients(region="us-east-1", endpoint_url=url).ec2().describe_images(Owners=["self"])
        line = str(err.value)
        assert line.startswith(f"the local AWS at {url} is not answering: it was stopped or killed")
        assert "any task starts the local AWS again with all its state" in line and "\n" not in line

        again = server.ensure_running(settings)  # what the next task does
        found = Clients(region="us-east-1", endpoint_url=again).ec2().describe_images(Owners=["self"])
        assert [i["ImageId"] for i in found["Images"]] == [image]
    finally:
        server.stop(settings)
