"""Deploy and its companions: plan, status, logs, rollback, history, destroy, synth and iam-policy."""

from __future__ import annotations

import sys
from collections.abc import Callable

from invoke.context import Context
from invoke.tasks import task

from pipeline import config, rules, ui
from pipeline.cli.common import COMMON_HELP, aws_clients, failures, load, whole_number
from pipeline.cli.stages import show_gc_plan
from pipeline.errors import ConfigError

DEPLOY_HELP = {
    **COMMON_HELP,
    "yes": "do not ask for confirmation",
    "dry_run": "show the plan and change nothing",
}


def _confirm(yes: bool) -> Callable[[str], bool]:
    """The question asked before a change: --yes answers it; otherwise the user at the terminal does."""

    def ask(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            ui.warn("stdin is not a terminal, so there is no one to ask: pass --yes to go ahead")
            return False
        answer = ui.console.input(f"{question} [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    return ask


@task(
    iterable=["set_"],
    help={**DEPLOY_HELP, "build_id": "deploy this build's AMI (default: the build of the current inputs)"},
)
def deploy(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
    build_id: str | None = None,
) -> None:
    """Roll the build's AMI out blue/green: new colour, health gate, traffic in steps, rollback on failure."""
    from pipeline.aws import deploy as deployer
    from pipeline.aws import status as stack_status

    with failures():
        if build_id is not None and not rules.BUILD_ID.ok(build_id):
            raise rules.bad_value("--build-id", rules.BUILD_ID.expect, build_id, rules.BUILD_ID.hint)
        s = load(env, set_)
        clients = aws_clients(s)
        outcome = deployer.deploy(s, clients, deployer.Runtime(confirm=_confirm(yes)), build_id, dry_run)
        stack_status.show_status(stack_status.status(s, clients), outcome.stack)
        if outcome.url:
            ui.result(outcome.url)


@task(iterable=["set_"], help=COMMON_HELP)
def plan(c: Context, env: str | None = None, set_: list[str] | None = None) -> None:
    """What build, ami and deploy would change, changing nothing."""
    from pipeline.aws import deploy as deployer

    with failures():
        s = load(env, set_)
        rows = deployer.plan(s, aws_clients(s))
        ui.table(
            f"plan for env {s.env}",
            ("stage", "action", "detail"),
            [(r.stage, r.action, r.detail) for r in rows],
        )


@task(iterable=["set_"], help={**COMMON_HELP, "json": "print the status as JSON on stdout"})
def status(c: Context, env: str | None = None, set_: list[str] | None = None, json: bool = False) -> None:
    """Colours, AMIs, build ids, capacities, weights, target health and the stack's status."""
    from pipeline.aws import status as stack_status
    from pipeline.aws.tags import stack_name

    with failures():
        s = load(env, set_)
        st = stack_status.status(s, aws_clients(s))
        stack_status.show_status(st, stack_name(s.app.name, s.env))
        if json:
            ui.result(st.record() if st else None)


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "colour": "blue or green (default: the live colour; both while the traffic is split)",
        "instance": "one instance id instead of a colour's instances",
        "tail": "only the last N lines of each instance",
        "follow": "keep printing new lines as they come (Ctrl-C ends it)",
    },
)
def logs(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    colour: str | None = None,
    instance: str | None = None,
    tail: str | None = None,
    follow: bool = False,
) -> None:
    """The console output of the environment's instances, each line prefixed with instance and colour."""
    from pipeline.aws import logs as consoles
    from pipeline.aws.tags import COLORS

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with failures():
        color = next((c for c in COLORS if c == colour), None)
        if colour is not None and color is None:
            raise ConfigError(
                f'--colour: expected "blue" or "green", got "{colour}"',
                hint="leave --colour out for the live colour (both while the traffic is split)",
            )
        if colour is not None and instance is not None:
            raise ConfigError("--colour and --instance: give one of them", hint="an instance has one colour")
        lines = whole_number("tail", tail)
        s = load(env, set_)
        clients = aws_clients(s)
        if follow:
            consoles.follow(clients, s, write, color, instance, lines)
        else:
            consoles.show(clients, s, write, color, instance, lines)


