"""Invoke tasks: the command line of the pipeline.

    invoke build ami deploy      source -> image -> AMI -> live blue/green release
    invoke test                  the whole test suite (lint, types, EUnit, pytest)

Tasks parse flags, load the settings, call one function of the ``pipeline`` package and print. Every
error of the pipeline ends the task with its one-line message and exit status 1. The tasks live in
``pipeline/cli/``; this file gathers them into the namespace invoke finds, and configures logging.
"""

from __future__ import annotations

import logging
import os

from invoke.collection import Collection

from pipeline.cli.local import local, run, xen
from pipeline.cli.release import deploy, destroy, history, iam_policy, logs, plan, rollback, status, synth
from pipeline.cli.stages import ami, build, gc, settings, test

logging.basicConfig(
    level=os.environ.get("PIPELINE_LOG_LEVEL", "WARNING").upper(),
    format="%(levelname)s %(name)s: %(message)s",
)

ns = Collection(
    build, run, ami, deploy, plan, status, logs, rollback, history, destroy, gc, synth, iam_policy, settings,
    test,
)  # fmt: skip
ns.add_collection(local)
ns.add_collection(xen)
