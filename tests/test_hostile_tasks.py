"""Every task, run with a corpus of hostile values: each bad one ends with exit status 1 and exactly one
line on stderr that names where the value came from (``pipeline.toml:``, ``--set`` or the flag), the
field, the value (shortened and escaped) and a hint; never a traceback.

The corpus has the shapes of the inputs a new user or an attacker with write access to pipeline.toml or
the CI's flags tries: NUL, control characters and escape sequences, invalid UTF-8 (a file, or command
line bytes as Python hands them over), a BOM, huge values, full-width digits, shell code, wrong types,
out-of-range numbers, and every setting. The tasks run in-process through invoke's own command line
parser (a few through the real ``invoke`` command at the end), from a copy of the project.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path

import pytest
from invoke.program import Program

import tasks
from pipeline import config
from pipeline.errors import ConfigError
from tests.hostile import toml_string
from tests.project import REPO, copy_project, invoke

TASKS = [
    "build", "run", "ami", "deploy", "plan", "status", "rollback", "destroy", "gc", "settings",
    "iam-policy", "xen.check", "local.down", "local.status",
]  # fmt: skip
HUGE = 100_000
NOT_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # argv bytes that are not UTF-8
FULL_WIDTH = "".join(chr(0xFF10 + int(d)) for d in "123456789012")  # look like an account id

STRINGS = [
    "",
    " ",
    "a\0b",
    "\x1b[2J\x1b[31mred",
    "x\ny",
    NOT_UTF8,
    "x" * HUGE,
    "$(reboot)",
    FULL_WIDTH,
]
INTEGERS = ["-1", "0", "99999999999999999999", "1.5", "true", '"80"', "0x50", NOT_UTF8]
BOOLEANS = ["1", '"true"', "yes"]
LISTS = ['["a\\u0000b"]', "[1]", '"not a list"', "[" + ",".join(['"x"'] * 2000) + "]"]


def _items() -> list[str]:
    """``section.key=value`` for every setting and every hostile value of its kind."""
    out = []
    for section, cls in config.SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if tp is int:
                values = INTEGERS
            elif tp is bool:
                values = BOOLEANS
            elif typing.get_origin(tp) is tuple:
                values = LISTS
            else:  # str and the Literal choices
                values = [v if v == NOT_UTF8 else toml_string(v) for v in STRINGS]
            out += [f"{section}.{f.name}={v}" for v in values]
    return out


ITEMS = _items()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = copy_project(tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``invoke ARGV`` in-process; return its exit status and stderr."""
    program = Program(namespace=tasks.ns, name="invoke", binary="invoke")
    code: int | str | None = 0
    try:
        program.run(["invoke", *argv], exit=True)
    except SystemExit as exc:
        code = exc.code
    return int(code or 0), capsys.readouterr().err


def assert_one_line(code: int, err: str, *names: str) -> str:
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, err[:2000]
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err
    assert "(hint: " in line, line
    assert line.isprintable() and len(line) < 1000, line[:300]
    for name in names:
        assert name in line, (name, line)
    return line


@functools.cache
def refused(item: str) -> bool:
    """Whether the settings refuse ``item`` (with the shipped pipeline.toml, which the copy has)."""
    try:
        config.load(root=REPO, overrides=[item])
    except ConfigError:
        return True
    return False


def share(task: str) -> list[str]:
    """The refused items ``task`` runs with: every fourth, a different quarter for each of four tasks
    in turn, so that every item meets three or four tasks and the whole takes seconds."""
    return [i for i in ITEMS if refused(i)][TASKS.index(task) % 4 :: 4]


def test_the_corpus_covers_every_setting_and_most_of_it_is_refused(project: Path) -> None:
    refusals = [i for i in ITEMS if refused(i)]
    assert len(ITEMS) > 300 and len(refusals) > 0.8 * len(ITEMS)
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert any(i.startswith(f"{section}.{f.name}=") for i in refusals), f"{section}.{f.name}"


