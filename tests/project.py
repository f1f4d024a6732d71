"""A throwaway copy of the project (settings, templates, the app) for tests that build or break it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    """Copy pipeline.toml, templates/, ami/ and apps/ (without build output) to ``dest``; return it."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "pipeline.toml", dest / "pipeline.toml")
    ignore = shutil.ignore_patterns("_build", "__pycache__", "*.beam")
    for sub in ("templates", "ami", "apps"):
        if (REPO / sub).is_dir():
            shutil.copytree(REPO / sub, dest / sub, ignore=ignore)
    return dest


def invoke(
    project: Path, *args: str, path: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``invoke ARGS`` with the repo's tasks.py from inside ``project`` (as a user would)."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
