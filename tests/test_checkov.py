"""checkov on the stack's templates: what it finds is exactly what ``cfn/checkov-open.toml`` lists as
open, with a reason (and the README lists those findings).

checkov pins a boto3 older than the pipeline's, so it lives in a virtual environment of its own,
``.venv/checkov`` (``./setup.sh`` makes it). It runs on the committed templates of cfn/ and on the
template of an environment that has a certificate and an access-log bucket, so the findings that the
HTTPS settings close are shown to be closed by them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from pipeline import config
from pipeline.aws import stack

REPO = Path(__file__).resolve().parent.parent
OPEN = REPO / "cfn" / "checkov-open.toml"
HTTPS = [
    'deploy.certificate_arn="arn:aws:acm:us-east-1:123456789012:certificate/0b6f9c1e-1111-2222-3333-444455556666"',
    'deploy.access_logs_bucket="my-alb-logs"',
]


def checkov() -> str:
    local = REPO / ".venv" / "checkov" / "bin" / "checkov"
    found = str(local) if local.is_file() else shutil.which("checkov")
    if found is None:
        pytest.fail("checkov is not installed (hint: ./setup.sh installs it in .venv/checkov)")
    return found


def findings(directory: Path) -> set[tuple[str, str, str]]:
    """(check id, template name, resource) of every failed check checkov reports on ``directory``."""
    out = subprocess.run(
        [
            checkov(),
            "-d",
            str(directory),
            "--framework",
            "cloudformation",
            "-o",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode in (0, 1), out.stderr[-2000:]  # 1: there are failed checks
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert [r["check_type"] for r in reports] == ["cloudformation"]
    assert reports[0]["summary"]["parsing_errors"] == 0
    return {
        (f["check_id"], Path(f["file_path"]).stem, f["resource"])
        for r in reports
        for f in r["results"].get("failed_checks", [])
    }


def test_checkov_finds_only_what_is_listed_as_open_with_a_reason(tmp_path: Path) -> None:
    for template in (REPO / "cfn").glob("*.json"):
        shutil.copy(template, tmp_path / template.name)
    secure = stack.params_for(config.load(REPO, env="prod", overrides=HTTPS))
    (tmp_path / "https.json").write_text(stack.render(secure))
    listed = tomllib.loads(OPEN.read_text())
    expected = {
        (check, template, entry["resource"])
        for check, entry in listed.items()
        for template in entry["templates"]
    }
    assert findings(tmp_path) == expected
    for check, entry in listed.items():
        assert len(entry["reason"]) > 80, check
    # the README lists each open finding
    readme = (REPO / "README.md").read_text()
    for check in listed:
        assert f"`{check}`" in readme, check