@pytest.mark.parametrize("task", TASKS)
def test_every_hostile_setting_is_one_line_for_every_task(
    task: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for item in share(task):
        name = item.split("=", 1)[0]
        line = assert_one_line(*run(capsys, task, "--set", item), "--set", name)
        if "x" * HUGE in item:
            assert "... (" in line  # the value is shown shortened


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"\xef\xbb\xbf" + b'default_env = "dev"\n[env.dev]\n', "byte order mark"),
        (b'default_env = "dev"\n[app]\ngreeting = "\xff"\n[env.dev]\n', "pipeline.toml:3: not valid UTF-8"),
        (b'default_env = "dev"\n[app\n', "not valid TOML"),
        (b'default_env = "qa env"\n[env."qa env"]\n', "pipeline.toml: default_env"),
        (b'default_env = "dev"\n[env.dev]\n[env."x$(reboot)".app]\n', "pipeline.toml: [env.x$(reboot)]"),
        (b'default_env = "dev"\n[env.dev.app]\nscratch_dir = "/s\\u0000"\n', "env.dev.app.scratch_dir"),
        (
            b'default_env = "dev"\n[env.dev.deploy]\nlisten_port = 80\n',
            "env.dev.deploy.listen_port: unknown key",
        ),
        (b'default_env = "dev"\nenv = 3\n', "pipeline.toml: env: expected a table"),
    ],
)
def test_a_broken_pipeline_toml_is_one_line_for_every_task(
    text: bytes, says: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "pipeline.toml").write_bytes(text)
    for task in TASKS:
        assert_one_line(*run(capsys, task), says)


def test_a_directory_named_pipeline_toml(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "pipeline.toml").unlink()
    (project / "pipeline.toml").mkdir()
    for task in TASKS:
        assert_one_line(*run(capsys, task), "pipeline.toml: is not a file")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ("", "--env: expected an environment name"),
        ("qa env", '"qa env"'),
        ("prod.eu", '"prod.eu"'),
        (NOT_UTF8, "\\udcff"),
        ("staging", 'environment "staging" is not defined'),
    ],
)
def test_a_bad_env_is_one_line_for_every_task(
    env: str, says: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for task in TASKS:
        assert_one_line(*run(capsys, task, f"--env={env}"), says)


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (".greeting=x", '--set ".greeting=x": the section is missing'),
        ("app.=x", '--set "app.=x": the key is missing'),
        ("greeting", '--set "greeting": expected SECTION.KEY=VALUE'),
        (f"app.greeting={NOT_UTF8}", "not valid UTF-8"),
        ("nosuch.key=1", '--set nosuch: unknown section "nosuch"'),
    ],
)
def test_a_malformed_set_is_one_line(
    item: str, says: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for task in TASKS:
        assert_one_line(*run(capsys, task, "--set", item), says)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "--port", "x"], '--port: expected a whole number, got "x"'),
        (["run", "--port", "0"], "--port: expected 1 or more, got 0"),
        (["run", "--port", "70000"], "--port: expected at most 65535, got 70000"),
        (["run", "--scratch", "/nonexistent/dir/x.img"], "--scratch: the directory of"),
        (["run", "--scratch", "/"], '--scratch: "/" is not a regular file'),
        (["gc", "--keep", "-1"], "--keep: expected 0 or more, got -1"),
        (["gc", "--keep", "0"], "--keep (ami.keep): expected integer 1-100, got 0"),
        (["gc", "--grace-minutes", "1" + "0" * 30], "--grace-minutes: expected at most"),
        (
            ["rollback", "--to", "purple\x1b[0m"],
            '--to: expected a build id (hex, as invoke history shows it) or "blue"/"green", '
            'got "purple\\u001b[0m"',
        ),
        (["deploy", "--build-id", "../../x"], '--build-id: expected a build id (hex digits), got "../../x"'),
        (["iam-policy", "--account", FULL_WIDTH], "--account: expected a 12-digit AWS account id"),
        (["xen.check", "--disk", "/nonexistent.img"], '--disk: "/nonexistent.img" is not a disk image file'),
        (["build", "--target", "x"], '--target (image.target): expected one of "beam", "ling", got "x"'),
        (["status", "--set", "aws.endpoint=aws", "--set", "aws.profile=no-such-profile"],
         '--set aws.profile: there is no AWS profile "no-such-profile"'),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(
    argv: list[str], says: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line(*run(capsys, *argv), says)


def test_through_the_real_command_line(project: Path) -> None:
    """The same through the ``invoke`` program, with bytes on the command line that are not UTF-8."""
    for argv, says in [
        (["settings", "--set", f"app.greeting={NOT_UTF8}"], "not valid UTF-8"),
        (["run", "--port", "1234x"], '--port: expected a whole number, got "1234x"'),
        (["settings", "--env="], "--env: expected an environment name"),
    ]:
        out = invoke(project, *argv)
        assert out.returncode == 1, out.stderr
        assert out.stderr.count("\n") == 1 and says in out.stderr and "(hint: " in out.stderr, out.stderr
