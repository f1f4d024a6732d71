"""Hostile values and the checks that a rendered file still parses as intended.

The shapes are those of real attacks and accidents on a deployment tool's settings: shell code
(``$(...)``, backquotes, ``;``, quotes), boot line flags (``-s evil_mod`` after a space or a tab), line
breaks that add menu.lst or script lines, NUL, ANSI escapes, a BOM, very long values, non-ASCII
look-alikes (full-width digits, U+2028 line separator) and the bytes of invalid UTF-8 as Python hands
them over from a command line (surrogates).

The checkers parse the rendered text the way its consumer does: ``sh -n`` under busybox's ash (the
image's shell) and dash, ``file:consult`` under the host's Erlang, LING's own command line tokenizer
(:func:`ling_args`, a transcription of ``parse_cmd_line`` in LING's core/ling.c) and menu.lst's lines.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import strategies as st

from pipeline import render
from pipeline.images import recipe

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
SHELLS = (("busybox", "sh"), ("dash",))

CORPUS = (
    "$(echo INJECTED > /dev/console)",
    "/scratch$(echo${IFS}INJECTED>/dev/console)",
    "`reboot`",
    "x; reboot",
    "'; reboot; '",
    '"; reboot; "',
    "/scratch\t-s evil_mod",
    "/scratch -s evil_mod",
    "a\nkernel /evil",
    "a\r\ninitrd /evil",
    "a\0b",
    "\x1b[31mred",
    "\ufeffbom",
    "a\u2028b",
    "a\x85b",
    "".join(chr(0xFF10 + int(d)) for d in "123456789012"),  # full-width digits
    "]}. halt(). %",
    '"/utf8>>}]. os:cmd("reboot").',
    "'end'",
    "-s evil_mod",
    "",
    " ",
    "x" * 5000,
    "é" * 300,
    "..",
    "../../etc",
    "\\",
    "%s%n",
    "{{ 7 * 7 }}",
    "udcff:\udcff",
)

# Text with the characters that matter most for shells, boot lines, Erlang and line-based files
# mixed into arbitrary Unicode (no surrogates: those cannot come from a TOML file).
SPECIAL = " \t\n\r\0'\"`$\\;|&(){}[]<>*?~#=%-./,:@!^\x1b\x7f\x85\u2028"
hostile_text = st.one_of(
    st.text(alphabet=st.sampled_from(SPECIAL) | st.characters(codec="utf-8"), max_size=60),
    st.sampled_from([c for c in CORPUS if not any(0xD800 <= ord(x) <= 0xDFFF for x in c)]),
    st.builds(
        lambda a, b: "/" + a + b, st.sampled_from(["scratch", "a/b", "x"]), st.text(SPECIAL, max_size=12)
    ),
)


# -- rendering ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Values:
    """The values under test, where they go in the templates."""

    app_name: str = "erlang_web"
    greeting: str = "Hello"
    scratch_dir: str = "/scratch"
    env: str = "dev"
    build_id: str = "0123456789abcdef"
    version: str = "1.0.0"


def _base(v: Values) -> dict[str, Any]:
    return {
        "app": SimpleNamespace(
            name=v.app_name,
            port=8080,
            health_path="/health",
            version_path="/version",
            scratch_dir=v.scratch_dir,
            storage="auto",
            config={"greeting": v.greeting},
        ),
        "image": SimpleNamespace(target="beam", memory_mb=256, extra_apps=(), max_open_files=65536),
        "build": {
            "id": v.build_id,
            "env": v.env,
            "target": "beam",
            "config_digest": "d" * 64,
            "version": v.version,
        },
    }


def init_script(v: Values) -> str:
    """templates/init.sh.j2 rendered as the beam target renders it (the recipe's platforms)."""
    r = recipe.load(REPO)
    platforms = []
    for p in r.platforms:
        kind, _, arg = p.detect.partition(":")
        platforms.append(
            {
                "name": p.name,
                "description": p.description,
                "detect": {"kind": kind, "arg": arg},
                "modules": p.modules,
            }
        )
    context = {
        **_base(v),
        "kernel_release": "6.1.0-56-cloud-amd64",
        "platforms": platforms,
        "net": {"interface": r.interface, "wait_ticks": r.wait_seconds * 50, "dhcp_tries": r.dhcp_tries},
        "boot_label": "beam-boot",
        "scratch_label": "scratch",
        "mke2fs": "/usr/sbin/mke2fs",
        "console_config": "/etc/erlang/console",
        "erlang": {"root": "/erlang", "erts_version": "13.1.5", "release_version": "1.0.0"},
    }
    return render.render(TEMPLATES, "init.sh.j2", context)


def sys_config(v: Values) -> str:
    """The shared sys.config template (an app without its own) baking ``[app.config]`` values: the
    greeting, and the values the pipeline passes as build facts, as the app's environment."""
    config = {"greeting": v.greeting, "scratch_dir": v.scratch_dir, "env": v.env, "build_id": v.build_id}
    return render.render(TEMPLATES, "sys.config.j2", {**_base(v), "main_app": v.app_name, "config": config})


def ling_context(v: Values) -> dict[str, Any]:
    project = v.app_name
    return {
        "project": project,
        "code_path": [f"/{project}/ebin", f"/{project}/priv"],
        "config_path": f"/{project}/priv/sys.config",
        "goofs": True,
        "start_module": v.app_name,
    }


def ling_boot_line(v: Values) -> str:
    """The full boot line, joined onto one line as the ling target joins it."""
    context = {**_base(v), "ling": {**ling_context(v), "part": "line"}}
    return " ".join(render.render(TEMPLATES, "ling.bootline.j2", context).split())


def ling_expected_args(v: Values) -> list[str]:
    c = ling_context(v)
    return [
        *("-config", c["config_path"], "-dhcp", "-goofs", v.scratch_dir, "-s", c["start_module"]),
        *("-home", "/" + c["project"], "-pz", *c["code_path"]),
    ]


def vm_args(v: Values) -> str:
    return render.render(TEMPLATES, "vm.args.j2", {**_base(v), "erlang_root": "/opt/erlang"})


def vm_args_lines(text: str) -> list[str]:
    """The arguments of a vm.args file (erlexec reads every line that is not a ``#`` comment)."""
    return [line for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]


def menu_lst(v: Values, ling: bool) -> str:
    if ling:
        line = ling_boot_line(v)
        context = {**_base(v), "ling": {**ling_context(v), "kernel_path": "/boot/x.img", "boot_line": line}}
        return render.render(TEMPLATES, "ling.menu.lst.j2", context)
    context = {
        **_base(v),
        "kernel_path": "/boot/vmlinuz",
        "initrd_path": "/boot/initrd.img",
        "cmdline": "quiet panic=-1 console=hvc0",
    }
    return render.render(TEMPLATES, "menu.lst.j2", context)


# -- checking -------------------------------------------------------------------------------------------

INIT_VARIABLES = ("BUILD_ID", "ENV_NAME", "SCRATCH_DIR")


def shell_syntax_ok(script: str) -> None:
    """``sh -n`` under each shell: the script parses (raises with the shell's message if not)."""
    for shell in SHELLS:
        proc = subprocess.run([*shell, "-n"], input=script.encode(), capture_output=True, check=False)
        assert proc.returncode == 0, f"{shell[0]} -n: {proc.stderr.decode(errors='replace')}"


def init_variables(script: str) -> list[bytes]:
    """What the init script's variables hold when the shell has run its first lines."""
    head = script[: script.index("\nlog() {")]
    show = "".join(f' "${name}"' for name in INIT_VARIABLES)
    out = []
    for shell in SHELLS:
        proc = subprocess.run(
            [*shell, "-c", f"{head}\nprintf '%s\\0'{show}"], capture_output=True, check=True
        )
        out.append(proc.stdout)
    assert out[0] == out[1], "busybox sh and dash disagree"
    return out[0].split(b"\0")[:-1]


def same_structure(hostile: str, benign: str, hv: Values, bv: Values) -> bool:
    """The script of ``hostile`` values is the script of ``benign`` values with only the quoted
    assignments differing: no value reached any other place of the script."""
    swapped = hostile
    for name, h, b in zip(
        INIT_VARIABLES,
        (hv.build_id, hv.env, hv.scratch_dir),
        (bv.build_id, bv.env, bv.scratch_dir),
        strict=True,
    ):
        swapped = swapped.replace(
            f"\n{name}={render.shell_quote(h)}\n", f"\n{name}={render.shell_quote(b)}\n", 1
        )
    return swapped == benign


def consult(configs: Sequence[str], workdir: Path) -> list[dict[str, Any]]:
    """``file:consult`` each sys.config with the host's Erlang; the app's name and the values the
    pipeline bakes, as Python values (binaries as bytes, strings and atoms as str)."""
    files = []
    for i, text in enumerate(configs):
        path = workdir / f"sys-{i}.config"
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    script = (
        "[begin {ok, [[{App, P}]]} = file:consult(F), "
        'io:format("~w~n", [{atom_to_list(App), proplists:get_value(greeting, P), '
        "proplists:get_value(scratch_dir, P), proplists:get_value(env, P), "
        "proplists:get_value(build_id, P), length(P)}]) end || F <- init:get_plain_arguments()], halt()."
    )
    proc = subprocess.run(
        ["erl", "-noshell", "-noinput", "-eval", script, "-extra", *files],
        capture_output=True,
        check=False,
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-2000:]
    out = []
    for line in proc.stdout.decode().splitlines():
        name, greeting, scratch, env, build_id, count = json.loads(
            line.replace("<<", "[").replace(">>", "]").replace("{", "[").replace("}", "]")
        )
        out.append(
            {
                "app": "".join(map(chr, name)),
                "greeting": bytes(greeting).decode(),
                "scratch_dir": bytes(scratch).decode(),
                "env": bytes(env).decode(),
                "build_id": bytes(build_id).decode(),
                "keys": count,
            }
        )
    return out


def ling_args(line: str) -> list[str]:
    """LING's ``parse_cmd_line`` (core/ling.c), transcribed: skip spaces; a token that starts with a
    single or double quote runs to the next same quote; any other runs to the next space. (As in C, a
    line that ends in spaces yields one empty last token.)"""
    args = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i < n and line[i] in "'\"":
            quote = line[i]
            i += 1
            start = i
            while i < n and line[i] != quote:
                i += 1
            args.append(line[start:i])
            if i < n:
                i += 1
        else:
            start = i
            while i < n and line[i] != " ":
                i += 1
            args.append(line[start:i])
    return args


def menu_lines(text: str) -> list[str]:
    """The keywords of menu.lst's lines (GRUB legacy reads one command per line)."""
    lines = text.split("\n")
    assert lines[-1] == "", "menu.lst ends with a line break"
    assert text.splitlines() == lines[:-1], "a character other than \\n breaks a line"
    return [line.split(" ", 1)[0] for line in lines[:-1]]


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (control characters escaped)."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def overrides(section: str, key: str, value: str, is_list: bool) -> list[str]:
    literal = toml_string(value)
    return [f"{section}.{key}=[{literal}]" if is_list else f"{section}.{key}={literal}"]
