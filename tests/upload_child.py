"""Stands in for ``invoke ami`` in its own process, slowed down so that a test can kill it mid-upload.

Usage: upload_child.py ENDPOINT PORT ROOT BUILD_DIR MARKER. Each block sent appends a line to MARKER.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3

from pipeline import config
from pipeline.aws import ami, provenance
from pipeline.aws.session import Clients


def main() -> None:
    url, port, root, build_dir, marker = sys.argv[1:6]
    settings = config.load(root=Path(root), overrides=[f"local.port={port}", "ami.upload_workers=2"])

    def slow(request: Any, **_: Any) -> None:
        time.sleep(0.05)
        with open(marker, "a") as f:
            f.write(request.url.rsplit("/", 1)[-1] + "\n")

    session = boto3.Session()
    session.events.register("before-send.ebs.PutSnapshotBlock", slow)
    clients = Clients(region=settings.aws.region, endpoint_url=url, session=session)
    directory = Path(build_dir)
    manifest = json.loads((directory / "manifest.json").read_text())
    build = SimpleNamespace(build_id=manifest["build_id"], directory=directory, manifest=manifest)
    ami.publish(settings, clients, build, progress=False, git=provenance.GitState("unknown", "unknown"))


if __name__ == "__main__":
    main()