@task(
    iterable=["set_"],
    help={
        **DEPLOY_HELP,
        "to": "a build id (or its start) from invoke history, or blue|green: the release to return to "
        "(default: the last live release)",
    },
)
def rollback(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
    to: str | None = None,
) -> None:
    """Return to the last live release (its AMI goes back on the idle colour if needed), health-gated."""
    import re

    from pipeline.aws import deploy as deployer
    from pipeline.aws import rollback as back
    from pipeline.aws import status as stack_status

    with failures():
        if to is not None and to not in ("blue", "green") and not re.fullmatch(r"[0-9a-f]{4,64}", to):
            raise ConfigError(
                f'--to: expected a build id (hex, as invoke history shows it) or "blue"/"green", got '
                f"{rules.show(to)}",
                hint="invoke history lists the releases that went live",
            )
        s = load(env, set_)
        clients = aws_clients(s)
        outcome = back.rollback(s, clients, deployer.Runtime(confirm=_confirm(yes)), to, dry_run)
        stack_status.show_status(stack_status.status(s, clients), outcome.stack)


@task(iterable=["set_"], help={**COMMON_HELP, "json": "print the history as JSON on stdout"})
def history(c: Context, env: str | None = None, set_: list[str] | None = None, json: bool = False) -> None:
    """The environment's releases, newest first: build, AMI, when it went live, how it ended."""
    from pipeline.aws import rollback as back
    from pipeline.aws.tags import stack_name

    with failures():
        s = load(env, set_)
        r = back.releases(s, aws_clients(s))
        back.show_history(r, stack_name(s.app.name, s.env))
        if json:
            ui.result(r.record() if r else None)


@task(iterable=["set_"], help=DEPLOY_HELP)
def destroy(
    c: Context,
    env: str | None = None,
    set_: list[str] | None = None,
    yes: bool = False,
    dry_run: bool = False,
) -> None:
    """Delete the environment's stack (after confirmation); show what gc could then remove."""
    from pipeline.aws import status as stack_status
    from pipeline.aws.deployment import Runtime

    with failures():
        s = load(env, set_)
        gone = stack_status.destroy(s, aws_clients(s), Runtime(confirm=_confirm(yes)), dry_run)
        if gone.collectable is None:
            ui.say("after the delete, invoke gc shows which AMIs and snapshots can go")
            return
        show_gc_plan(gone.collectable, "gc could now remove (invoke gc --yes removes them)")
        ui.result(gone.collectable.record(applied=False))


@task
def synth(c: Context) -> None:
    """Rewrite cfn/ from the stack blueprint (one template per environment of pipeline.toml)."""
    from pipeline.aws import stack

    with failures():
        root = config.find_root()
        changed = stack.synth(root)
        for path in changed:
            ui.done(
                f"wrote {path.relative_to(root)}" if path.exists() else f"removed {path.relative_to(root)}"
            )
        if not changed:
            ui.done("cfn/ is up to date")


@task(
    iterable=["set_"],
    help={
        **COMMON_HELP,
        "account": "12-digit account id for the ARNs (default: any)",
        "role": "print the policy of the environment's CloudFormation service role instead",
    },
)
def iam_policy(
    c: Context, env: str | None = None, set_: list[str] | None = None, account: str = "*", role: bool = False
) -> None:
    """Print the least-privilege IAM policy the pipeline needs (ami, deploy, gc) as JSON (an alias in
    ami.kms_key_id is resolved to its key's ARN through AWS)."""
    from pipeline.aws import bootstrap, iam, service_role

    with failures():
        if account != "*" and not rules.ACCOUNT_ID.ok(account):
            raise rules.bad_value("--account", rules.ACCOUNT_ID.expect, account, 'or "*" for any account')
        s = load(env, set_)
        if role:
            ui.result(iam.to_json(service_role.policy(s, account)))
            return
        key = bootstrap.resolve_key(s, aws_clients(s)) if s.ami.kms_key_id else None
        ui.result(iam.policy_json(s, account, key))
