"""``invoke build ami`` on a real build: the ling target made with the railing stand-in (LING's
railing cannot run here; see tests/railing_standin), published to the local AWS started on demand.
The journal of the local AWS, which records only requests that change something, shows that a second
``invoke build ami`` changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from localaws import free_port

from pipeline import config
from pipeline.aws import ami, pv
from pipeline.aws import tags as T
from pipeline.aws.session import Clients
from pipeline.local import server
from tests.project import copy_project, invoke
from tests.railing_standin import make_toolchain, path_with, railing_dir
from tests.railing_standin.projects import ling_settings


@pytest.mark.slow
def test_invoke_build_ami_twice_on_a_ling_build(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "proj")
    otp17 = make_toolchain(tmp_path / "otp17")
    path = path_with(railing_dir(tmp_path / "railing-bin"))
    os.environ["RAILING_STANDIN_LOG"] = str(tmp_path / "railing.jsonl")
    overrides = [*ling_settings(otp17), f"local.port={free_port()}", 'deploy.instance_type="m3.medium"']
    sets = [a for o in overrides for a in ("--set", o)]
    settings = config.load(project, overrides=overrides)
    journal = project / ".pipeline" / "local" / "journal.jsonl"
    try:
        first = invoke(project, "build", *sets, "ami", *sets, path=path)
        assert first.returncode == 0, first.stderr
        assert first.stderr.startswith("build: env dev, target ling")
        aws_line = next(line for line in first.stderr.splitlines() if line.startswith("AWS:"))
        assert aws_line == f"AWS: local AWS (moto) at {server.endpoint(settings)}, region us-east-1"
        published = json.loads(first.stdout)
        changes = len(journal.read_text().splitlines())

        second = invoke(project, "build", *sets, "ami", *sets, path=path)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout) == {k: v for k, v in published.items() if k != "snapshot"}
        assert len(journal.read_text().splitlines()) == changes  # nothing changed the second time

        clients = Clients("us-east-1", endpoint_url=server.endpoint(settings))
        image = ami.find_image(clients, settings, published["build_id"], "pv", "us-east-1")
        assert image is not None and image.image_id == published["images"]["us-east-1"]
        assert image.tags[T.TARGET] == "ling" and image.tags[T.LING_VERSION]
        assert published["disk"] == "pv" and published["snapshot"]["parent"] == "none"
        assert pv.find_aki(clients.ec2(), "us-east-1") == "aki-5c21674b"
    finally:
        os.environ.pop("RAILING_STANDIN_LOG", None)
        server.stop(settings)
